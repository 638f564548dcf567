"""How a decoder layer's attention reaches its keys and values.

The model computes q/k/v for a flat batch of tokens and hands them to an attention backend.
Without a KV cache (parity tests, scoring short texts) `PackedCausalAttention` treats the
tokens as several sequences laid end to end; the generation engine supplies backends that
also read and write its KV cache. Tensors are [tokens, heads, head_dim].
"""

from __future__ import annotations

from typing import Protocol, Sequence

import torch
import torch.nn.functional as F


class AttentionBackend(Protocol):
    def attend(
        self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor
    ) -> torch.Tensor: ...


def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """One sequence: q [n, H, D] attends causally to k/v [n, KVH, D]."""
    # 4-d inputs: with 3-d ones SDPA skips its fused CPU kernel for the slow math fallback.
    out = F.scaled_dot_product_attention(
        q.transpose(0, 1)[None], k.transpose(0, 1)[None], v.transpose(0, 1)[None],
        is_causal=True, enable_gqa=True,
    )
    return out[0].transpose(0, 1)


class PackedCausalAttention:
    """Sequences packed back to back with no padding; each attends only to itself."""

    def __init__(self, seq_lens: Sequence[int]):
        self.seq_lens = list(seq_lens)

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        if len(self.seq_lens) == 1:
            return causal_attention(q, k, v)
        outs, start = [], 0
        for n in self.seq_lens:
            outs.append(causal_attention(q[start : start + n], k[start : start + n], v[start : start + n]))
            start += n
        return torch.cat(outs)
