"""Attention backends that read and write the engine's KV cache (see models/attention.py).

Prefill: the new tokens of several sequences are packed with no padding; each sequence attends
to what its slot already holds (a prompt, when scoring continuations) plus its new tokens. Fresh
prompts attend in one padded SDPA call (models.attention.PaddedLayout).
Decode: one token per sequence, all sequences in one SDPA call over the compact slot view.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from llm_core.engine.kv_cache import KVCache
from llm_core.models.attention import PaddedLayout, causal_attention


class PrefillAttention:
    def __init__(self, cache: KVCache, slots: list[int], starts: list[int], lens: list[int], device):
        self.cache, self.slots, self.starts, self.lens = cache, slots, starts, lens
        self.slot_ids = torch.tensor(
            [s for s, n in zip(slots, lens) for _ in range(n)], device=device
        )
        self.positions = torch.cat(
            [torch.arange(st, st + n) for st, n in zip(starts, lens)]
        ).to(device)
        self.rows = cache.rows(self.slot_ids, self.positions)
        # Fresh prompts only (generation): one padded SDPA call per layer for all of them.
        # Continuations of cached prefixes (scoring) keep the per-sequence path.
        fresh = len(lens) > 1 and not any(starts)
        self.layout = PaddedLayout(lens, device) if fresh else None

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        self.cache.write(layer, self.rows, k, v)
        if self.layout is not None:
            return self.layout.causal_attention(q, k, v)
        outs, off = [], 0
        for slot, start, n in zip(self.slots, self.starts, self.lens):
            qs = q[off : off + n]
            if start == 0:
                outs.append(causal_attention(qs, k[off : off + n], v[off : off + n]))
            else:
                outs.append(self._attend_with_prefix(layer, qs, slot, start, n))
            off += n
        return outs[0] if len(outs) == 1 else torch.cat(outs)

    def _attend_with_prefix(self, layer, q, slot, start, n) -> torch.Tensor:
        keys = self.cache.k[layer, slot, :, : start + n]
        values = self.cache.v[layer, slot, :, : start + n]
        # New token i sees the cached prefix and new tokens 0..i.
        mask = torch.arange(start + n, device=q.device)[None, :] <= (
            start + torch.arange(n, device=q.device)[:, None]
        )
        out = F.scaled_dot_product_attention(
            q.transpose(0, 1)[None], keys[None], values[None], attn_mask=mask, enable_gqa=True
        )
        return out[0].transpose(0, 1)


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
