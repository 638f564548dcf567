"""The native Llama-family decoder matches transformers' implementation (fp32 logits within
1e-4) on tiny random configs of every supported architecture, loaded from real HF folders."""

from __future__ import annotations

import pytest
import torch

from llm_core.models import is_supported, load_model
from llm_core.models.attention import PackedCausalAttention
from llm_core.models.config import ModelConfig

TINY = dict(
    vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, rms_norm_eps=1e-5,
)

ARCHS = {
    "llama3-rope-untied": ("llama", dict(
        tie_word_embeddings=False,
        rope_parameters=dict(rope_type="llama3", rope_theta=500000.0, factor=8.0, low_freq_factor=1.0,
                             high_freq_factor=4.0, original_max_position_embeddings=64),
    )),
    "llama-tied-bias-headdim": ("llama", dict(
        tie_word_embeddings=True, attention_bias=True, mlp_bias=True, head_dim=32,
    )),
    "qwen2-bias-tied": ("qwen2", dict(tie_word_embeddings=True, rope_theta=1e6)),
    "mistral-untied": ("mistral", dict(tie_word_embeddings=False, sliding_window=None)),
}


def save_hf_model(tmp_path, model_type: str, extra: dict, shard: str | None = None):
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model(model_type, **TINY, **extra)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():  # random biases and norms, so a skipped one would show in the logits
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name:
                p.normal_(0, 0.5)
    kwargs = {"max_shard_size": shard} if shard else {}
    model.save_pretrained(tmp_path, **kwargs)
    return model


def native_logits(model, ids: list[list[int]]) -> list[torch.Tensor]:
    flat = torch.tensor([t for seq in ids for t in seq])
    positions = torch.cat([torch.arange(len(seq)) for seq in ids])
    with torch.inference_mode():
        hidden = model(flat, positions, PackedCausalAttention([len(s) for s in ids]))
        return list(model.compute_logits(hidden).split([len(s) for s in ids]))


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_logits_match_transformers(tmp_path, arch):
    model_type, extra = ARCHS[arch]
    hf = save_hf_model(tmp_path, model_type, extra)
    native, cfg = load_model(tmp_path, "cpu", "float32")
    gen = torch.Generator().manual_seed(1)
    # Two sequences packed together (long enough to reach the Llama-3 scaled wavelengths).
    seqs = [torch.randint(0, 256, (n,), generator=gen).tolist() for n in (200, 37)]
    for seq, got in zip(seqs, native_logits(native, seqs)):
        with torch.inference_mode():
            want = hf(torch.tensor([seq])).logits[0]
        assert (got - want).abs().max().item() < 1e-4


def test_sharded_folder_with_index_loads(tmp_path):
    hf = save_hf_model(tmp_path, "llama", dict(tie_word_embeddings=False), shard="40KB")
    assert (tmp_path / "model.safetensors.index.json").exists()
    assert len(list(tmp_path.glob("*.safetensors"))) > 1
    native, _ = load_model(tmp_path, "cpu", "float32")
    seq = list(range(3, 60))
    with torch.inference_mode():
        want = hf(torch.tensor([seq])).logits[0]
    assert (native_logits(native, [seq])[0] - want).abs().max().item() < 1e-4


def test_tied_embeddings_share_one_tensor(tmp_path):
    save_hf_model(tmp_path, "qwen2", dict(tie_word_embeddings=True))
    native, cfg = load_model(tmp_path, "cpu", "float32")
    assert cfg.tie_word_embeddings and cfg.qkv_bias and not cfg.o_bias
    assert native.lm_head.weight.data_ptr() == native.embed_tokens.weight.data_ptr()


def test_bfloat16_load_is_close_to_fp32(tmp_path):
    save_hf_model(tmp_path, "llama", dict(tie_word_embeddings=True))
    fp32, _ = load_model(tmp_path, "cpu", "float32")
    bf16, _ = load_model(tmp_path, "cpu", "bfloat16")
    assert bf16.embed_tokens.weight.dtype == torch.bfloat16
    assert bf16.rotary.inv_freq.dtype == torch.float32
    seq = [list(range(1, 40))]
    diff = (native_logits(bf16, seq)[0].float() - native_logits(fp32, seq)[0]).abs().max().item()
    assert diff < 0.1


def test_old_rope_scaling_format_is_read():
    legacy = dict(model_type="llama", **TINY, rope_theta=500000.0,
                  rope_scaling=dict(type="llama3", factor=32.0, low_freq_factor=1.0,
                                    high_freq_factor=4.0, original_max_position_embeddings=8192))
    rope = ModelConfig.from_dict(legacy).rope
    assert (rope.theta, rope.rope_type, rope.factor) == (500000.0, "llama3", 32.0)


def test_supported_architectures():
    assert is_supported(dict(model_type="llama"))
    assert is_supported(dict(model_type="qwen2"))
    assert is_supported(dict(model_type="mistral"))
    assert not is_supported(dict(model_type="gpt2"))
    assert not is_supported(dict(model_type="llama", rope_parameters=dict(rope_type="yarn")))
    assert not is_supported(dict(model_type="qwen2", use_sliding_window=True))


def test_eos_list_and_default_head_dim():
    cfg = ModelConfig.from_dict(dict(model_type="llama", **TINY, eos_token_id=[5, 7]))
    assert cfg.eos_token_ids == (5, 7)
    assert cfg.head_dim == TINY["hidden_size"] // TINY["num_attention_heads"]
