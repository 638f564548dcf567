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


class PaddedLayout:
    """Where each token of sequences packed back to back sits in a right-padded [B, L] batch.

    Lets attention over many sequences be one SDPA call instead of one per sequence: the
    projections stay packed (no padding waste there) and only q/k/v are spread out. Padding
    sits after each sequence's tokens, so under the causal mask no real query ever sees it."""

    def __init__(self, seq_lens: Sequence[int], device=None):
        self.batch, self.width = len(seq_lens), max(seq_lens)
        self.index = torch.cat(
            [torch.arange(n) + b * self.width for b, n in enumerate(seq_lens)]
        ).to(device, non_blocking=True)  # a blocking host-to-device copy waits for the stream on CUDA

    def spread(self, x: torch.Tensor) -> torch.Tensor:
        """[T, heads, D] -> [B, heads, L, D], zeros where padded."""
        out = x.new_zeros(self.batch * self.width, *x.shape[1:])
        out.index_copy_(0, self.index, x)
        return out.view(self.batch, self.width, *x.shape[1:]).transpose(1, 2)

    def gather(self, x: torch.Tensor) -> torch.Tensor:
        """[B, heads, L, D] -> [T, heads, D]: the real tokens only, in packed order."""
        flat = x.transpose(1, 2).reshape(self.batch * self.width, x.shape[1], x.shape[3])
        return flat.index_select(0, self.index)

    def causal_attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        out = F.scaled_dot_product_attention(
            self.spread(q), self.spread(k), self.spread(v), is_causal=True, enable_gqa=True
        )
        return self.gather(out)


class PackedCausalAttention:
    """Sequences packed back to back with no padding; each attends only to itself."""

    def __init__(self, seq_lens: Sequence[int]):
        self.seq_lens = list(seq_lens)
        self.layout: PaddedLayout | None = None  # built on the first call, on q's device

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        if len(self.seq_lens) == 1:
            return causal_attention(q, k, v)
        if self.layout is None:
            self.layout = PaddedLayout(self.seq_lens, q.device)
        return self.layout.causal_attention(q, k, v)
