"""int8 quantization of the native decoder's linear layers: `int8` (weight-only, here) and `w8a8`
(int8 weights and activations on CPU, w8a8_linear.py).

Each output channel (row) of a weight gets one scale, absmax / 127; weights are stored as int8,
a quarter of fp32's memory, half of bf16's. Activations keep the model's dtype: no calibration,
and the only error is the weights' rounding.

The matmul: `aten._weight_int8pack_mm` (int8 weights, per-channel scales, bf16/fp16 activations)
on CPU. Its bf16 kernel in torch 2.13 computes wrong results or crashes unless the input size is
a multiple of 16, and its fp32 kernel is many times slower than dequantizing; those layers, and
every other device, dequantize the weight for each matmul instead (correct, memory-saving, slower).
"""

from __future__ import annotations

import structlog
import torch
import torch.nn.functional as F
from torch import nn

log = structlog.get_logger()

QUANTIZATIONS = ("none", "int8", "w8a8")
# Layers quantized: the decoder's projections; lm_head too unless tied or left out.
DECODER_LINEARS = ("qkv_proj", "o_proj", "gate_up_proj", "down_proj")


def quantize_rows(weight: torch.Tensor, max_q: int = 127) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-row int8: (int8 weight [N, K] in [-max_q, max_q], fp32 scales [N]) with
    weight ~= q * scale."""
    w = weight.detach().float()
    scales = w.abs().amax(dim=1).clamp(min=1e-12) / float(max_q)
    q = torch.round(w / scales[:, None]).clamp(-max_q, max_q).to(torch.int8)
    return q, scales


def pick_kernel(device: torch.device, dtype: torch.dtype, in_features: int) -> str:
    """'int8pack' where torch's int8 weight kernel is right and fast, else 'dequant'."""
    if device.type != "cpu" or not hasattr(torch.ops.aten, "_weight_int8pack_mm"):
        return "dequant"
    if dtype == torch.float16 or (dtype == torch.bfloat16 and in_features % 16 == 0):
        return "int8pack"
    return "dequant"


class Int8Linear(nn.Module):
    """nn.Linear's forward over an int8 weight with per-output-channel scales."""

    def __init__(self, qweight: torch.Tensor, scales: torch.Tensor, bias: torch.Tensor | None, dtype: torch.dtype):
        super().__init__()
        self.out_features, self.in_features = qweight.shape
        self.register_buffer("qweight", qweight)
        self.register_buffer("scales", scales.to(dtype))
        self.bias = None if bias is None else nn.Parameter(bias.detach().to(dtype), requires_grad=False)
        self.kernel = pick_kernel(qweight.device, dtype, self.in_features)

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> Int8Linear:
        q, scales = quantize_rows(linear.weight)
        return cls(q, scales, linear.bias, linear.weight.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features)
        if self.kernel == "int8pack":
            out = torch.ops.aten._weight_int8pack_mm(flat.contiguous(), self.qweight, self.scales)
            if self.bias is not None:
                out = out + self.bias
        else:
            weight = self.qweight.to(x.dtype) * self.scales[:, None]
            out = F.linear(flat, weight, self.bias)
        return out.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, kernel={self.kernel}"


def quantize_model(model: nn.Module, method: str = "int8", lm_head: bool | None = None,
                   calibration_ids: list[int] | None = None) -> int:
    """Replace the model's linear layers in place; returns how many were replaced. `none` does nothing.

    lm_head: None quantizes it only when it is not tied to the input embeddings: a tied one would
    gain an int8 copy beside the embeddings it shares (more memory, and no faster on the CPU).
    calibration_ids: w8a8 only, the tokens of smoothing.CALIBRATION_TEXT: SmoothQuant first."""
    if method not in QUANTIZATIONS:
        raise ValueError(f"quantization {method!r} is not supported (one of: {', '.join(QUANTIZATIONS)})")
    if method == "none":
        return 0
    if method == "w8a8":
        if calibration_ids:
            from llm_core.engine.native.smoothing import smooth_model

            smooth_model(model, calibration_ids)
        return _quantize_w8a8(model)
    if lm_head is None:
        head, embed = getattr(model, "lm_head", None), getattr(model, "embed_tokens", None)
        lm_head = not (head is not None and embed is not None and head.weight is embed.weight)
    names = DECODER_LINEARS + (("lm_head",) if lm_head else ())
    targets = [(parent, child) for parent in model.modules() for child, module in parent.named_children()
               if child in names and isinstance(module, nn.Linear)]
    with torch.no_grad():
        for parent, child in targets:
            setattr(parent, child, Int8Linear.from_linear(getattr(parent, child)))
    return len(targets)


def _quantize_w8a8(model: nn.Module) -> int:
    """Every projection and the output head, tied or not (a tied head gets its own int8 copy, 28 MB
    on the built-in model: it is the step's largest matmul)."""
    from llm_core.engine.native.cpu_kernels import cpu_kernels_available
    from llm_core.engine.native.w8a8_linear import W8A8Linear, onednn_int8, weight_max_q

    head = getattr(model, "lm_head", None)
    if (head is not None and head.weight.device.type != "cpu") or not onednn_int8():
        raise ValueError("quantization: w8a8 runs on CPUs with oneDNN's int8 matmul (x86 torch builds); "
                         "use int8 (weight-only) elsewhere")
    max_q = weight_max_q()
    if max_q < 127:  # no int8 dot products on this CPU (weight_max_q)
        log.warning("w8a8.no_int8_dot_products", weight_bits=max_q.bit_length() + 1,
                    detail="this CPU has no VNNI / AMX: weights are quantized to 7 bits so that oneDNN's 16-bit "
                           "pair sums cannot saturate, and it may be slower than bf16 or fp32")
    fused = cpu_kernels_available()
    names = DECODER_LINEARS + ("lm_head",)
    targets = [(parent, child) for parent in model.modules() for child, module in parent.named_children()
               if child in names and isinstance(module, nn.Linear)]
    with torch.no_grad():
        for parent, child in targets:
            linear = getattr(parent, child)
            setattr(parent, child, W8A8Linear(linear, *quantize_rows(linear.weight, max_q), fused=fused))
    return len(targets)


def weight_bytes(model: nn.Module) -> int:
    """Bytes of the model's parameters and buffers (a tied weight counted once)."""
    seen, total = set(), 0
    for t in [*model.parameters(), *model.buffers()]:
        key = t.data_ptr() if t.layout == torch.strided else id(t)  # oneDNN-packed: no storage pointer
        if key not in seen:
            seen.add(key)
            total += t.numel() * t.element_size()
    return total
