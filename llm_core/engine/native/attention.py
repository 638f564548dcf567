"""Attention backends that read and write the engine's KV cache (see models/attention.py).

Prefill: the new tokens of several sequences are packed with no padding; each sequence attends
to what its slot already holds (a prompt, when scoring continuations) plus its new tokens. Either
way all sequences attend in one SDPA call per layer, their queries spread into a right-padded
batch (models.attention.PaddedLayout).
Decode: one token per sequence, all sequences in one SDPA call over the compact slot view.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from llm_core.engine.native.kv_cache import KVCache
from llm_core.models.attention import PackedCausalAttention, PaddedLayout


class PrefillAttention:
    def __init__(self, cache: KVCache, slots: list[int], starts: list[int], lens: list[int], device):
        self.cache = cache
        slot_ids = torch.tensor([s for s, n in zip(slots, lens) for _ in range(n)], device=device)
        self.positions = torch.cat(
            [torch.arange(st, st + n) for st, n in zip(starts, lens)]
        ).to(device)
        self.rows = cache.rows(slot_ids, self.positions)
        # Fresh prompts (generation) attend only to themselves: the cache-free packed backend.
        self.fresh = PackedCausalAttention(lens) if not any(starts) else None
        if self.fresh is None:
            self.layout = PaddedLayout(lens, device)
            # Continuations of cached prefixes (scoring): new token i of sequence b sees its
            # slot's first starts[b] + i + 1 entries; later entries may be stale, so masked.
            self.slots = torch.tensor(slots, device=device)
            self.key_len = max(st + n for st, n in zip(starts, lens))
            limit = torch.tensor(starts, device=device)[:, None] + torch.arange(max(lens), device=device)[None, :]
            self.mask = (torch.arange(self.key_len, device=device)[None, None, :] <= limit[:, :, None])[:, None]

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        self.cache.write(layer, self.rows, k, v)
        if self.fresh is not None:
            return self.fresh.attend(layer, q, k, v)
        keys = self.cache.k[layer, self.slots, :, : self.key_len]
        values = self.cache.v[layer, self.slots, :, : self.key_len]
        out = F.scaled_dot_product_attention(
            self.layout.spread(q), keys, values, attn_mask=self.mask, enable_gqa=True
        )
        return self.layout.gather(out)


class DecodeAttention:
    """Sequence b sits in slot b and has its new token at positions[b]; `mask` [B, 1, 1, L]
    marks the valid cache entries up to length L."""

    def __init__(self, cache: KVCache, positions: torch.Tensor, mask: torch.Tensor, length: int):
        self.cache, self.positions, self.mask, self.length = cache, positions, mask, length
        slots = torch.arange(positions.shape[0], device=positions.device)
        self.rows = cache.rows(slots, positions)

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        self.cache.write(layer, self.rows, k, v)
        batch, heads, head_dim = q.shape
        kv_heads = k.shape[1]
        # Query heads sharing a KV head become that head's "query rows": GQA with no repeat.
        q = q.view(batch, kv_heads, heads // kv_heads, head_dim)
        keys = self.cache.k[layer, :batch, :, : self.length]
        values = self.cache.v[layer, :batch, :, : self.length]
        out = F.scaled_dot_product_attention(q, keys, values, attn_mask=self.mask)
        return out.view(batch, heads, head_dim)
