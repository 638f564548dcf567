"""One completion being generated: its tokens, settings, cache slot and finish state."""

from __future__ import annotations

import torch

from llm_core.engine.ngram import NgramIndex
from llm_core.engine.sampling import SamplingParams


class Sequence:
    def __init__(
        self, prompt: list[int], params: SamplingParams, prompt_index: int, sample_index: int,
        device: str, seed: int | None = None,
    ):
        """`seed`: the prompt's own (a row's, llm_core.engine.sampling.row_seed); default params.seed."""
        self.prompt = list(prompt)
        self.params = params
        self.prompt_index = prompt_index
        self.sample_index = sample_index  # which of the prompt's n completions
        self.output: list[int] = []
        self.slot = -1  # row of the KV cache; -1 while waiting
        self.prefix = None  # a prefix_cache.CachedPrefix the prompt starts with: not recomputed
        self.finish_reason: str | None = None
        self.stopped_by_token = False  # EOS or a stop token ended it (that token is not returned)
        self.text: str | None = None  # set when a stop string cut the output
        self.stop_scan_from = 0  # length of output text already searched for stop strings
        self.ngram_index: NgramIndex | None = None  # built lazily by the sampler
        self.generator = None
        seed = params.seed if seed is None else seed
        if not params.greedy and seed is not None:
            # A private generator per seeded completion makes its output independent of batching;
            # unseeded rows share the default generator (one batched draw per step, see sampler).
            self.generator = torch.Generator(device=device)
            self.generator.manual_seed(seed + sample_index)

    @property
    def tokens(self) -> list[int]:
        return self.prompt + self.output

    def __len__(self) -> int:
        return len(self.prompt) + len(self.output)

    @property
    def prefill_tokens(self) -> int:
        """Prompt tokens its prefill computes (all but a cached prefix)."""
        return len(self.prompt) - (0 if self.prefix is None else len(self.prefix))

    @property
    def last_token(self) -> int:
        return self.output[-1] if self.output else self.prompt[-1]

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None
