"""int8 weight-only quantization (llm_core/engine/native/quantize.py): the rounding, both matmul
kernels against a dequantized reference, a tiny model's logits next to fp32, and how the engine
choice refuses what it cannot quantize."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from llm_core.engine.native import NativeEngine
from llm_core.engine.native.quantize import Int8Linear, pick_kernel, quantize_model, quantize_rows, weight_bytes
from llm_core.engine.sampling import SamplingParams
from llm_core.engine.select import load_engine
from llm_core.models import load_model
from llm_core.models.attention import PackedCausalAttention

HAS_INT8PACK = hasattr(torch.ops.aten, "_weight_int8pack_mm")


def test_rows_round_within_half_a_step():
    w = torch.randn(32, 48) * torch.linspace(0.01, 3, 32)[:, None]  # rows of very different ranges
    q, scales = quantize_rows(w)
    assert q.dtype == torch.int8 and scales.shape == (32,)
    assert q.abs().max() <= 127
    assert ((q.float() * scales[:, None] - w).abs() <= scales[:, None] / 2 + 1e-6).all()
    assert torch.equal(q.abs().amax(dim=1), torch.full((32,), 127, dtype=torch.int8))  # each row's range used


def test_kernel_choice():
    cpu = torch.device("cpu")
    assert pick_kernel(cpu, torch.float32, 64) == "dequant"  # the fp32 int8 kernel is slower than dequant
    assert pick_kernel(torch.device("cuda"), torch.bfloat16, 64) == "dequant"
    if HAS_INT8PACK:
        assert pick_kernel(cpu, torch.bfloat16, 64) == "int8pack"
        assert pick_kernel(cpu, torch.bfloat16, 40) == "dequant"  # torch's bf16 kernel breaks off multiples of 16
        assert pick_kernel(cpu, torch.float16, 40) == "int8pack"


@pytest.mark.parametrize("dtype,in_features", [(torch.float32, 40), (torch.bfloat16, 64), (torch.bfloat16, 40),
                                               (torch.float16, 48)])
def test_int8_linear_matches_the_dequantized_weight(dtype, in_features):
    torch.manual_seed(0)
    linear = nn.Linear(in_features, 24, bias=True).to(dtype)
    q = Int8Linear.from_linear(linear)
    x = torch.randn(3, 5, in_features, dtype=dtype)  # any leading shape, like nn.Linear
    ref = F.linear(x.float(), q.qweight.float() * q.scales.float()[:, None], linear.bias.float())
    out = q(x)
    assert out.shape == (3, 5, 24) and out.dtype == dtype
    tol = 1e-5 if dtype == torch.float32 else 3e-2
    assert (out.float() - ref).abs().max() <= tol * ref.abs().max()


def _logits(model, ids: list[int]) -> torch.Tensor:
    with torch.inference_mode():
        hidden = model(torch.tensor(ids), torch.arange(len(ids)), PackedCausalAttention([len(ids)]))
        return model.compute_logits(hidden).float()


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("lm_head", [True, False])
def test_tiny_model_logits_stay_close_to_fp32(tiny_dir, dtype, lm_head):
    reference, cfg = load_model(tiny_dir, "cpu", "float32")
    model, _ = load_model(tiny_dir, "cpu", dtype)
    replaced = quantize_model(model, "int8", lm_head=lm_head)
    assert replaced == 4 * cfg.num_hidden_layers + lm_head
    assert all(not isinstance(m, nn.Linear) for n, m in model.named_modules() if n.endswith("proj"))
    ids = torch.randint(3, cfg.vocab_size, (40,), generator=torch.Generator().manual_seed(0)).tolist()
    ref, got = _logits(reference, ids), _logits(model, ids)
    cosine = F.cosine_similarity(ref, got, dim=-1)
    assert cosine.min() > 0.99, cosine.min()
    # A random model's logits are nearly flat, so its argmax is fragile: most still agree.
    assert (ref.argmax(-1) == got.argmax(-1)).float().mean() >= 0.75


def test_quantized_weights_take_less_memory(tiny_dir):
    model, _ = load_model(tiny_dir, "cpu", "float32")
    before = weight_bytes(model)
    quantize_model(model, "int8")
    assert weight_bytes(model) < 0.45 * before  # embeddings stay fp32; every projection is 1/4


def test_engine_generates_with_int8(tiny_dir):
    params = SamplingParams(max_new_tokens=6, ignore_eos=True)
    prompts = [[5, 6, 7, 8], [9, 10, 11]]
    fp = NativeEngine(tiny_dir, device="cpu", dtype="float32").generate(prompts, params)
    engine = NativeEngine(tiny_dir, device="cpu", dtype="float32", quantization="int8")
    assert engine.quantization == "int8" and isinstance(engine.model.lm_head, Int8Linear)
    out = engine.generate(prompts, params)
    assert [len(c[0].token_ids) for c in out] == [6, 6]
    first_tokens_agree = sum(a[0].token_ids[0] == b[0].token_ids[0] for a, b in zip(fp, out))
    assert first_tokens_agree >= 1


def test_quantization_is_refused_where_it_cannot_run(tiny_dir):
    with pytest.raises(ValueError, match="engine: hf runs unquantized"):
        load_engine(tiny_dir, "hf", device="cpu", quantization="int8")
    with pytest.raises(ValueError, match=r"quantization 'fp8' is not supported \(one of: none, int8, w8a8\)"):
        load_engine(tiny_dir, "native", device="cpu", quantization="fp8")
    with pytest.raises(ValueError, match="not supported"):
        quantize_model(nn.Linear(4, 4), "int4")


def test_a_tied_lm_head_stays_shared_unless_asked(tiny_dir):
    model, cfg = load_model(tiny_dir, "cpu", "float32")
    model.lm_head.weight = model.embed_tokens.weight  # tied, as in SmolLM2 and Qwen2.5-0.5B
    assert quantize_model(model, "int8") == 4 * cfg.num_hidden_layers
    assert model.lm_head.weight is model.embed_tokens.weight
    assert isinstance(model.layers[0].mlp.down_proj, Int8Linear)
