"""Runs the model for prefill and decode steps over the KV cache; returns fp32 logits.

Prefill packs every sequence's new tokens into one flat batch and computes the lm_head only
where logits are needed. Decode feeds one token per sequence; on CUDA it replays a captured
graph (see cuda_graphs.py), on CPU it runs eagerly over the cache cut to the longest context.
"""

from __future__ import annotations

import torch

from llm_core.engine.native.attention import DecodeAttention, PrefillAttention
from llm_core.engine.native.cuda_graphs import DecodeGraphs
from llm_core.engine.native.kv_cache import KVCache
from llm_core.models.config import ModelConfig
from llm_core.models.llama import LlamaForCausalLM


class ModelRunner:
    def __init__(
        self, model: LlamaForCausalLM, cfg: ModelConfig, device: str, dtype: torch.dtype,
        max_num_seqs: int, use_cuda_graphs: bool,
    ):
        self.model, self.cfg, self.device, self.dtype = model, cfg, device, dtype
        self.max_num_seqs = max_num_seqs
        self.use_cuda_graphs = use_cuda_graphs
        self.cache: KVCache | None = None
        self.graphs = None

    def ensure_cache(self, max_len: int) -> KVCache:
        """(Re)allocate the cache when a call needs longer slots than the current one has."""
        if self.cache is None or not self.cache.fits(self.max_num_seqs, max_len):
            # Round up so a slightly longer batch does not force another allocation.
            max_len = -(-max_len // 256) * 256
            self.cache = self.graphs = None
            if self.device.startswith("cuda"):
                torch.cuda.empty_cache()
            self.cache = KVCache(self.cfg, self.max_num_seqs, max_len, self.device, self.dtype)
            if self.use_cuda_graphs:
                self.graphs = DecodeGraphs(self.model, self.cache, self.max_num_seqs)
        return self.cache

    def extend(
        self, chunks: list[tuple[int, int, list[int]]], all_logits: bool = False
    ) -> list[torch.Tensor]:
        """chunks: (slot, start, new tokens). Writes the tokens' KV at start.. in each slot and
        returns per chunk the logits of its last token [V], or of every token [n, V]."""
        slots = [slot for slot, _, _ in chunks]
        starts = [start for _, start, _ in chunks]
        lens = [len(tokens) for _, _, tokens in chunks]
        flat = [t for _, _, tokens in chunks for t in tokens]
        input_ids = torch.tensor(flat, device=self.device)
        backend = PrefillAttention(self.cache, slots, starts, lens, self.device)
        hidden = self.model(input_ids, backend.positions, backend)
        if all_logits:
            return list(self.model.compute_logits(hidden).float().split(lens))
        last = torch.tensor(lens, device=self.device).cumsum(0) - 1
        return list(self.model.compute_logits(hidden[last]).float())

    def decode(self, last_tokens: list[int], positions: list[int]) -> torch.Tensor:
        """Sequence b (in slot b) adds last_tokens[b] at positions[b]; returns logits [B, V]."""
        if self.graphs is not None:
            return self.graphs.run(last_tokens, positions)
        input_ids = torch.tensor(last_tokens, device=self.device)
        pos = torch.tensor(positions, device=self.device)
        length = max(positions) + 1
        mask = (torch.arange(length, device=self.device)[None, :] <= pos[:, None])[:, None, None, :]
        backend = DecodeAttention(self.cache, pos, mask, length)
        hidden = self.model(input_ids, pos, backend)
        return self.model.compute_logits(hidden).float()
