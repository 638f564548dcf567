"""Decode steps captured as CUDA graphs, one per batch-size bucket.

A decode step is dozens of small kernels; launching them from Python costs more than running
them at small batch sizes. Each graph is recorded once with static input tensors and replayed
by copying the step's inputs into them. Shapes must be static, so attention spans the whole
cache length with a mask, and a batch is padded up to its bucket: padding rows sit in free
slots (slots are compact, so rows B.. are free) at position 0 and never reach the output.
"""

from __future__ import annotations

import torch

from llm_core.engine.native.attention import DecodeAttention
from llm_core.engine.native.kv_cache import KVCache
from llm_core.models.llama import LlamaForCausalLM


def batch_buckets(max_num_seqs: int) -> list[int]:
    sizes = [1, 2, 4, 8] + list(range(16, max_num_seqs + 1, 16))
    return sorted({s for s in sizes if s <= max_num_seqs} | {max_num_seqs})


class DecodeGraphs:
    def __init__(self, model: LlamaForCausalLM, cache: KVCache, max_num_seqs: int):
        self.model, self.cache = model, cache
        self.buckets = batch_buckets(max_num_seqs)
        device = cache.k.device
        self.input_ids = torch.zeros(max_num_seqs, dtype=torch.long, device=device)
        self.positions = torch.zeros(max_num_seqs, dtype=torch.long, device=device)
        self.cache_range = torch.arange(cache.max_len, device=device)
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.outputs: dict[int, torch.Tensor] = {}
        self.pool = None
        # Capture largest first so smaller graphs reuse its memory pool.
        for size in reversed(self.buckets):
            self._capture(size)

    def _step(self, size: int) -> torch.Tensor:
        pos = self.positions[:size]
        mask = (self.cache_range[None, :] <= pos[:, None])[:, None, None, :]
        backend = DecodeAttention(self.cache, pos, mask, self.cache.max_len)
        hidden = self.model(self.input_ids[:size], pos, backend)
        return self.model.compute_logits(hidden).float()

    def _capture(self, size: int) -> None:
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(2):  # warm up kernels and allocator outside the graph
                self._step(size)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool):
            self.outputs[size] = self._step(size)
        if self.pool is None:
            self.pool = graph.pool()
        self.graphs[size] = graph

    def run(self, last_tokens: list[int], positions: list[int]) -> torch.Tensor:
        batch = len(last_tokens)
        size = next(s for s in self.buckets if s >= batch)
        pad = size - batch
        self.input_ids[:size].copy_(torch.tensor(last_tokens + [0] * pad), non_blocking=True)
        self.positions[:size].copy_(torch.tensor(positions + [0] * pad), non_blocking=True)
        self.graphs[size].replay()
        return self.outputs[size][:batch]
