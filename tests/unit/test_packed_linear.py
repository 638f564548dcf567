"""The native engine's packed bf16 linear layers (llm_core/engine/native/packed_linear.py): the same
results as nn.Linear, bit for bit, at every row count, and only bf16 CPU layers are packed."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from llm_core.engine.native.packed_linear import PackedLinear, can_pack, pack_linears
from llm_core.engine.native.quantize import weight_bytes
from llm_core.models.config import ModelConfig
from llm_core.models.llama import LlamaForCausalLM
from llm_core.models.training import init_weights

TINY = dict(vocab_size=96, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=64)

needs_onednn_bf16 = pytest.mark.skipif(not can_pack(torch.zeros(1, dtype=torch.bfloat16)),
                                       reason="oneDNN has no bf16 on this CPU (AVX2 only) or in this torch")


@needs_onednn_bf16
@pytest.mark.parametrize("bias", [False, True])
def test_packed_linear_matches_nn_linear_exactly(bias):
    torch.manual_seed(0)
    linear = nn.Linear(96, 160, bias=bias).to(torch.bfloat16)
    packed = PackedLinear(linear)
    with torch.no_grad():
        for rows in (1, 7, 64, 300):
            x = torch.randn(rows, 96, dtype=torch.bfloat16)
            assert torch.equal(packed(x), linear(x)), rows
        x3 = torch.randn(2, 5, 96, dtype=torch.bfloat16)  # leading dims kept
        assert torch.equal(packed(x3), linear(x3))


def tiny_model(dtype: torch.dtype) -> LlamaForCausalLM:
    cfg = ModelConfig.from_dict(dict(TINY, model_type="llama", tie_word_embeddings=True))
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg)
    init_weights(model, std=0.2)
    return model.to(dtype).eval()


@needs_onednn_bf16
def test_pack_linears_replaces_bf16_layers_and_keeps_the_model_s_outputs():
    model = tiny_model(torch.bfloat16)
    hidden = torch.randn(5, 32, dtype=torch.bfloat16)
    with torch.no_grad():
        before = model.compute_logits(hidden)
        assert pack_linears(model) == 2 * 4 + 1  # 4 projections a layer, and the (tied) lm_head
        assert torch.equal(model.compute_logits(hidden), before)
    assert isinstance(model.layers[0].mlp.down_proj, PackedLinear)
    assert weight_bytes(model) > 0  # packed weights have no storage pointer: counted all the same
    assert type(model.embed_tokens) is nn.Embedding  # the lookup keeps the plain weight


def test_fp32_layers_are_left_alone():
    model = tiny_model(torch.float32)  # fp32 keeps MKL's F.linear: outputs match transformers
    assert pack_linears(model) == 0


def test_a_cpu_without_onednn_bf16_keeps_plain_layers(monkeypatch):
    # an AVX2-only CPU: oneDNN refuses to reorder bf16 weights, so nothing is packed and bf16 runs
    # F.linear's own path (emulated) instead of failing at load
    monkeypatch.setattr("llm_core.engine.native.packed_linear.onednn_bf16", lambda: False)
    model = tiny_model(torch.bfloat16)
    assert pack_linears(model) == 0
    with torch.no_grad():
        assert model.compute_logits(torch.randn(2, 32, dtype=torch.bfloat16)).shape == (2, 96)
