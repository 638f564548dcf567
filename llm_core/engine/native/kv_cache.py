"""Preallocated KV cache: one fixed-length slot per running sequence.

Slots are kept compact (running sequences always occupy slots 0..n-1) so a decode step reads
the cache as a plain view `k[layer, :n, :, :length]`: no gather, no copy, and a static shape
for CUDA graphs. When a sequence finishes, the sequence in the highest slot moves into its hole.
"""

from __future__ import annotations

import torch

from llm_core.models.config import ModelConfig


class KVCache:
    def __init__(
        self, cfg: ModelConfig, num_slots: int, max_len: int, device: str, dtype: torch.dtype
    ):
        shape = (cfg.num_hidden_layers, num_slots, cfg.num_key_value_heads, max_len, cfg.head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.num_slots = num_slots
        self.max_len = max_len

    def fits(self, num_slots: int, max_len: int) -> bool:
        return num_slots <= self.num_slots and max_len <= self.max_len

    def rows(self, slots: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Row numbers, in a layer seen as [slots * kv_heads * max_len, head_dim], of each
        token's per-head entries: [T * kv_heads], in the order of k.reshape(-1, head_dim)."""
        heads = torch.arange(self.k.shape[2], device=slots.device)
        return ((slots[:, None] * self.k.shape[2] + heads[None, :]) * self.max_len + positions[:, None]).flatten()

    def write(self, layer: int, rows: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        """Store k/v [T, kv_heads, head_dim] at `rows` (from rows()); index_copy_ on a flat
        view is far cheaper than advanced-index assignment into the 4-d slot layout."""
        head_dim = self.k.shape[-1]
        self.k[layer].view(-1, head_dim).index_copy_(0, rows, k.reshape(-1, head_dim))
        self.v[layer].view(-1, head_dim).index_copy_(0, rows, v.reshape(-1, head_dim))

    def load_prefix(self, slots: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        """Copy a cached prefix's k/v [layers, kv_heads, P, head_dim] into positions 0..P-1 of
        every slot in `slots`."""
        length = k.shape[2]
        self.k[:, slots, :, :length] = k[:, None]
        self.v[:, slots, :, :length] = v[:, None]

    def move(self, src: int, dst: int, length: int) -> None:
        self.k[:, dst, :, :length] = self.k[:, src, :, :length]
        self.v[:, dst, :, :length] = self.v[:, src, :, :length]

    def compact(self, running: list, followers: tuple = ()) -> None:
        """Renumber the slots of `running` (objects with .slot and len()) to 0..n-1; per-slot
        state kept elsewhere (`followers`, each with the same move()) moves along."""
        n = len(running)
        taken = {s.slot for s in running}
        holes = iter(sorted(set(range(n)) - taken))
        for seq in running:
            if seq.slot >= n:
                dst = next(holes)
                for store in (self, *followers):
                    store.move(seq.slot, dst, len(seq))
                seq.slot = dst
