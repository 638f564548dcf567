"""The decoder's elementwise steps as CPU kernels (csrc/fused_elementwise.cpp): RMSNorm, SiLU-and-
multiply, and RoPE with the q / k / v split, one pass each.

Eager, each is several torch ops (RMSNorm 6, SiLU-multiply 2 plus a chunk, RoPE a cat, a neg, two
muls, an add and the splits and copies around them); at decode sizes (a few dozen rows) each op
costs its dispatch and allocation more than its arithmetic (RMSNorm: 46 us eager vs about 25 us
fused, 64 x 576 bf16). The engine swaps the loaded model's modules for these (inference only: the
kernels have no backward) where the CPU kernels build (cpu_kernels.py). They round where llama.py
and rope.py round: RoPE bit for bit, RMSNorm up to the order of a row's sum of squares, SiLU within
about 1e-7 relative (its exp is the kernels' own).
"""

from __future__ import annotations

import torch
from torch import nn

from llm_core.models.attention import AttentionBackend
from llm_core.engine.native.w8a8_layers import W8A8DecoderLayer, fusable
from llm_core.models.llama import MLP, Attention, DecoderLayer, RMSNorm


class FusedRMSNorm(nn.Module):
    def __init__(self, norm: RMSNorm):
        super().__init__()
        self.weight, self.eps = norm.weight, norm.eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, x.shape[-1])
        return torch.ops.llmbatch.rms_norm(flat, self.weight, self.eps).view(x.shape)


class FusedMLP(nn.Module):
    def __init__(self, mlp: MLP):
        super().__init__()
        self.gate_up_proj, self.down_proj = mlp.gate_up_proj, mlp.down_proj

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(torch.ops.llmbatch.silu_mul(self.gate_up_proj(x)))


class FusedAttention(nn.Module):
    """Attention's forward with RoPE and the q / k / v split as one kernel; the same projections
    and attributes (compiled_decode.py reads them)."""

    def __init__(self, attn: Attention):
        super().__init__()
        self.qkv_proj, self.o_proj = attn.qkv_proj, attn.o_proj
        self.layer, self.heads, self.kv_heads, self.head_dim = attn.layer, attn.heads, attn.kv_heads, attn.head_dim
        self.q_size, self.kv_size = attn.q_size, attn.kv_size

    def forward(self, x, cos, sin, backend: AttentionBackend) -> torch.Tensor:
        q, k, v = torch.ops.llmbatch.rotary_qkv(self.qkv_proj(x), cos, sin, self.heads, self.kv_heads)
        out = backend.attend(self.layer, q, k, v)
        return self.o_proj(out.reshape(-1, self.q_size))


FUSED = {RMSNorm: FusedRMSNorm, MLP: FusedMLP, Attention: FusedAttention}


def fuse_layers(model: nn.Module, w8a8_layers: bool = True) -> int:
    """Swap the model's RMSNorm, MLP and Attention modules for their fused twins, in place, and
    with w8a8_layers, decoder layers whose projections are all W8A8 for W8A8DecoderLayer
    (w8a8_layers.py) first, whole; returns how many modules were swapped."""
    def w8a8_twin(module: nn.Module):
        return W8A8DecoderLayer if w8a8_layers and type(module) is DecoderLayer and fusable(module) else None

    whole = _swap(model, w8a8_twin)
    return whole + _swap(model, lambda module: FUSED.get(type(module)))


def _swap(model: nn.Module, twin_of) -> int:
    """Replace each submodule m for which twin_of(m) gives a class by that class built from m."""
    targets = [(parent, child, twin) for parent in model.modules() for child, module in parent.named_children()
               if (twin := twin_of(module)) is not None]
    for parent, child, twin in targets:
        setattr(parent, child, twin(getattr(parent, child)))
    return len(targets)
