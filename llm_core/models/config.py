"""Model configuration read from an HF `config.json` (Llama, Qwen2, Mistral; SmolLM is Llama)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

SUPPORTED_MODEL_TYPES = ("llama", "qwen2", "mistral")
SUPPORTED_ROPE_TYPES = ("default", "llama3", "linear")


@dataclass(frozen=True)
class RopeConfig:
    theta: float = 10000.0
    rope_type: str = "default"
    factor: float = 1.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192


@dataclass(frozen=True)
class ModelConfig:
    model_type: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    rms_norm_eps: float
    max_position_embeddings: int
    tie_word_embeddings: bool
    qkv_bias: bool
    o_bias: bool
    mlp_bias: bool
    rope: RopeConfig = field(default_factory=RopeConfig)
    eos_token_ids: tuple[int, ...] = ()
    sliding_window: int | None = None

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        model_type = d.get("model_type", "")
        heads = d["num_attention_heads"]
        attention_bias = bool(d.get("attention_bias", False))
        # Qwen2 always has q/k/v biases and never an o_proj bias, whatever the config says.
        qkv_bias = True if model_type == "qwen2" else attention_bias
        o_bias = False if model_type == "qwen2" else attention_bias
        eos = d.get("eos_token_id")
        eos_ids = tuple(eos) if isinstance(eos, list) else (() if eos is None else (int(eos),))
        window = d.get("sliding_window") if _uses_sliding_window(d) else None
        return cls(
            model_type=model_type,
            vocab_size=d["vocab_size"],
            hidden_size=d["hidden_size"],
            intermediate_size=d["intermediate_size"],
            num_hidden_layers=d["num_hidden_layers"],
            num_attention_heads=heads,
            num_key_value_heads=d.get("num_key_value_heads") or heads,
            head_dim=d.get("head_dim") or d["hidden_size"] // heads,
            rms_norm_eps=float(d.get("rms_norm_eps", 1e-6)),
            max_position_embeddings=int(d.get("max_position_embeddings", 4096)),
            tie_word_embeddings=bool(d.get("tie_word_embeddings", False)),
            qkv_bias=qkv_bias,
            o_bias=o_bias,
            mlp_bias=bool(d.get("mlp_bias", False)) if model_type == "llama" else False,
            rope=rope_config(d),
            eos_token_ids=eos_ids,
            sliding_window=int(window) if window else None,
        )

    @classmethod
    def from_folder(cls, model_dir: str | Path) -> "ModelConfig":
        return cls.from_dict(read_config_dict(model_dir))


def read_config_dict(model_dir: str | Path) -> dict:
    return json.loads((Path(model_dir) / "config.json").read_text())


def rope_config(d: dict) -> RopeConfig:
    """transformers 5 writes `rope_parameters` (with the theta inside); older folders
    write `rope_theta` plus an optional `rope_scaling`."""
    params = dict(d.get("rope_parameters") or d.get("rope_scaling") or {})
    theta = params.get("rope_theta", d.get("rope_theta", 10000.0))
    rope_type = params.get("rope_type", params.get("type", "default")) or "default"
    return RopeConfig(
        theta=float(theta),
        rope_type=rope_type,
        factor=float(params.get("factor", 1.0)),
        low_freq_factor=float(params.get("low_freq_factor", 1.0)),
        high_freq_factor=float(params.get("high_freq_factor", 4.0)),
        original_max_position_embeddings=int(
            params.get("original_max_position_embeddings", d.get("max_position_embeddings", 8192))
        ),
    )


def _uses_sliding_window(d: dict) -> bool:
    if d.get("model_type") == "qwen2":
        return bool(d.get("use_sliding_window", False))
    return d.get("sliding_window") is not None


def is_supported(config_dict: dict) -> bool:
    """True when the native engine can run this config; anything else goes to transformers."""
    if config_dict.get("model_type") not in SUPPORTED_MODEL_TYPES:
        return False
    if config_dict.get("hidden_act", "silu") != "silu":
        return False
    if config_dict.get("model_type") == "qwen2" and config_dict.get("use_sliding_window"):
        return False  # per-layer windows (max_window_layers) are not implemented
    return rope_config(config_dict).rope_type in SUPPORTED_ROPE_TYPES
