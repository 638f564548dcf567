"""A decoder layer whose projections are all W8A8 (w8a8_linear.py), as one chain of CPU kernels.

Module by module, each W8A8 projection quantizes its input and rescales its output in passes of
their own, between the norms, RoPE, SiLU-multiply and residual adds: 19 ops a layer. Here the
rescale of a matmul's output is folded into the step that reads it and the quantization of a
matmul's input into the step that writes it (csrc/int8_rows.cpp, csrc/fused_elementwise.cpp):

  rms_norm_u8 -> qkv matmul -> rotary_qkv(scales) -> attention -> quantize -> o matmul
  -> add_rms_norm_u8_ (residual + post-attention norm) -> gate_up matmul -> silu_mul_u8
  -> down matmul -> add_scaled_ (residual)

11 ops, and fewer passes over the activations. Each kernel rounds where the ops it replaces
round: the layer's output is the module-by-module W8A8 layer's bit for bit (tested). The
residual stream is updated in place. Projections with a bias (Qwen2's q/k/v) keep the
module-by-module layer, as does a model compiled with torch.compile (compiled_decode.py reads
the modules).
"""

from __future__ import annotations

import torch
from torch import nn

from llm_core.engine.native.w8a8_linear import W8A8Linear
from llm_core.models.attention import AttentionBackend
from llm_core.models.llama import DecoderLayer


def fusable(layer: DecoderLayer) -> bool:
    """Whether every projection of the layer is a W8A8Linear on the kernels, without a bias."""
    projections = (layer.self_attn.qkv_proj, layer.self_attn.o_proj, layer.mlp.gate_up_proj, layer.mlp.down_proj)
    return all(isinstance(p, W8A8Linear) and p.fused and p.bias is None for p in projections)


class W8A8DecoderLayer(nn.Module):
    def __init__(self, layer: DecoderLayer):
        super().__init__()
        attn, mlp = layer.self_attn, layer.mlp
        self.qkv_proj, self.o_proj = attn.qkv_proj, attn.o_proj
        self.gate_up_proj, self.down_proj = mlp.gate_up_proj, mlp.down_proj
        self.input_norm, self.input_eps = layer.input_layernorm.weight, layer.input_layernorm.eps
        self.post_norm, self.post_eps = layer.post_attention_layernorm.weight, layer.post_attention_layernorm.eps
        self.layer, self.heads, self.kv_heads, self.q_size = attn.layer, attn.heads, attn.kv_heads, attn.q_size

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, backend: AttentionBackend) -> torch.Tensor:
        """x [tokens, hidden], the residual stream: updated in place and returned."""
        ops = torch.ops.llmbatch
        x = x.contiguous()
        q8, scales = ops.rms_norm_u8(x, self.input_norm, self.input_eps)
        q, k, v = ops.rotary_qkv(self.qkv_proj.matmul_u8(q8), cos, sin, self.heads, self.kv_heads, scales)
        out = backend.attend(self.layer, q, k, v)
        q8, scales = self.o_proj.quantize(out.reshape(-1, self.q_size))
        q8, scales = ops.add_rms_norm_u8_(x, self.o_proj.matmul_u8(q8), scales, self.post_norm, self.post_eps)
        q8, scales = ops.silu_mul_u8(self.gate_up_proj.matmul_u8(q8), scales)
        return ops.add_scaled_(x, self.down_proj.matmul_u8(q8), scales)
