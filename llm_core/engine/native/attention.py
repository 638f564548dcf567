"""Attention backends that read and write the engine's KV cache (see models/attention.py).

Prefill: the new tokens of several sequences are packed with no padding; each sequence attends
to what its slot already holds (a prompt, when scoring continuations) plus its new tokens. Either
way all sequences attend in one SDPA call per layer, their queries spread into a right-padded
batch (models.attention.PaddedLayout).
Decode: one token per sequence, all sequences in one SDPA call over the compact slot view.
On CPU both run instead as one call per layer of the engine's own kernel, which writes the new
tokens' K/V and lets each token read only its own sequence's valid entries
(KernelAttention, csrc/cache_attention.cpp): no padding, no mask, no stale entries.

Continuations need an explicit mask; SDPA's fused CUDA kernels take no mask together with
`enable_gqa` (the pair falls back to the slow math kernel), so on CUDA the KV heads are
expanded to the query heads first and the memory-efficient kernel runs with the mask.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from llm_core.engine.native.kv_cache import KVCache
from llm_core.engine.native.prefix_cache import CachedPrefix
from llm_core.engine.native.transfer import to_device
from llm_core.models.attention import PackedCausalAttention, PaddedLayout


def expand_kv_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """[B, kv_heads, L, D] -> [B, heads, L, D]: query head h reads KV head h // (heads / kv_heads),
    SDPA's enable_gqa grouping."""
    return x.repeat_interleave(heads // x.shape[1], dim=1)


def packed_tokens(slots: list[int], starts: list[int], lens: list[int], device) -> tuple[torch.Tensor, torch.Tensor]:
    """Each packed new token's slot and position: [T] each, sequence by sequence."""
    slot_ids = to_device([s for s, n in zip(slots, lens) for _ in range(n)], device, torch.long)
    positions = torch.cat([torch.arange(st, st + n) for st, n in zip(starts, lens)]).to(device, non_blocking=True)
    return slot_ids, positions


class PrefillAttention:
    def __init__(self, cache: KVCache, slots: list[int], starts: list[int], lens: list[int], device,
                 expand_kv: bool | None = None):
        self.cache = cache
        # Default: expand on CUDA (fused kernels), GQA-native SDPA elsewhere (no copy).
        self.expand_kv = torch.device(device).type == "cuda" if expand_kv is None else expand_kv
        slot_ids, self.positions = packed_tokens(slots, starts, lens, device)
        self.rows = cache.rows(slot_ids, self.positions)
        # Fresh prompts (generation) attend only to themselves: the cache-free packed backend.
        self.fresh = PackedCausalAttention(lens) if not any(starts) else None
        if self.fresh is None:
            self.layout = PaddedLayout(lens, device)
            # Continuations of cached prefixes (scoring): new token i of sequence b sees its
            # slot's first starts[b] + i + 1 entries; later entries may be stale, so masked.
            self.slots = to_device(slots, device, torch.long)
            self.key_len = max(st + n for st, n in zip(starts, lens))
            limit = to_device(starts, device, torch.long)[:, None] + torch.arange(max(lens), device=device)[None, :]
            self.mask = (torch.arange(self.key_len, device=device)[None, None, :] <= limit[:, :, None])[:, None]

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        self.cache.write(layer, self.rows, k, v)
        if self.fresh is not None:
            return self.fresh.attend(layer, q, k, v)
        keys = self.cache.k[layer, self.slots, :, : self.key_len]
        values = self.cache.v[layer, self.slots, :, : self.key_len]
        if self.expand_kv:
            heads = q.shape[1]
            out = F.scaled_dot_product_attention(
                self.layout.spread(q), expand_kv_heads(keys, heads), expand_kv_heads(values, heads),
                attn_mask=self.mask,
            )
        else:
            out = F.scaled_dot_product_attention(
                self.layout.spread(q), keys, values, attn_mask=self.mask, enable_gqa=True
            )
        return self.layout.gather(out)


class DecodeAttention:
    """Sequence b sits in slot b and has its new token at positions[b]; `mask` [B, 1, 1, L]
    marks the valid cache entries up to length L.

    `groups`: runs of neighbouring slots [(first, end, length)], each attending over the cache
    only up to its own longest sequence. Decode attention reads the whole KV cache every step
    and is bound by memory on CPU; one group over the batch's longest sequence reads it for every
    slot (about twice the valid entries on Debian prompts). The engine admits shortest prompts
    first, so neighbouring slots hold similar lengths. Default: one group (CUDA graphs need a
    fixed shape)."""

    def __init__(self, cache: KVCache, positions: torch.Tensor, mask: torch.Tensor, length: int,
                 groups: list[tuple[int, int, int]] | None = None):
        self.cache, self.positions, self.mask, self.length = cache, positions, mask, length
        self.groups = groups or [(0, positions.shape[0], length)]
        slots = torch.arange(positions.shape[0], device=positions.device)
        self.rows = cache.rows(slots, positions)

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        self.cache.write(layer, self.rows, k, v)
        batch, heads, head_dim = q.shape
        kv_heads = k.shape[1]
        # Query heads sharing a KV head become that head's "query rows": GQA with no repeat.
        q = q.view(batch, kv_heads, heads // kv_heads, head_dim)
        outs = [
            F.scaled_dot_product_attention(q[a:b], self.cache.k[layer, a:b, :, :n], self.cache.v[layer, a:b, :, :n],
                                           attn_mask=self.mask[a:b, ..., :n])
            for a, b, n in self.groups
        ]
        out = outs[0] if len(outs) == 1 else torch.cat(outs)
        return out.view(batch, heads, head_dim)


class KernelAttention:
    """Prefill or decode through torch.ops.llmbatch.cache_attention (cpu_kernels.py): one call
    per layer for all tokens, which stores each token's K/V at (slots[i], positions[i]) and then
    lets it read its slot's entries 0..positions[i] only (no mask, no padding, no length groups).
    The same scaling as SDPA's default, 1 / sqrt(head_dim).

    `shared`: a cached prefix (prefix_cache.py) that some of the slots hold, with each token's
    count of its slot's first entries that are that prefix (0: none). Decode tokens read those
    entries from the prefix's one copy, which stays in the CPU's caches across the batch, instead
    of their slot's: the same values, so the same outputs."""

    def __init__(self, cache: KVCache, slots: torch.Tensor, positions: torch.Tensor,
                 shared: tuple[CachedPrefix, torch.Tensor] | None = None):
        self.cache, self.slots, self.positions, self.shared = cache, slots, positions, shared

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        tokens, heads, head_dim = q.shape
        kv_heads = k.shape[1]
        shared = {}
        if self.shared is not None:
            prefix, lengths = self.shared
            shared = {"shared_k": prefix.k[layer], "shared_v": prefix.v[layer], "shared_len": lengths}
        out = torch.ops.llmbatch.cache_attention(
            q.reshape(tokens, kv_heads, heads // kv_heads, head_dim), k, v, self.cache.k[layer], self.cache.v[layer],
            self.slots, self.positions, head_dim**-0.5, **shared,
        )
        return out.view(tokens, heads, head_dim)


def length_groups(positions: list[int], size: int) -> list[tuple[int, int, int]]:
    """Runs of `size` neighbouring slots, each with the cache length its longest sequence needs
    (position + 1); neighbours needing the same length merge into one run."""
    groups: list[tuple[int, int, int]] = []
    for a in range(0, len(positions), size):
        b = min(a + size, len(positions))
        n = max(positions[a:b]) + 1
        if groups and groups[-1][2] == n:
            groups[-1] = (groups[-1][0], b, n)
        else:
            groups.append((a, b, n))
    return groups
