"""The contract every generation engine meets (native engine, transformers fallback).

Engines take token ids, never text: prompts are built and tokenized by llm_core.tasks, so
every engine sees exactly the same inputs and can be compared token for token.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, Sequence

from llm_core.engine.sampling import Completion, SamplingParams


class Engine(Protocol):
    name: str  # "native" or "hf"
    device: str  # as picked by llm_core.device: "cpu", "cuda", "cuda:1", ...
    max_context: int  # prompt + generated tokens the model accepts
    eos_token_ids: tuple[int, ...]

    def generate(
        self, prompts: Sequence[Sequence[int]], params: SamplingParams,
        on_finished: Callable[[list[tuple[int, int]]], None] | None = None,
        seeds: Sequence[int] | None = None,
    ) -> list[list[Completion]]:
        """Continue each prompt; returns, per prompt in input order, params.n completions.

        `on_finished([(prompt index, completion tokens), ...])` is called as prompts finish (all
        their completions), so a caller shows progress without cutting the work into calls.
        `seeds`: one per prompt (llm_core.engine.sampling.row_seed) in place of params.seed, so a
        sampled prompt's completions do not depend on the others in the call (native engine;
        transformers samples a batch from one generator and seeds the call with params.seed)."""
        ...

    def score(
        self, prompts: Sequence[Sequence[int]], continuations: Sequence[Sequence[int]]
    ) -> list[list[float]]:
        """Sum of log-probabilities of each continuation after each prompt ([prompt][continuation])."""
        ...
