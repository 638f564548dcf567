"""Continuous batching: admit waiting sequences whenever slots free up, under a token budget.

Each step is either a prefill (new prompts packed together, at most `max_batch_tokens` prompt
tokens to compute, a cached prefix not counted, though a single longer prompt still goes alone)
or a decode step over every running sequence. Prefill goes first so finished sequences are
replaced as soon as possible.
"""

from __future__ import annotations

from collections import deque

from llm_core.engine.native.kv_cache import KVCache
from llm_core.engine.native.sequence import Sequence


class ContinuousBatcher:
    def __init__(self, max_num_seqs: int, max_batch_tokens: int):
        self.max_num_seqs = max_num_seqs
        self.max_batch_tokens = max_batch_tokens
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    @property
    def done(self) -> bool:
        return not self.waiting and not self.running

    def next_step(self) -> tuple[str, list[Sequence]]:
        """Returns ("prefill", newly admitted) or ("decode", all running)."""
        batch: list[Sequence] = []
        tokens = 0
        while self.waiting and len(self.running) + len(batch) < self.max_num_seqs:
            size = self.waiting[0].prefill_tokens
            if batch and tokens + size > self.max_batch_tokens:
                break
            seq = self.waiting.popleft()
            seq.slot = len(self.running) + len(batch)
            batch.append(seq)
            tokens += size
        if batch:
            self.running.extend(batch)
            return "prefill", batch
        return "decode", sorted(self.running, key=lambda s: s.slot)

    def release_finished(self, cache: KVCache, followers: tuple = ()) -> list[Sequence]:
        finished = [s for s in self.running if s.finished]
        if finished:
            self.running = [s for s in self.running if not s.finished]
            cache.compact(self.running, followers)
        return finished
