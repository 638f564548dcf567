"""Load HF safetensors folders (one file, or shards listed in model.safetensors.index.json)
into LlamaForCausalLM. Weights are only ever read with safetensors: never pickle.

A model folder is chosen by a tenant, so nothing in it may run as code: pickle weights
(`pytorch_model.bin`, `*.pt`, `*.ckpt`) are refused with `WeightsFormatError` rather than
loaded, and a shard index may only name `.safetensors` files inside the folder itself.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open

from llm_core.device import pick_device, pick_dtype
from llm_core.models.config import ModelConfig, read_config_dict
from llm_core.models.llama import LlamaForCausalLM
from llm_core.models.lora_files import apply_adapter_folder
from llm_core.models.rope import inverse_frequencies


# Formats whose loading unpickles, i.e. may run code the file's author chose.
PICKLE_WEIGHTS = ("*.bin", "*.pt", "*.pth", "*.ckpt", "*.pkl")


class WeightsFormatError(ValueError):
    """A model folder without safetensors weights, or with a shard index pointing elsewhere."""


def safetensors_files(model_dir: Path) -> list[Path]:
    """The folder's safetensors files; raises WeightsFormatError where there are none."""
    model_dir = Path(model_dir)
    index = model_dir / "model.safetensors.index.json"
    if index.exists():
        weight_map = json.loads(index.read_text())["weight_map"]
        names = sorted(set(weight_map.values()))
        bad = [n for n in names if Path(n).name != n or not n.endswith(".safetensors")]
        if bad:
            raise WeightsFormatError(f"model folder {model_dir}: {index.name} names {bad[0]!r}; shards must be "
                                     ".safetensors files in the folder itself")
        return [model_dir / name for name in names]
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        pickled = sorted(p.name for pattern in PICKLE_WEIGHTS for p in model_dir.glob(pattern))
        found = f"only pickle weights ({', '.join(pickled[:3])})" if pickled else "no weights"
        raise WeightsFormatError(f"model folder {model_dir} holds {found}: llmbatch loads weights only from "
                                 "safetensors or GGUF, never pickle (convert them to model.safetensors)")
    return files


def read_hf_state_dict(model_dir: Path) -> dict[str, torch.Tensor]:
    tensors = {}
    for path in safetensors_files(model_dir):
        with safe_open(str(path), framework="pt", device="cpu") as f:
            for name in f.keys():
                tensors[name] = f.get_tensor(name)
    return tensors


def to_native_names(hf: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """Rename HF keys and fuse q/k/v and gate/up into the layout LlamaForCausalLM uses."""
    hf = {k.removeprefix("model."): v for k, v in hf.items()}
    out = {"embed_tokens.weight": hf["embed_tokens.weight"], "norm.weight": hf["norm.weight"]}
    out["lm_head.weight"] = hf["embed_tokens.weight" if cfg.tie_word_embeddings else "lm_head.weight"]
    for i in range(cfg.num_hidden_layers):
        p = f"layers.{i}."
        for norm in ("input_layernorm", "post_attention_layernorm"):
            out[p + norm + ".weight"] = hf[p + norm + ".weight"]
        attn, mlp = p + "self_attn.", p + "mlp."
        out[attn + "qkv_proj.weight"] = torch.cat([hf[attn + f"{x}_proj.weight"] for x in "qkv"])
        if cfg.qkv_bias:
            out[attn + "qkv_proj.bias"] = torch.cat([hf[attn + f"{x}_proj.bias"] for x in "qkv"])
        out[attn + "o_proj.weight"] = hf[attn + "o_proj.weight"]
        if cfg.o_bias:
            out[attn + "o_proj.bias"] = hf[attn + "o_proj.bias"]
        out[mlp + "gate_up_proj.weight"] = torch.cat([hf[mlp + "gate_proj.weight"], hf[mlp + "up_proj.weight"]])
        out[mlp + "down_proj.weight"] = hf[mlp + "down_proj.weight"]
        if cfg.mlp_bias:
            out[mlp + "gate_up_proj.bias"] = torch.cat([hf[mlp + "gate_proj.bias"], hf[mlp + "up_proj.bias"]])
            out[mlp + "down_proj.bias"] = hf[mlp + "down_proj.bias"]
    return out


def load_model(
    model_dir: str | Path, device: str = "auto", dtype: str | torch.dtype = "auto",
    adapter_dir: str | Path | None = None,
) -> tuple[LlamaForCausalLM, ModelConfig]:
    """The model of a canonical folder on `device` in `dtype`. `adapter_dir`: a LoRA adapter folder
    (PEFT layout, llm_core.models.lora_files) merged into the weights before they are cast, so a
    bf16 or fp16 model rounds base + adapter once, as a merged export would (and quantization,
    which comes after loading, sees the merged weights)."""
    model_dir = Path(model_dir)
    device = pick_device(device)
    torch_dtype = pick_dtype(device, dtype)
    cfg = ModelConfig.from_dict(read_config_dict(model_dir))
    # Build on the meta device so no memory or time goes into a random init we overwrite.
    with torch.device("meta"):
        model = LlamaForCausalLM(cfg)
    model = model.to_empty(device=device).to(torch.float32 if adapter_dir is not None else torch_dtype)
    if cfg.tie_word_embeddings:
        model.lm_head.weight = model.embed_tokens.weight  # to_empty does not keep the tie
    state = to_native_names(read_hf_state_dict(model_dir), cfg)
    with torch.no_grad():
        for name, param in model.named_parameters():
            param.copy_(state[name])
    del state
    if adapter_dir is not None:
        apply_adapter_folder(model, Path(adapter_dir))
        model = model.to(torch_dtype)  # module.to keeps the tied lm_head tied
    # The rotary buffer was left uninitialised by to_empty; it stays fp32 for precise angles.
    model.rotary.inv_freq = inverse_frequencies(cfg.rope, cfg.head_dim).to(device)
    return model.eval(), cfg
