"""W8A8DecoderLayer (llm_core/engine/native/w8a8_layers.py) and the kernels it chains
(csrc/int8_rows.cpp, rotary_qkv's scales): each fused kernel is the ops it replaces bit for bit,
and so is the whole layer, and the model with it."""

from __future__ import annotations

import pytest
import torch

from llm_core.engine.native.cpu_kernels import cpu_kernels_available
from llm_core.engine.native.fused_layers import fuse_layers
from llm_core.engine.native.quantize import quantize_model
from llm_core.engine.native.w8a8_layers import W8A8DecoderLayer, fusable
from llm_core.engine.native.w8a8_linear import onednn_int8
from llm_core.models.attention import PackedCausalAttention
from llm_core.models.config import ModelConfig
from llm_core.models.llama import DecoderLayer, LlamaForCausalLM

pytestmark = pytest.mark.skipif(not (cpu_kernels_available() and onednn_int8()),
                                reason="the CPU kernels or oneDNN's int8 linear are missing here")
ops = torch.ops.llmbatch if hasattr(torch.ops, "llmbatch") else None
DTYPES = [torch.float32, torch.bfloat16]


def rows(n, width, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, width, generator=g) * torch.rand(n, 1, generator=g) * 4
    return x.to(dtype)


def scales_for(n, seed):
    return (torch.rand(n, 1, generator=torch.Generator().manual_seed(seed)) * 0.1 + 1e-3).float()


def equal(a, b):
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [1, 7, 300])  # 300: more rows than one task, several threads share them
def test_rms_norm_u8_is_quantize_of_rms_norm(dtype, n):
    x, w = rows(n, 96 + 5, dtype, 0), rows(1, 96 + 5, dtype, 1)[0]  # + 5: a partial vector at the end
    q, s = ops.rms_norm_u8(x, w, 1e-5)
    q_want, s_want = ops.quantize_rows_u8(ops.rms_norm(x, w, 1e-5))
    assert equal(q, q_want) and equal(s, s_want)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [1, 7, 300])
def test_residual_kernels_are_scale_add_norm_quantize(dtype, n):
    x, y, w, ys = rows(n, 64 + 3, dtype, 2), rows(n, 64 + 3, dtype, 3), rows(1, 64 + 3, dtype, 4)[0], scales_for(n, 5)
    want_x = x + ops.scale_rows_(y.clone(), ys)
    q_want, s_want = ops.quantize_rows_u8(ops.rms_norm(want_x, w, 1e-6))
    got_x = x.clone()
    q, s = ops.add_rms_norm_u8_(got_x, y, ys, w, 1e-6)
    assert equal(got_x, want_x) and equal(q, q_want) and equal(s, s_want)
    got_x = x.clone()
    assert ops.add_scaled_(got_x, y, ys).data_ptr() == got_x.data_ptr() and equal(got_x, want_x)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [1, 7, 300])
def test_silu_mul_u8_is_quantize_of_silu_mul_of_the_rescaled_rows(dtype, n):
    x, xs = rows(n, 2 * (48 + 7), dtype, 6), scales_for(n, 7)
    q, s = ops.silu_mul_u8(x, xs)
    q_want, s_want = ops.quantize_rows_u8(ops.silu_mul(ops.scale_rows_(x.clone(), xs)))
    assert equal(q, q_want) and equal(s, s_want)


@pytest.mark.parametrize("dtype", DTYPES)
def test_rotary_with_scales_is_rotary_of_the_rescaled_rows(dtype):
    tokens, heads, kv_heads, dim = 9, 4, 2, 32
    qkv, xs = rows(tokens, (heads + 2 * kv_heads) * dim, dtype, 8), scales_for(tokens, 9)
    cos, sin = rows(tokens, dim, dtype, 10), rows(tokens, dim, dtype, 11)
    got = ops.rotary_qkv(qkv, cos, sin, heads, kv_heads, xs)
    want = ops.rotary_qkv(ops.scale_rows_(qkv.clone(), xs), cos, sin, heads, kv_heads)
    assert all(equal(a, b) for a, b in zip(got, want))


def test_bad_inputs_are_refused():
    x = rows(4, 16, torch.float32, 0)
    with pytest.raises(RuntimeError, match="one a row"):
        ops.add_scaled_(x, x.clone(), torch.ones(3, 1))
    with pytest.raises(RuntimeError, match="x's shape"):
        ops.add_rms_norm_u8_(x, rows(4, 8, torch.float32, 1), torch.ones(4, 1), torch.ones(16), 1e-6)
    with pytest.raises(RuntimeError, match="w \\[H\\]"):
        ops.rms_norm_u8(x, torch.ones(8), 1e-6)
    with pytest.raises(RuntimeError, match="one a row"):
        ops.silu_mul_u8(x, torch.ones(4, 1, dtype=torch.float64))
    with pytest.raises(RuntimeError, match="one a token"):
        ops.rotary_qkv(rows(4, 64, torch.float32, 2), x[:, :8], x[:, :8], 4, 2, torch.ones(5))


def tiny_model(bias: bool = False) -> LlamaForCausalLM:
    cfg = ModelConfig.from_dict(dict(model_type="qwen2" if bias else "llama", vocab_size=96, hidden_size=64,
                                     intermediate_size=112, num_hidden_layers=3, num_attention_heads=4,
                                     num_key_value_heads=2, max_position_embeddings=64))
    torch.manual_seed(0)
    return LlamaForCausalLM(cfg).eval()


@pytest.mark.parametrize("dtype", DTYPES)
def test_the_w8a8_layer_is_the_module_by_module_layer_bit_for_bit(dtype):
    model, by_module = tiny_model().to(dtype), tiny_model().to(dtype)  # the same seed: the same weights
    with torch.no_grad():
        quantize_model(model, "w8a8")
        quantize_model(by_module, "w8a8")
        fuse_layers(by_module, w8a8_layers=False)
        fuse_layers(model)
        assert all(isinstance(layer, W8A8DecoderLayer) for layer in model.layers)
        assert not any(isinstance(layer, W8A8DecoderLayer) for layer in by_module.layers)
        ids, lens = torch.randint(0, 96, (17,)), [9, 8]  # two prompts packed
        positions = torch.cat([torch.arange(n) for n in lens])
        got = model.compute_logits(model(ids, positions, PackedCausalAttention(lens)))
        want = by_module.compute_logits(by_module(ids, positions, PackedCausalAttention(lens)))
    assert equal(got, want)


def test_layers_with_biases_keep_the_module_by_module_path():
    model = tiny_model(bias=True)
    with torch.no_grad():
        quantize_model(model, "w8a8")
    assert not fusable(model.layers[0])
    fuse_layers(model)
    assert all(type(layer) is DecoderLayer for layer in model.layers)
