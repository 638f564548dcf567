"""bf16 linear layers with their weights packed once into oneDNN's blocked layout (CPU).

`F.linear` on a bf16 CPU tensor already runs oneDNN, but reorders the plain [out, in] weight
into the kernel's blocked layout on every call. At decode sizes (a few dozen rows) that reorder
is about a third of the matmul: the packed layer takes 0.19 ms where F.linear takes 0.28 for
SmolLM2's gate/up projection at 64 rows (a micro-benchmark on the AVX-512 / AMX machine of
2026-12-01; the whole engine's gain is in benchmarks/RESULTS.md). The results are the same
oneDNN kernel's, bit for bit (tests/unit/test_packed_linear.py). fp32 is left alone: its F.linear
is MKL's, and switching kernels would change the fp32 outputs that match transformers token
for token.
"""

from __future__ import annotations

import torch
from torch import nn

from llm_core.engine.native.quantize import DECODER_LINEARS


def onednn_bf16() -> bool:
    """Whether oneDNN runs bf16 on this CPU (AVX-512 BW/VL/DQ or AVX-NE-CONVERT). Without it the
    reorder refuses bf16 weights, and F.linear's own fallback runs as before."""
    return (torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")
            and torch.ops.mkldnn._is_mkldnn_bf16_supported())


def can_pack(weight: torch.Tensor) -> bool:
    return weight.device.type == "cpu" and weight.dtype == torch.bfloat16 and onednn_bf16()


@torch.library.custom_op("llmbatch::packed_linear", mutates_args=())
def packed_linear(x: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None, out_features: int) -> torch.Tensor:
    """The packed matmul as one opaque op for torch.compile: inductor's own lowering of
    mkldnn._linear_pointwise accepts only weights it packed itself (freezing)."""
    return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")


@packed_linear.register_fake
def _packed_linear_shape(x, packed, bias, out_features):
    return x.new_empty(x.shape[0], out_features)


class PackedLinear(nn.Module):
    """nn.Linear's forward over a weight packed by oneDNN (`mkldnn._reorder_linear_weight`)."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.out_features, self.in_features = linear.weight.shape
        self.register_buffer("packed", torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach()))
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features)
        if torch.compiler.is_compiling():
            out = packed_linear(flat, self.packed, self.bias, self.out_features)
        else:
            out = torch.ops.mkldnn._linear_pointwise(flat, self.packed, self.bias, "none", [], "")
        return out.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, packed=onednn"


def pack_linears(model: nn.Module) -> int:
    """Replace the decoder's bf16 CPU linear layers and lm_head in place; returns how many. A tied
    lm_head gets its own packed copy (the embedding keeps the plain weight it looks rows up in):
    one more vocab x hidden matrix, for the step's largest matmul."""
    names = DECODER_LINEARS + ("lm_head",)
    targets = [(parent, child) for parent in model.modules() for child, module in parent.named_children()
               if child in names and type(module) is nn.Linear and can_pack(module.weight)]
    with torch.no_grad():
        for parent, child in targets:
            setattr(parent, child, PackedLinear(getattr(parent, child)))
    return len(targets)
