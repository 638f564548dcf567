"""Decode steps captured as CUDA graphs, one per (batch-size bucket, attention-length bucket).

A decode step is dozens of small kernels; launching them from Python costs more than running
them at small batch sizes. Each graph is recorded with static input tensors and replayed by
copying the step's inputs into them. Shapes must be static, so a batch is padded up to its
bucket (padding rows sit in free slots: slots are compact, so rows B.. are free, at position 0,
and never reach the output) and attention spans a power-of-two prefix of the cache with a mask.

Graphs are captured lazily, the first time their bucket is needed, so a new cache re-captures
only the buckets a workload uses. All graphs share one memory pool and write their logits into
one static buffer sized for the largest bucket: no graph keeps a [size, vocab] output of its own.
"""

from __future__ import annotations

import torch

from llm_core.engine.native.attention import DecodeAttention
from llm_core.engine.native.kv_cache import KVCache
from llm_core.models.llama import LlamaForCausalLM

MIN_ATTENTION_LENGTH = 256


def batch_buckets(max_num_seqs: int) -> list[int]:
    sizes = [1, 2, 4, 8] + list(range(16, max_num_seqs + 1, 16))
    return sorted({s for s in sizes if s <= max_num_seqs} | {max_num_seqs})


def length_bucket(needed: int, max_len: int) -> int:
    """The attention span for a step whose furthest token sits at needed - 1: the next power
    of two (at least MIN_ATTENTION_LENGTH), capped at the cache length."""
    span = MIN_ATTENTION_LENGTH
    while span < needed:
        span *= 2
    return min(span, max_len)


class DecodeGraphs:
    def __init__(self, model: LlamaForCausalLM, cache: KVCache, max_num_seqs: int, vocab_size: int):
        self.model, self.cache = model, cache
        self.buckets = batch_buckets(max_num_seqs)
        self.device = cache.k.device
        self.input_ids = torch.zeros(max_num_seqs, dtype=torch.long, device=self.device)
        self.positions = torch.zeros(max_num_seqs, dtype=torch.long, device=self.device)
        self.cache_range = torch.arange(cache.max_len, device=self.device)
        # Outside the graphs' pool: every graph copies its logits here (fp32, as the sampler wants).
        self.logits = torch.empty(max_num_seqs, vocab_size, dtype=torch.float32, device=self.device)
        self.graphs: dict[tuple[int, int], object] = {}
        self.pool = None

    def _step(self, size: int, length: int) -> None:
        pos = self.positions[:size]
        mask = (self.cache_range[None, :length] <= pos[:, None])[:, None, None, :]
        backend = DecodeAttention(self.cache, pos, mask, length)
        hidden = self.model(self.input_ids[:size], pos, backend)
        self.logits[:size].copy_(self.model.compute_logits(hidden))

    def _capture(self, key: tuple[int, int]) -> None:
        with torch.cuda.device(self.device):
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                for _ in range(2):  # warm up kernels and allocator outside the graph
                    self._step(*key)
            torch.cuda.current_stream().wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=self.pool):
                self._step(*key)
            if self.pool is None:
                self.pool = graph.pool()
        self.graphs[key] = graph

    def key_for(self, batch: int, furthest_position: int) -> tuple[int, int]:
        size = next(s for s in self.buckets if s >= batch)
        return size, length_bucket(furthest_position + 1, self.cache.max_len)

    def run(self, last_tokens: list[int], positions: list[int]) -> torch.Tensor:
        batch = len(last_tokens)
        key = self.key_for(batch, max(positions))
        pad = key[0] - batch
        self.input_ids[: key[0]].copy_(torch.tensor(last_tokens + [0] * pad), non_blocking=True)
        self.positions[: key[0]].copy_(torch.tensor(positions + [0] * pad), non_blocking=True)
        if key not in self.graphs:
            self._capture(key)
        self.graphs[key].replay()
        return self.logits[:batch]
