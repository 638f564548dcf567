"""The HF layout of a native model: unfused weight names and a transformers `config.json`.

The inverse of `loader.to_native_names` and `ModelConfig.from_dict`, so a folder written with
these loads both in transformers (`AutoModelForCausalLM.from_pretrained`) and in `load_model`.
"""

from __future__ import annotations

import torch

from llm_core.models.config import ModelConfig

ARCHITECTURES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "mistral": "MistralForCausalLM"}
# Keys of a source config that the ModelConfig states another way, or that describe the stored
# weights rather than the model (the exporter sets the dtype).
SUPERSEDED = ("rope_parameters", "rope_scaling", "rope_theta", "dtype", "torch_dtype")


def to_hf_names(native: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """Native state dict -> HF keys, q/k/v and gate/up split apart (views: clone before saving).
    A tied lm_head is left out: HF stores it once, as the embedding."""
    out = {"model.embed_tokens.weight": native["embed_tokens.weight"], "model.norm.weight": native["norm.weight"]}
    if not cfg.tie_word_embeddings:
        out["lm_head.weight"] = native["lm_head.weight"]
    q_size, kv_size = cfg.num_attention_heads * cfg.head_dim, cfg.num_key_value_heads * cfg.head_dim
    for i in range(cfg.num_hidden_layers):
        src, dst = f"layers.{i}.", f"model.layers.{i}."
        for norm in ("input_layernorm", "post_attention_layernorm"):
            out[dst + norm + ".weight"] = native[src + norm + ".weight"]
        attn_kinds = ("weight", "bias") if cfg.qkv_bias else ("weight",)
        for kind in attn_kinds:
            q, k, v = native[f"{src}self_attn.qkv_proj.{kind}"].split([q_size, kv_size, kv_size])
            for name, t in zip("qkv", (q, k, v)):
                out[f"{dst}self_attn.{name}_proj.{kind}"] = t
        for kind in ("weight", "bias") if cfg.o_bias else ("weight",):
            out[f"{dst}self_attn.o_proj.{kind}"] = native[f"{src}self_attn.o_proj.{kind}"]
        for kind in ("weight", "bias") if cfg.mlp_bias else ("weight",):
            gate, up = native[f"{src}mlp.gate_up_proj.{kind}"].chunk(2)
            out[f"{dst}mlp.gate_proj.{kind}"], out[f"{dst}mlp.up_proj.{kind}"] = gate, up
            out[f"{dst}mlp.down_proj.{kind}"] = native[f"{src}mlp.down_proj.{kind}"]
    return out


def hf_config_dict(cfg: ModelConfig, extra: dict | None = None) -> dict:
    """A transformers config.json for `cfg`. `extra` (e.g. the config the model was built from)
    contributes what ModelConfig does not hold: bos/pad token ids, chat settings, and so on."""
    if cfg.model_type not in ARCHITECTURES:
        raise ValueError(f"cannot export model_type {cfg.model_type!r}; known: {sorted(ARCHITECTURES)}")
    out = {k: v for k, v in (extra or {}).items() if k not in SUPERSEDED}
    eos = list(cfg.eos_token_ids)
    out.update(
        architectures=[ARCHITECTURES[cfg.model_type]],
        model_type=cfg.model_type,
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_hidden_layers,
        num_attention_heads=cfg.num_attention_heads,
        num_key_value_heads=cfg.num_key_value_heads,
        head_dim=cfg.head_dim,
        hidden_act="silu",
        rms_norm_eps=cfg.rms_norm_eps,
        max_position_embeddings=cfg.max_position_embeddings,
        tie_word_embeddings=cfg.tie_word_embeddings,
        eos_token_id=eos[0] if len(eos) == 1 else (eos or None),
        # The format every transformers version reads (5.x converts it to rope_parameters).
        rope_theta=cfg.rope.theta,
        rope_scaling=_rope_scaling(cfg),
        use_cache=True,
    )
    if cfg.model_type == "qwen2":  # q/k/v biases are implied by the architecture
        out.update(use_sliding_window=cfg.sliding_window is not None, sliding_window=cfg.sliding_window)
    else:
        if cfg.qkv_bias != cfg.o_bias:
            raise ValueError(f"{cfg.model_type} has one attention_bias for q/k/v and o_proj")
        out.update(attention_bias=cfg.qkv_bias, sliding_window=cfg.sliding_window)
    if cfg.model_type == "llama":
        out["mlp_bias"] = cfg.mlp_bias
    return out


def _rope_scaling(cfg: ModelConfig) -> dict | None:
    rope = cfg.rope
    if rope.rope_type == "default":
        return None
    if rope.rope_type == "linear":
        return {"rope_type": "linear", "factor": rope.factor}
    return {
        "rope_type": rope.rope_type, "factor": rope.factor, "low_freq_factor": rope.low_freq_factor,
        "high_freq_factor": rope.high_freq_factor,
        "original_max_position_embeddings": rope.original_max_position_embeddings,
    }
