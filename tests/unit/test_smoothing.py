"""SmoothQuant before w8a8 (llm_core/engine/native/smoothing.py): the folded factors leave the float
model's outputs unchanged, and with an outlier activation channel they cut W8A8's error."""

from __future__ import annotations

import pytest
import torch

from llm_core.engine.native.quantize import quantize_model
from llm_core.engine.native.smoothing import activation_maxima, smooth_model
from llm_core.engine.native.w8a8_linear import onednn_int8
from llm_core.models.attention import PackedCausalAttention
from llm_core.models.config import ModelConfig
from llm_core.models.llama import LlamaForCausalLM

CALIBRATION = list(range(3, 60))


def tiny_model(bias: bool, seed: int = 0) -> LlamaForCausalLM:
    cfg = ModelConfig.from_dict(dict(model_type="qwen2" if bias else "llama", vocab_size=96, hidden_size=64,
                                     intermediate_size=112, num_hidden_layers=2, num_attention_heads=4,
                                     num_key_value_heads=2, max_position_embeddings=128, tie_word_embeddings=True))
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(0, 0.1)
            elif "norm" in name:
                p.uniform_(0.5, 1.5)
    return model


def logits(model, ids):
    with torch.no_grad():
        return model.compute_logits(model(ids, torch.arange(len(ids)), PackedCausalAttention([len(ids)])))


def with_outlier_channel(model: LlamaForCausalLM) -> LlamaForCausalLM:
    """Hidden channel 7 of every norm's output 30x larger (as real LLMs' outlier channels are),
    the projections reading it 30x smaller: the same function, hard for per-row int8 activations."""
    with torch.no_grad():
        for layer in model.layers:
            for norm, linear in ((layer.input_layernorm, layer.self_attn.qkv_proj),
                                 (layer.post_attention_layernorm, layer.mlp.gate_up_proj)):
                norm.weight[7] *= 30
                linear.weight[:, 7] /= 30
    return model


@pytest.mark.parametrize("bias", [False, True])
def test_smoothing_leaves_the_float_model_unchanged(bias):
    model = with_outlier_channel(tiny_model(bias))
    ids = torch.randint(0, 96, (20,))
    before = logits(model, ids)
    qkv = model.layers[0].self_attn.qkv_proj.weight.clone()
    assert smooth_model(model, CALIBRATION) == 2
    assert not torch.equal(model.layers[0].self_attn.qkv_proj.weight, qkv)  # it did move something
    torch.testing.assert_close(logits(model, ids), before, rtol=1e-4, atol=1e-4)
    # The outlier channel is evened out: the qkv input's largest channel is now near the others.
    maxima = activation_maxima(model, CALIBRATION)[model.layers[0].self_attn.qkv_proj]
    assert float(maxima.max() / maxima.median()) < 10


@pytest.mark.skipif(not onednn_int8(), reason="no oneDNN int8 linear in this torch build")
def test_smoothing_cuts_w8a8_error_on_outlier_channels():
    ids = torch.randint(0, 96, (24,))
    want = logits(with_outlier_channel(tiny_model(False)), ids)
    errors = {}
    for smooth in (False, True):
        model = with_outlier_channel(tiny_model(False))
        quantize_model(model, "w8a8", calibration_ids=CALIBRATION if smooth else None)
        got = logits(model, ids)
        errors[smooth] = float((got - want).norm() / want.norm())
    assert errors[True] < errors[False] / 2, errors


@pytest.mark.skipif(not onednn_int8(), reason="no oneDNN int8 linear in this torch build")
def test_the_engine_smooths_at_load_and_rows_stay_independent(tmp_path):
    from llm_core.engine.native import NativeEngine
    from llm_core.engine.sampling import SamplingParams
    from tests.support.native_engine import make_folder

    make_folder(tmp_path)  # 512 positions; the built-in model's calibration text is 295 tokens
    engine = NativeEngine(tmp_path, device="cpu", dtype="bfloat16", quantization="w8a8")
    prompts = [[5, 9, 33, 7], [100, 3], [8] * 11]
    params = SamplingParams(max_new_tokens=6, ignore_eos=True)
    batched = [c[0].token_ids for c in engine.generate(prompts, params)]
    alone = [engine.generate([p], params)[0][0].token_ids for p in prompts]
    assert batched == alone and all(len(t) == 6 for t in batched)
