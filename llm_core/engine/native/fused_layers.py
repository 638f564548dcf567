"""The decoder's RMSNorm as one CPU kernel (csrc/fused_elementwise.cpp).

Eager RMSNorm is 6 torch ops; at decode sizes (a few dozen rows) each op costs its dispatch and
allocation more than its arithmetic (46 us eager vs about 25 us fused, 64 x 576 bf16). The engine
swaps the loaded model's RMSNorm modules for FusedRMSNorm (inference only: the kernel has no
backward) where the CPU kernels build (cpu_kernels.py). It rounds where llama.py's RMSNorm rounds,
so results differ only by the order of a row's sum of squares.
"""

from __future__ import annotations

import torch
from torch import nn

from llm_core.models.llama import RMSNorm


class FusedRMSNorm(nn.Module):
    def __init__(self, norm: RMSNorm):
        super().__init__()
        self.weight, self.eps = norm.weight, norm.eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, x.shape[-1])
        return torch.ops.llmbatch.rms_norm(flat, self.weight, self.eps).view(x.shape)


def fuse_layers(model: nn.Module) -> int:
    """Swap the model's RMSNorm modules for FusedRMSNorm, in place; returns how many."""
    targets = [(parent, child) for parent in model.modules()
               for child, module in parent.named_children() if type(module) is RMSNorm]
    for parent, child in targets:
        setattr(parent, child, FusedRMSNorm(getattr(parent, child)))
    return len(targets)
