"""`quantization: w8a8` (llm_core/engine/native/w8a8_linear.py): int8 weights and per-row int8
activations through oneDNN. A row's output does not depend on its batch, the fused and eager
quantize paths agree, the error stays near weight-only int8's, the int8 matmul is exact integer
math on this CPU (7-bit weights where it has no int8 dot products), and every projection and the
output head (tied too) are replaced."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from llm_core.engine.native.cpu_kernels import cpu_kernels_available
from llm_core.engine.native.quantize import quantize_model, quantize_rows
from llm_core.engine.native.w8a8_linear import W8A8Linear, onednn_int8, quantize_rows_u8_eager, weight_max_q
from llm_core.models.attention import PackedCausalAttention
from llm_core.models.config import ModelConfig
from llm_core.models.llama import LlamaForCausalLM

pytestmark = pytest.mark.skipif(not onednn_int8(), reason="no oneDNN int8 linear in this torch build")


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got.float() - want.float()).norm() / want.float().norm())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rows_are_independent_of_their_batch_and_close_to_the_float_layer(dtype):
    torch.manual_seed(0)
    linear = nn.Linear(256, 96, bias=True).to(dtype)
    x = torch.randn(33, 256).to(dtype)
    x[5] *= 40  # one loud row: with one scale for the batch, the quiet rows would lose precision
    layer = W8A8Linear(linear, *quantize_rows(linear.weight, weight_max_q()), fused=cpu_kernels_available())
    with torch.no_grad():
        batched = layer(x)
        alone = torch.cat([layer(x[i:i + 1]) for i in range(33)])
        want = linear(x)
    assert batched.dtype == dtype and batched.shape == (33, 96)
    torch.testing.assert_close(batched, alone, rtol=0, atol=0)
    assert relative_error(batched, want) < 0.02
    for i in (0, 5, 32):  # each row, loud or quiet, keeps its own precision
        assert relative_error(batched[i], want[i]) < 0.03


@pytest.mark.skipif(not cpu_kernels_available(), reason="the CPU kernels did not build here")
def test_fused_and_eager_quantization_agree():
    torch.manual_seed(1)
    linear = nn.Linear(128, 64, bias=False).to(torch.bfloat16)
    x = torch.randn(2, 9, 128).to(torch.bfloat16)  # leading dimensions kept
    with torch.no_grad():
        q, scales = quantize_rows(linear.weight, weight_max_q())
        fused, eager = W8A8Linear(linear, q, scales, fused=True)(x), W8A8Linear(linear, q, scales, fused=False)(x)
    assert fused.shape == (2, 9, 64)
    assert relative_error(fused, eager) < 5e-3  # ties rounded the other way, bf16 rounding twice


def test_the_int8_matmul_is_exact_integer_math_on_this_cpu():
    """Without VNNI / AMX, oneDNN adds u8 x s8 pairs in 16 bits; 8-bit weights overflowed them (1-3%
    off exact math on an AVX2 Zen 3). The weight range this CPU gets must keep every sum exact, also
    for loud activations and the largest weights side by side."""
    torch.manual_seed(2)
    linear = nn.Linear(576, 192, bias=False)
    linear.weight.data[:, :64] = linear.weight.data[:, :64].sign() * linear.weight.data.abs().amax()  # max pairs
    layer = W8A8Linear(linear, *quantize_rows(linear.weight, weight_max_q()), fused=False)
    x = torch.randn(48, 576)
    x[:, :64] = x[:, :64].abs() * 50  # activations near 255 meet the largest weights
    q, _ = quantize_rows_u8_eager(x)
    qweight, scales = quantize_rows(linear.weight, weight_max_q())
    exact = ((q.long() - 128) @ qweight.long().T).double() * scales.double()
    with torch.no_grad():
        got = layer.matmul_u8(q).double()
    torch.testing.assert_close(got, exact, rtol=1e-5, atol=1e-5 * float(exact.abs().max()))


@pytest.mark.parametrize("int8_dot, max_q", [(True, 127), (False, 63)])
def test_weights_take_7_bits_where_the_cpu_has_no_int8_dot_products(monkeypatch, int8_dot, max_q):
    from llm_core.engine.native import w8a8_linear

    monkeypatch.setattr(w8a8_linear, "cpu_int8_dot", lambda: int8_dot)
    model = LlamaForCausalLM(ModelConfig.from_dict(dict(
        model_type="llama", vocab_size=32, hidden_size=32, intermediate_size=48, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=1)))
    quantize_model(model, "w8a8")
    assert {m.max_q for m in model.modules() if isinstance(m, W8A8Linear)} == {max_q}


def test_quantize_model_replaces_every_projection_and_the_tied_head():
    cfg = ModelConfig.from_dict(dict(model_type="llama", vocab_size=96, hidden_size=64, intermediate_size=112,
                                     num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                     max_position_embeddings=64, tie_word_embeddings=True))
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).eval()
    ids = torch.randint(0, 96, (12,))
    with torch.no_grad():
        want = model.compute_logits(model(ids, torch.arange(12), PackedCausalAttention([12])))
        assert quantize_model(model, "w8a8") == 2 * 4 + 1
        assert isinstance(model.lm_head, W8A8Linear)
        assert model.embed_tokens.weight.dtype == torch.float32  # the embedding keeps its own weights
        got = model.compute_logits(model(ids, torch.arange(12), PackedCausalAttention([12])))
    assert relative_error(got, want) < 0.05


def test_w8a8_is_refused_off_the_cpu(monkeypatch):
    from llm_core.engine.native import w8a8_linear

    monkeypatch.setattr(w8a8_linear, "onednn_int8", lambda: False)
    model = LlamaForCausalLM(ModelConfig.from_dict(dict(
        model_type="llama", vocab_size=16, hidden_size=32, intermediate_size=48, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=1)))
    with pytest.raises(ValueError, match="w8a8 runs on CPUs"):
        quantize_model(model, "w8a8")


def test_engine_generates_with_w8a8_and_fused_layers(tiny_dir):
    from llm_core.engine.native import NativeEngine
    from llm_core.engine.native.fused_layers import FusedRMSNorm
    from llm_core.engine.sampling import SamplingParams

    params = SamplingParams(max_new_tokens=6, ignore_eos=True)
    prompts = [[5, 6, 7, 8], [9, 10, 11], [5, 6, 7, 8, 12]]
    reference = NativeEngine(tiny_dir, device="cpu", dtype="bfloat16", cpu_kernels=False).generate(prompts, params)
    engine = NativeEngine(tiny_dir, device="cpu", dtype="bfloat16", quantization="w8a8")
    assert engine.quantization == "w8a8" and isinstance(engine.model.lm_head, W8A8Linear)
    if cpu_kernels_available():
        assert isinstance(engine.model.norm, FusedRMSNorm)
    out = engine.generate(prompts, params)
    assert [len(c[0].token_ids) for c in out] == [6, 6, 6]
    assert sum(a[0].token_ids[0] == b[0].token_ids[0] for a, b in zip(reference, out)) >= 2
