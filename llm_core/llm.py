"""`LLM`: one model, one engine, and the four tasks over a list of texts (the facade workers use)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from llm_core.engine.select import load_engine
from llm_core.engine.sampling import Completion, SamplingParams, row_seed
from llm_core.calibration import BATCH, CONTENT_FREE, CONTENT_FREE_TEXTS, best_label, calibrated_scores, log_prior
from llm_core.fewshot import MAX_POOL, Example, select_examples
from llm_core.prompting import fit_prompt, shorten_example
from llm_core.tasks import TaskKind, TaskSpec, clean_output, screen_rows
from llm_core.tokenizer import ModelTokenizer

# Why a row failed, so a retry can leave alone the rows that would fail the same way again.
PERMANENT = "permanent"  # the input itself: null/empty text, too long, no target language
RETRIABLE = "retriable"  # the model's or the engine's: an empty output, an engine error

# on_batch(rows_done, error_rows, completion_tokens): cumulative counts of one run_task call.
BatchCallback = Callable[[int, int, int], None]


@dataclass(frozen=True)
class Sample:
    """One of a row's completions when params.n > 1 (its text cleaned as the task's output)."""

    text: str
    finish_reason: str
    completion_tokens: int


@dataclass
class RowResult:
    """With params.n > 1, `samples` holds every completion (what the output's list columns show);
    output and finish_reason are then the first's and completion_tokens is all of them together."""

    output: str | None
    error: str | None = None
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    error_kind: str | None = None  # PERMANENT or RETRIABLE when error is set
    samples: list[Sample] | None = None

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


def batch_prior_digest(spec: TaskSpec) -> str:
    """What the batch prior depends on in the spec (its prompts' parts and the calibration
    texts), as one short digest: the few-shot pool and 256 texts are hashed once, not per batch."""
    parts = (spec.labels, spec.instructions, spec.system_prompt, spec.fewshot, spec.calibration_texts)
    return hashlib.sha256(repr(parts).encode()).hexdigest()


class LLM:
    def __init__(self, model_dir: str | Path, engine: str = "auto", device: str = "auto",
                 dtype: str = "auto", batch_size: int = 16, max_batch_tokens: int | None = None,
                 quantization: str = "none", adapter_dir: str | Path | None = None):
        self.model_dir = Path(model_dir)
        self.batch_size = max(batch_size, 1)
        self.max_batch_tokens = max_batch_tokens
        self.tokenizer = ModelTokenizer(self.model_dir)
        self.engine = load_engine(self.model_dir, engine, device, dtype, batch_size, max_batch_tokens,
                                  self.tokenizer, quantization, adapter_dir=adapter_dir)
        self._short_examples: dict[tuple[Example, int], Example] = {}
        self._batch_priors: dict[tuple[str, int], list[float]] = {}  # calibrate batch (_batch_prior)
        self._prior_spec: TaskSpec | None = None  # the spec _batch_prior saw last, and its digest
        self._prior_digest = ""

    def _shortened(self, examples: tuple[Example, ...], max_tokens: int) -> tuple[Example, ...]:
        """Examples cut to the task's token cap, each once per process (a pool serves many shards)."""
        out = []
        for example in examples:
            key = (example, max_tokens)
            if key not in self._short_examples:
                if len(self._short_examples) >= 4 * MAX_POOL:  # another job's pool: start over
                    self._short_examples.clear()
                self._short_examples[key] = shorten_example(self.tokenizer, example, max_tokens)
            out.append(self._short_examples[key])
        return tuple(out)

    def run_task(self, spec: TaskSpec, texts: list, params: SamplingParams, *,
                 max_input_tokens: int | None = None, on_long_input: str = "truncate",
                 target_languages: list | None = None, on_batch: BatchCallback | None = None,
                 row_ids: list | None = None) -> list[RowResult]:
        """One RowResult per text, in order. Bad rows get an error and never stop the others.

        `row_ids` (one per text): with params.seed and sampling, each row draws from its own seed,
        row_seed(params.seed, id), so its completions do not depend on the batch or shard it is in.

        With `spec.fewshot`, each row's examples are chosen here (llm_core.fewshot) and shown
        before it; examples that do not fit the input limit are left out (llm_core.prompting).
        `on_batch(rows_done, error_rows, completion_tokens)`, counted from the start of this call,
        is called once for the rows refused up front, then after each engine batch."""
        continuations = self._label_continuations(spec) if spec.kind == TaskKind.CLASSIFY else []
        # classify generates nothing, but each label's tokens must fit after the prompt
        reserved = max(map(len, continuations)) if continuations else params.max_new_tokens
        limit = self.engine.max_context - reserved
        max_input = min(max_input_tokens or limit, limit)
        errors, good = screen_rows(spec, texts, target_languages)
        results: list[RowResult | None] = [RowResult(None, errors[i], error_kind=PERMANENT) if i in errors
                                           else None for i in range(len(texts))]
        languages = {i: target_languages[i] if target_languages is not None else None for i in good}
        chosen = self._examples(spec, good, texts, languages)
        prompts: dict[int, list[int]] = {}
        shots: dict[int, tuple[Example, ...]] = {}
        for i in good:
            prompt = fit_prompt(self.tokenizer, spec, texts[i], languages[i], chosen.get(i, ()), max_input,
                                on_long_input)
            if prompt.error:
                results[i] = RowResult(None, prompt.error, error_kind=PERMANENT)
            else:
                prompts[i], shots[i] = prompt.ids, prompt.examples
        counts = _Counts(on_batch)
        counts.add([r for r in results if r is not None])
        order = list(prompts)
        if spec.kind == TaskKind.CLASSIFY:
            self._classify(spec, order, prompts, shots, continuations, max_input, results, counts)
        elif order:
            self._generate(spec, order, prompts, params, results, counts, row_ids)
        return results  # type: ignore[return-value]

    def _examples(self, spec: TaskSpec, good: list[int], texts: list,
                  languages: dict[int, str | None]) -> dict[int, tuple[Example, ...]]:
        """Each good row's few-shot examples (none without spec.fewshot), shortened to the cap."""
        if spec.fewshot is None or not good:
            return {}
        picks = select_examples(spec.fewshot, [texts[i] for i in good], [languages[i] for i in good],
                                spec.target_language)
        cap = spec.fewshot.max_example_tokens
        return {i: self._shortened(pick, cap) for i, pick in zip(good, picks)}

    def _label_continuations(self, spec: TaskSpec) -> list[list[int]]:
        """What classify scores after each prompt: a label's tokens, then end-of-turn."""
        end = list(self.tokenizer.eos_token_ids[:1])
        return [self.tokenizer.encode(label) + end for label in spec.labels]

    def _generate(self, spec: TaskSpec, order: list[int], prompts: dict, params: SamplingParams,
                  results: list, counts: _Counts, row_ids: list | None = None) -> None:
        """One engine call over every row, so batching and sorting are the engine's own; the
        engine reports prompts as they finish (`on_finished`), then the cleaned rows are counted
        exactly (an empty output is an error only once cleaned)."""
        rows, errors, tokens = counts.rows, counts.errors, counts.tokens
        on_finished = counts.finished if counts.on_batch is not None else None
        extra = {}
        if row_ids is not None and params.seed is not None and not params.greedy:
            extra["seeds"] = [row_seed(params.seed, row_ids[i]) for i in order]
        outs = self.engine.generate([prompts[i] for i in order], params, on_finished=on_finished, **extra)
        counts.rows, counts.errors, counts.tokens = rows, errors, tokens
        for i, completions in zip(order, outs):
            results[i] = _row_result(spec, completions, several=params.n > 1)
        counts.add([results[i] for i in order])

    def _classify(self, spec: TaskSpec, order: list[int], prompts: dict, shots: dict, continuations: list,
                  max_input: int, results: list, counts: _Counts) -> None:
        """Score each label's tokens (then end-of-turn) by log-likelihood: always one of the labels.

        spec.calibrate (llm_core.calibration) divides each row's label distribution by a prior:
        "batch", the mean distribution of spec.calibration_texts in the same prompt (or of this
        call's rows when there are none), one prior for every row; "content_free", measured on
        content-free texts with the row's own examples, so each distinct set of examples gets its
        prior (scored with the first rows that use it). False: the label of the highest score.
        With a callback, rows are scored a batch at a time and counted as they are; labels are
        set at the end.
        """
        if not order:
            return
        step = self.batch_size if counts.on_batch is not None else len(order)
        raw: dict[int, list[float]] = {}
        priors: dict[tuple[Example, ...], list[float]] = {}
        for start in range(0, len(order), step):
            chunk = order[start:start + step]
            new_sets = ([s for s in dict.fromkeys(shots[i] for i in chunk) if s not in priors]
                        if spec.calibrate == CONTENT_FREE else [])
            free = [self._content_free_prompt(spec, s, text, max_input) for s in new_sets for text in CONTENT_FREE_TEXTS]
            scores = self.engine.score([prompts[i] for i in chunk] + free, continuations)
            raw.update(zip(chunk, scores))
            per_set = len(CONTENT_FREE_TEXTS)
            for n, examples in enumerate(new_sets):
                priors[examples] = log_prior(scores[len(chunk) + n * per_set:][:per_set])
            if counts.on_batch is not None:
                counts.add([RowResult("", None, "stop", len(prompts[i]), 0) for i in chunk])
        batch = self._batch_prior(spec, [raw[i] for i in order], continuations, max_input) if spec.calibrate == BATCH else None
        for i in order:
            prior = batch if batch is not None else priors.get(shots[i])
            values = calibrated_scores(raw[i], prior) if prior is not None else raw[i]
            best = best_label(values)
            results[i] = RowResult(spec.labels[best], None, "stop", len(prompts[i]), len(continuations[best]))
        if counts.on_batch is not None:  # the labels' tokens are known only now
            counts.tokens += sum(results[i].completion_tokens for i in order)
            counts.on_batch(counts.rows, counts.errors, counts.tokens)

    def _batch_prior(self, spec: TaskSpec, call_scores: list[list[float]], continuations: list,
                     max_input: int) -> list[float]:
        """Batch Calibration's prior: the mean label distribution of spec.calibration_texts, each in
        its own prompt (its own examples, cut to fit like any row), scored in one engine call of its
        own so the prior is the same whatever rows come with it; kept per process (a worker serves
        many shards of one job). Without calibration_texts: of this call's rows."""
        if spec.calibration_texts is None:
            return log_prior(call_scores)
        if spec is not self._prior_spec:  # a spec arrives once per shard: its digest, not per batch
            self._prior_spec, self._prior_digest = spec, batch_prior_digest(spec)
        key = (self._prior_digest, max_input)
        if key not in self._batch_priors:
            texts = list(spec.calibration_texts)
            _, good = screen_rows(spec, texts)
            if not good:
                raise ValueError("calibrate batch: calibration_texts holds no usable text")
            chosen = self._examples(spec, good, texts, {i: None for i in good})
            prompts = [fit_prompt(self.tokenizer, spec, texts[i], None, chosen.get(i, ()), max_input, "truncate").ids
                       for i in good]
            self._batch_priors.clear()  # another job's prior: one at a time
            self._batch_priors[key] = log_prior(self.engine.score([p for p in prompts if p], continuations))
        return self._batch_priors[key]

    def _content_free_prompt(self, spec: TaskSpec, examples: tuple[Example, ...], text: str,
                             max_input: int) -> list[int]:
        # The row's examples fitted with the row's text; "[MASK]" may outgrow a row by a token or
        # two: then fit_prompt leaves out the first example, never cuts the prompt's end ("" fits
        # wherever the row did).
        prompt = fit_prompt(self.tokenizer, spec, text, None, examples, max_input, "truncate")
        return prompt.ids or fit_prompt(self.tokenizer, spec, "", None, examples, max_input, "truncate").ids


def _row_result(spec: TaskSpec, completions: list[Completion], several: bool) -> RowResult:
    """A row from its completions: an error row (no output at all) if any is empty once cleaned,
    so a row never has fewer than params.n outputs; tokens count every completion."""
    texts = [clean_output(spec, c.text) for c in completions]
    first = completions[0]
    tokens = sum(c.completion_tokens for c in completions)
    samples = [Sample(t, c.finish_reason, c.completion_tokens) for t, c in zip(texts, completions)] if several else None
    empty = [j for j, text in enumerate(texts) if not text]
    if not empty:
        return RowResult(texts[0], None, first.finish_reason, first.prompt_tokens, tokens, samples=samples)
    error = "model produced an empty output"
    if several:
        error += f" (completion {empty[0] + 1} of {len(texts)})"
    return RowResult(None, error, first.finish_reason, first.prompt_tokens, tokens, RETRIABLE, samples=samples)
