"""`quantization: w8a8`: int8 weights and int8 activations on CPU (oneDNN's int8 matmul).

Weights: one scale per output channel, absmax / 127 (63 without int8 dot products, below;
quantize.quantize_rows), packed once into oneDNN's blocked layout. Activations: quantized as each
matmul runs, one scale per row (token), so a row's result never depends on what it is batched with
(one scale for the whole batch would). oneDNN takes one activation scale per call: it runs with
scale 1 and the row scales multiply its output. Activations go in as u8 with zero point 128
(symmetric int8 shifted), the u8 x s8 form VNNI and AMX multiply. The quantize and rescale passes
are the engine's CPU kernels (csrc/int8_rows.cpp); eager torch ops where those did not build
(correct, slower: the eager ops cost about what the int8 matmul saves, benchmarks/int8_matmul.py).

On a CPU with int8 dot products (AVX-512 VNNI, AVX-VNNI, AMX) the matmul is about 1.9x bf16's
(benchmarks/RESULTS.md). Without them (AVX2 only) oneDNN multiplies with vpmaddubsw, which adds
each pair of u8 x s8 products in 16 bits and saturates: with the zero point at 128 two weights
near 127 side by side already overflow, and the matmul differed from exact integer math by 1-3%
(measured on an AVX2 Zen 3). There the weights are quantized to 7 bits (|q| <= 63, as PyTorch's
`reduce_range`), so that no pair can overflow (2 x 255 x 63 < 32767): the matmul is exact again,
and closer to the float layer than the saturated 8 bits; the engine logs it
(`w8a8.no_int8_dot_products`).
"""

from __future__ import annotations

import structlog
import torch
from torch import nn

from llm_core.device import cpu_flags

log = structlog.get_logger()

ZERO_POINT = 128
INT8_DOT_FLAGS = {"avx512_vnni", "avx_vnni", "amx_int8"}


def cpu_int8_dot() -> bool:
    """Whether this CPU computes int8 dot products in hardware."""
    return bool(INT8_DOT_FLAGS & (cpu_flags() or frozenset()))


def weight_max_q() -> int:
    """The largest |q| of a w8a8 weight on this CPU: 127, or 63 without int8 dot products (above)."""
    return 127 if cpu_int8_dot() else 63


def onednn_int8() -> bool:
    """Whether torch has oneDNN's int8 linear (x86 builds)."""
    ops = getattr(torch.ops, "onednn", None)
    return (torch.backends.mkldnn.is_available() and ops is not None and hasattr(ops, "qlinear_pointwise")
            and hasattr(ops, "qlinear_prepack"))


def quantize_rows_u8_eager(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x [M, K] -> (u8 [M, K], fp32 scales [M, 1]) with x ~= (q - 128) * scale: the kernel's math."""
    scales = x.abs().amax(dim=-1, keepdim=True).float().clamp_(min=1e-12).div_(127.0)
    q = torch.round(x.float() * (1.0 / scales)).clamp_(-127, 127).add_(ZERO_POINT).to(torch.uint8)
    return q, scales


class W8A8Linear(nn.Module):
    """nn.Linear's forward with int8 weights and per-row dynamically quantized int8 activations."""

    def __init__(self, linear: nn.Linear, qweight: torch.Tensor, scales: torch.Tensor, fused: bool):
        """qweight, scales: linear's weight as int8 rows and their scales (quantize.quantize_rows)."""
        super().__init__()
        self.out_features, self.in_features = linear.weight.shape
        self.dtype = linear.weight.dtype
        self.max_q = int(qweight.abs().amax())  # 63 where 7-bit weights keep the sums exact
        self.register_buffer("packed", torch.ops.onednn.qlinear_prepack(qweight, None))
        self.register_buffer("scales", scales.float())
        self.register_buffer("zero_points", torch.zeros(self.out_features, dtype=torch.int64))
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach(), requires_grad=False)
        self.fused = fused  # the CPU kernels built: one pass each for quantize and rescale

    def quantize(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x [M, in] -> (u8 [M, in], fp32 row scales [M, 1]): what matmul_u8 takes."""
        if self.fused:
            return torch.ops.llmbatch.quantize_rows_u8(x)
        return quantize_rows_u8_eager(x)

    def matmul_u8(self, q: torch.Tensor) -> torch.Tensor:
        """The int8 matmul of quantized rows, dequantized by the weight scales only: the row
        scales (and the bias) are still to apply (forward, or a kernel that folds them in)."""
        return torch.ops.onednn.qlinear_pointwise(
            q, 1.0, ZERO_POINT, self.packed, self.scales, self.zero_points, None, 1.0, 0, self.dtype, "none", [], ""
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, row_scales = self.quantize(x.reshape(-1, self.in_features))
        out = self.matmul_u8(q)
        if self.fused:
            torch.ops.llmbatch.scale_rows_(out, row_scales)
        else:
            out = (out.float() * row_scales).to(self.dtype)
        if self.bias is not None:
            out = out + self.bias
        return out.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return (f"in={self.in_features}, out={self.out_features}, w8a8 (oneDNN), |q| <= {self.max_q}, "
                f"fused={self.fused}")
