"""`LLM`: one model, one engine, and the four tasks over a list of texts (the facade workers use)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from llm_core.engine.select import load_engine
from llm_core.engine.sampling import SamplingParams
from llm_core.tasks import TaskKind, TaskSpec, build_messages, clean_output, screen_rows
from llm_core.tokenizer import ModelTokenizer

# Why a row failed, so a retry can leave alone the rows that would fail the same way again.
PERMANENT = "permanent"  # the input itself: null/empty text, too long, no target language
RETRIABLE = "retriable"  # the model's or the engine's: an empty output, an engine error

# on_batch(rows_done, error_rows, completion_tokens): cumulative counts of one run_task call.
BatchCallback = Callable[[int, int, int], None]


@dataclass
class RowResult:
    output: str | None
    error: str | None = None
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    error_kind: str | None = None  # PERMANENT or RETRIABLE when error is set

    def __post_init__(self):
        if self.error is None:
            self.error_kind = None
        elif self.error_kind is None:  # a row refused before the model ran: an input problem
            self.error_kind = PERMANENT


class _Counts:
    """The cumulative counts of one run_task call, handed to on_batch as rows finish."""

    def __init__(self, on_batch: BatchCallback | None):
        self.on_batch = on_batch
        self.rows = self.errors = self.tokens = 0
        self._reported: tuple[int, int, int] | None = None

    def add(self, results: list[RowResult]) -> None:
        self.rows += len(results)
        self.errors += sum(r.error is not None for r in results)
        self.tokens += sum(r.completion_tokens for r in results)
        if results:
            self._report()

    def _report(self) -> None:
        counts = (self.rows, self.errors, self.tokens)
        if self.on_batch is not None and counts != self._reported:  # each change once
            self._reported = counts
            self.on_batch(*counts)

    def finished(self, done: list[tuple[int, int]]) -> None:
        """An engine's `on_finished`: (prompt index, completion tokens) of prompts just done.
        Their outputs are cleaned (and empty ones counted as errors) when the call returns."""
        self.rows += len(done)
        self.tokens += sum(tokens for _, tokens in done)
        if done:
            self._report()


class LLM:
    def __init__(self, model_dir: str | Path, engine: str = "auto", device: str = "auto",
                 dtype: str = "auto", batch_size: int = 16, max_batch_tokens: int | None = None,
                 quantization: str = "none"):
        self.model_dir = Path(model_dir)
        self.batch_size = max(batch_size, 1)
        self.max_batch_tokens = max_batch_tokens
        self.tokenizer = ModelTokenizer(self.model_dir)
        self.engine = load_engine(self.model_dir, engine, device, dtype, batch_size, max_batch_tokens,
                                  self.tokenizer, quantization)

    def _prompt(self, spec: TaskSpec, text: str, language: str | None, max_input: int,
                on_long: str) -> tuple[list[int] | None, str | None]:
        """Token ids of one row's chat prompt, shortening the row's text when it is too long."""
        ids = self.tokenizer.encode(self.tokenizer.apply_chat_template(build_messages(spec, text, language)))
        if len(ids) <= max_input:
            return ids, None
        if on_long == "error":
            return None, f"input too long: {len(ids)} prompt tokens > max_input_tokens {max_input}"
        text_ids = self.tokenizer.encode(text)
        keep = len(text_ids) - (len(ids) - max_input)
        if keep <= 0:
            return None, f"input too long: the prompt without text exceeds max_input_tokens {max_input}"
        short = self.tokenizer.decode(text_ids[:keep])
        ids = self.tokenizer.encode(self.tokenizer.apply_chat_template(build_messages(spec, short, language)))
        return (ids, None) if len(ids) <= max_input else (ids[:max_input], None)

    def run_task(self, spec: TaskSpec, texts: list, params: SamplingParams, *,
                 max_input_tokens: int | None = None, on_long_input: str = "truncate",
                 target_languages: list | None = None, on_batch: BatchCallback | None = None) -> list[RowResult]:
        """One RowResult per text, in order. Bad rows get an error and never stop the others.

        `on_batch(rows_done, error_rows, completion_tokens)`, counted from the start of this call,
        is called once for the rows refused up front, then after each engine batch."""
        limit = self.engine.max_context - (0 if spec.kind == TaskKind.CLASSIFY else params.max_new_tokens)
        max_input = min(max_input_tokens or limit, limit)
        errors, good = screen_rows(spec, texts, target_languages)
        results: list[RowResult | None] = [RowResult(None, errors[i], error_kind=PERMANENT) if i in errors
                                           else None for i in range(len(texts))]
        prompts: dict[int, list[int]] = {}
        for i in good:
            language = target_languages[i] if target_languages is not None else None
            ids, error = self._prompt(spec, texts[i], language, max_input, on_long_input)
            if error:
                results[i] = RowResult(None, error, error_kind=PERMANENT)
            else:
                prompts[i] = ids
        counts = _Counts(on_batch)
        counts.add([r for r in results if r is not None])
        order = list(prompts)
        if spec.kind == TaskKind.CLASSIFY:
            self._classify(spec, order, prompts, results, counts)
        elif order:
            self._generate(spec, order, prompts, params, results, counts)
        return results  # type: ignore[return-value]

    def _generate(self, spec: TaskSpec, order: list[int], prompts: dict, params: SamplingParams,
                  results: list, counts: _Counts) -> None:
        """One engine call over every row, so batching, sorting and seeds are the engine's own; the
        engine reports prompts as they finish (`on_finished`), then the cleaned rows are counted
        exactly (an empty output is an error only once cleaned)."""
        rows, errors, tokens = counts.rows, counts.errors, counts.tokens
        on_finished = counts.finished if counts.on_batch is not None else None
        outs = self.engine.generate([prompts[i] for i in order], params, on_finished=on_finished)
        counts.rows, counts.errors, counts.tokens = rows, errors, tokens
        for i, completions in zip(order, outs):
            c = completions[0]
            text = clean_output(spec, c.text)
            results[i] = RowResult(text or None, None if text else "model produced an empty output",
                                   c.finish_reason, c.prompt_tokens, c.completion_tokens,
                                   None if text else RETRIABLE)
        counts.add([results[i] for i in order])

    def _classify(self, spec: TaskSpec, order: list[int], prompts: dict, results: list, counts: _Counts) -> None:
        """Score each label's tokens (then end-of-turn) by log-likelihood: always one of the labels.

        Scores are calibrated by the same labels' scores for a content-free text ("N/A"), so
        a label the model favours regardless of input does not win every row. With a callback,
        rows are scored a batch at a time and counted as they are; labels are set at the end.
        """
        if not order:
            return
        end = list(self.tokenizer.eos_token_ids[:1])
        continuations = [self.tokenizer.encode(label) + end for label in spec.labels]
        null_prompt = self.tokenizer.encode(self.tokenizer.apply_chat_template(build_messages(spec, "N/A")))
        step = self.batch_size if counts.on_batch is not None else len(order)
        chunks = [order[s:s + step] for s in range(0, len(order), step)]
        scores: list = []
        for n, chunk in enumerate(chunks):
            last = n == len(chunks) - 1  # the null prompt goes with the last rows, as in one call
            scores += self.engine.score([prompts[i] for i in chunk] + ([null_prompt] if last else []),
                                        continuations)
            if counts.on_batch is not None:
                counts.add([RowResult("", None, "stop", len(prompts[i]), 0) for i in chunk])
        *scores, prior = scores
        for i, raw in zip(order, scores):
            row = [s - p for s, p in zip(raw, prior)]
            best = max(range(len(row)), key=row.__getitem__)
            results[i] = RowResult(spec.labels[best], None, "stop", len(prompts[i]), len(continuations[best]))
        if counts.on_batch is not None:  # the labels' tokens are known only now
            counts.tokens += sum(results[i].completion_tokens for i in order)
            counts.on_batch(counts.rows, counts.errors, counts.tokens)
