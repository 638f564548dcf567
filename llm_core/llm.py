"""`LLM`: one model, one engine, and the four tasks over a list of texts (the facade workers use)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from llm_core.engine.select import load_engine
from llm_core.engine.sampling import SamplingParams
from llm_core.tasks import TaskKind, TaskSpec, build_messages, clean_output, screen_rows
from llm_core.tokenizer import ModelTokenizer


@dataclass
class RowResult:
    output: str | None
    error: str | None = None
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0


class LLM:
    def __init__(self, model_dir: str | Path, engine: str = "auto", device: str = "auto",
                 dtype: str = "auto", batch_size: int = 16, max_batch_tokens: int | None = None):
        self.model_dir = Path(model_dir)
        self.tokenizer = ModelTokenizer(self.model_dir)
        self.engine = load_engine(self.model_dir, engine, device, dtype, batch_size, max_batch_tokens,
                                  self.tokenizer)

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
                 target_languages: list | None = None) -> list[RowResult]:
        """One RowResult per text, in order. Bad rows get an error and never stop the others."""
        limit = self.engine.max_context - (0 if spec.kind == TaskKind.CLASSIFY else params.max_new_tokens)
        max_input = min(max_input_tokens or limit, limit)
        errors, good = screen_rows(spec, texts, target_languages)
        results: list[RowResult | None] = [RowResult(None, errors[i]) if i in errors else None
                                           for i in range(len(texts))]
        prompts: dict[int, list[int]] = {}
        for i in good:
            language = target_languages[i] if target_languages is not None else None
            ids, error = self._prompt(spec, texts[i], language, max_input, on_long_input)
            if error:
                results[i] = RowResult(None, error)
            else:
                prompts[i] = ids
        order = list(prompts)
        if spec.kind == TaskKind.CLASSIFY:
            self._classify(spec, order, prompts, results)
        elif order:
            outs = self.engine.generate([prompts[i] for i in order], params)
            for i, completions in zip(order, outs):
                c = completions[0]
                text = clean_output(spec, c.text)
                results[i] = RowResult(text or None, None if text else "model produced an empty output",
                                       c.finish_reason, c.prompt_tokens, c.completion_tokens)
        return results  # type: ignore[return-value]

    def _classify(self, spec: TaskSpec, order: list[int], prompts: dict, results: list) -> None:
        """Score each label's tokens (then end-of-turn) by log-likelihood: always one of the labels.

        Scores are calibrated by the same labels' scores for a content-free text ("N/A"), so
        a label the model favours regardless of input does not win every row.
        """
        if not order:
            return
        end = list(self.tokenizer.eos_token_ids[:1])
        continuations = [self.tokenizer.encode(label) + end for label in spec.labels]
        null_prompt = self.tokenizer.encode(self.tokenizer.apply_chat_template(build_messages(spec, "N/A")))
        *scores, prior = self.engine.score([prompts[i] for i in order] + [null_prompt], continuations)
        for i, raw in zip(order, scores):
            row = [s - p for s, p in zip(raw, prior)]
            best = max(range(len(row)), key=row.__getitem__)
            results[i] = RowResult(spec.labels[best], None, "stop", len(prompts[i]), len(continuations[best]))
