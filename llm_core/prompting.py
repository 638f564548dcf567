"""The token ids of one row's prompt, made to fit the input limit.

Shared by the LLM facade and the jobs' pre-flight (which must measure prompts exactly as they
will run, without importing the engine). Order of sacrifice when a prompt is too long: first the
few-shot examples, the first of them first (the least similar, or the first drawn), so examples
never cut or fail a row; then the row's own text, cut to fit (`on_long_input: truncate`) or the
row refused (`error`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from llm_core.fewshot import Example
from llm_core.tasks import TaskSpec, build_messages
from llm_core.tokenizer import ModelTokenizer


@dataclass(frozen=True)
class Prompt:
    ids: list[int] | None
    examples: tuple[Example, ...] = ()  # those that fit, in prompt order
    error: str | None = None


def chat_ids(tokenizer: ModelTokenizer, spec: TaskSpec, text: str, language: str | None,
             examples: Sequence[Example] = ()) -> list[int]:
    return tokenizer.encode(tokenizer.apply_chat_template(build_messages(spec, text, language, examples)))


def shorten_example(tokenizer: ModelTokenizer, example: Example, max_tokens: int) -> Example:
    """The example with its text and output each cut to `max_tokens` tokens (the cap that keeps
    few-shot prompts bounded)."""
    text, output = (_cut(tokenizer, value, max_tokens) for value in (example.text, example.output))
    if text == example.text and output == example.output:
        return example
    return Example(text, output, example.target_language)


def _cut(tokenizer: ModelTokenizer, value: str, max_tokens: int) -> str:
    if len(value) <= max_tokens:  # no token is shorter than a character
        return value
    ids = tokenizer.encode(value)
    return value if len(ids) <= max_tokens else tokenizer.decode(ids[:max_tokens])


def fit_prompt(tokenizer: ModelTokenizer, spec: TaskSpec, text: str, language: str | None,
               examples: Sequence[Example], max_input: int, on_long: str) -> Prompt:
    """The row's prompt within `max_input` tokens (examples already shortened)."""
    shots = tuple(examples)
    while True:
        ids = chat_ids(tokenizer, spec, text, language, shots)
        if len(ids) <= max_input:
            return Prompt(ids, shots)
        if not shots:
            break
        shots = shots[1:]
    if on_long == "error":
        return Prompt(None, error=f"input too long: {len(ids)} prompt tokens > max_input_tokens {max_input}")
    text_ids = tokenizer.encode(text)
    keep = len(text_ids) - (len(ids) - max_input)
    if keep <= 0:
        return Prompt(None, error=f"input too long: the prompt without text exceeds max_input_tokens {max_input}")
    ids = chat_ids(tokenizer, spec, tokenizer.decode(text_ids[:keep]), language)
    return Prompt(ids if len(ids) <= max_input else ids[:max_input])
