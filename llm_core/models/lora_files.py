"""The adapter folder: a LoRA adapter in PEFT's layout, naming the base model it was trained on.

- `adapter_config.json`: PEFT's keys (peft_type LORA, task_type CAUSAL_LM, r, lora_alpha,
  lora_dropout, target_modules, bias none, base_model_name_or_path) and an `llmbatch` section:
  `base_model` (the base's workers.model_identity identity as the training driver computed it),
  `base_digest` (its digest), `base_shape` (the dimensions the matrices fit), and for a
  classifier `task: classification` and `max_tokens`.
- `adapter_model.safetensors`: `peft_key(layer, target, "A"|"B")` tensors, A [r, in], B [out, r];
  the update is W += lora_alpha / r * B @ A.
- a classifier also holds `classifier.safetensors` and `labels.json` (llm_core.models.classifier).

An adapter folder is chosen by a tenant: only JSON and safetensors are read (never pickle), and
unknown tensor names, wrong shapes, non-finite values, absurd ranks and PEFT options that would
change the arithmetic (rsLoRA, DoRA, per-module ranks, ...) are refused with AdapterFormatError
naming the file and the field or tensor, before any weight changes.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from cluster.hashing import short_digest
from llm_core.models.classifier import CLASSIFICATION_TASK, CLASSIFIER_FILE, LABELS_FILE
from llm_core.models.config import ModelConfig
from llm_core.models.lora_names import LORA_TARGETS, hf_module, merge_adapter_weights, peft_key, target_slice

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
MAX_RANK = 1024
MAX_ALPHA = 65536.0
MAX_CONFIG_BYTES = 1 << 20
SHAPE_FIELDS = ("model_type", "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
                "intermediate_size", "vocab_size")
# PEFT options that change what the matrices mean, with the value under which they change nothing.
NEUTRAL_OPTIONS = {
    "use_rslora": False, "use_dora": False, "fan_in_fan_out": False, "lora_bias": False,
    "modules_to_save": None, "layers_to_transform": None, "layers_pattern": None, "rank_pattern": {},
    "alpha_pattern": {}, "layer_replication": None, "megatron_config": None, "target_parameters": None,
    "trainable_token_indices": None, "use_qalora": False, "alora_invocation_tokens": None,
}
PICKLE_WEIGHTS = ("adapter_model.bin", "adapter_model.pt", "adapter_model.pth")
_KEY = re.compile(r"^base_model\.model\.model\.layers\.(\d+)\.(self_attn|mlp)\.(\w+)\.lora_(A|B)\.weight$")


class AdapterFormatError(ValueError):
    """An adapter folder that is not a LoRA adapter llmbatch can apply, and why (file and field)."""


def write_adapter_folder(dest: Path, weights: dict[str, torch.Tensor], rank: int, alpha: float, dropout: float,
                         targets, base_ref: str, base_identity: dict | None, base_config: ModelConfig,
                         extra: dict | None = None) -> None:
    """Write `adapter_config.json` and `adapter_model.safetensors` (PEFT keys) into local `dest`.
    `extra` goes into the config's `llmbatch` section (a classifier's task and max_tokens)."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in weights.items()}
    save_file(tensors, str(dest / WEIGHTS_FILE), metadata={"format": "pt"})
    config = {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": rank, "lora_alpha": alpha, "lora_dropout": dropout,
        "target_modules": [t for t in LORA_TARGETS if t in set(targets)], "bias": "none",
        "base_model_name_or_path": base_ref, "inference_mode": True,
        "llmbatch": {
            "base_model": base_identity,
            "base_digest": short_digest(base_identity) if base_identity else None,
            "base_shape": base_shape(base_config),
            **(extra or {}),
        },
    }
    (dest / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True))


def base_shape(cfg: ModelConfig) -> dict:
    return {name: getattr(cfg, name) for name in SHAPE_FIELDS}


def read_adapter_config(folder: Path) -> dict:
    """The folder's adapter_config.json, checked (see the module doc); AdapterFormatError if not."""
    folder = Path(folder)
    if not folder.is_dir():
        raise AdapterFormatError(f"adapter {folder}: not a folder")
    path = _plain_file(folder, CONFIG_FILE)
    if path.stat().st_size > MAX_CONFIG_BYTES:
        raise AdapterFormatError(f"{path}: {path.stat().st_size} bytes, more than an adapter config takes")
    try:
        config = json.loads(path.read_text(encoding="utf-8"), parse_constant=_refuse_constant)
    except (UnicodeDecodeError, ValueError) as exc:
        raise AdapterFormatError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(config, dict):
        raise AdapterFormatError(f"{path}: must hold a JSON object")
    _check_peft_fields(path, config)
    _check_llmbatch(folder, path, config.get("llmbatch"))
    return config


def read_adapter_weights(folder: Path, cfg: ModelConfig, config: dict) -> dict[str, torch.Tensor]:
    """The adapter's matrices for a base of shape `cfg`: exactly one A and one B per layer and
    target of `config`, each of the shape the base's linear takes, finite floats."""
    folder = Path(folder)
    path = _plain_file(folder, WEIGHTS_FILE)
    rank, targets = config["r"], config["target_modules"]
    expected = {}
    for layer in range(cfg.num_hidden_layers):
        for target in targets:
            rows = target_slice(cfg, target)[1]
            expected[peft_key(layer, target, "A")] = (rank, _in_features(cfg, target))
            expected[peft_key(layer, target, "B")] = (rows.stop - rows.start, rank)
    weights = {}
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            names = list(f.keys())
            for name in names:
                if name not in expected:
                    raise AdapterFormatError(f"{path}: tensor {name!r} {_why_unexpected(name, cfg, targets)}")
                shape = tuple(f.get_slice(name).get_shape())  # from the header: nothing read yet
                if shape != expected[name]:
                    raise AdapterFormatError(f"{path}: tensor {name!r} is {list(shape)}, the base model takes "
                                             f"{list(expected[name])} (rank {rank})")
                tensor = f.get_tensor(name)
                if not tensor.is_floating_point():
                    raise AdapterFormatError(f"{path}: tensor {name!r} is {tensor.dtype}, not a float type")
                if not bool(torch.isfinite(tensor).all()):
                    raise AdapterFormatError(f"{path}: tensor {name!r} holds NaN or infinite values")
                weights[name] = tensor
    except AdapterFormatError:
        raise
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types for a damaged file
        raise AdapterFormatError(f"{path}: not a readable safetensors file ({type(exc).__name__}: {exc})") from None
    missing = sorted(set(expected) - set(weights))
    if missing:
        raise AdapterFormatError(f"{path}: {len(missing)} tensors missing, first {missing[0]!r} (adapter_config.json "
                                 f"targets {targets} in every one of {cfg.num_hidden_layers} layers)")
    return weights


def apply_adapter_folder(model, folder: Path) -> dict:
    """Check the adapter folder against `model` (a native LlamaForCausalLM) and fold its matrices
    into the weights (W += lora_alpha / r * B @ A). Returns the adapter config. Apply it before a
    dtype cast or quantization: the product is added in the weights' dtype."""
    folder = Path(folder)
    config = read_adapter_config(folder)
    cfg: ModelConfig = model.config
    shape = (config.get("llmbatch") or {}).get("base_shape")
    if shape:
        ours = base_shape(cfg)
        for name in SHAPE_FIELDS:
            if name in shape and shape[name] != ours[name]:
                raise AdapterFormatError(f"{folder / CONFIG_FILE}: llmbatch.base_shape.{name} is {shape[name]!r}, "
                                         f"the model has {ours[name]!r}: the adapter was trained on another base")
    weights = read_adapter_weights(folder, cfg, config)
    merge_adapter_weights(model, weights, config["lora_alpha"] / config["r"])
    return config


def _plain_file(folder: Path, name: str) -> Path:
    path = folder / name
    if path.is_symlink():
        raise AdapterFormatError(f"{path}: a symbolic link; an adapter folder holds plain files")
    if not path.is_file():
        pickled = [p for p in PICKLE_WEIGHTS if (folder / p).exists()] if name == WEIGHTS_FILE else []
        why = f" (found {pickled[0]}: pickle weights are never loaded; save with safetensors)" if pickled else ""
        raise AdapterFormatError(f"adapter {folder}: {name} is missing{why}")
    return path


def _refuse_constant(name: str):
    raise ValueError(f"{name} is not a JSON number")


def _check_peft_fields(path: Path, config: dict) -> None:
    def bad(field: str, why: str):
        raise AdapterFormatError(f"{path}: {field} {why}")

    if config.get("peft_type") != "LORA":
        bad("peft_type", f"is {config.get('peft_type')!r}; only LORA adapters are supported")
    if config.get("task_type") not in ("CAUSAL_LM", None):
        bad("task_type", f"is {config.get('task_type')!r}; expected CAUSAL_LM")
    rank = config.get("r")
    if type(rank) is not int or not 1 <= rank <= MAX_RANK:
        bad("r", f"is {rank!r}; must be an integer from 1 to {MAX_RANK}")
    alpha = config.get("lora_alpha")
    if type(alpha) not in (int, float) or not (0 < alpha <= MAX_ALPHA and math.isfinite(alpha)):
        bad("lora_alpha", f"is {alpha!r}; must be a number above 0, at most {MAX_ALPHA:g}")
    dropout = config.get("lora_dropout", 0.0)
    if type(dropout) not in (int, float) or not 0 <= dropout < 1:
        bad("lora_dropout", f"is {dropout!r}; must be in [0, 1)")
    targets = config.get("target_modules")
    if not isinstance(targets, list) or not targets or not all(isinstance(t, str) for t in targets):
        bad("target_modules", f"is {targets!r}; must be a list of module names ({', '.join(LORA_TARGETS)})")
    unknown = [t for t in targets if t not in LORA_TARGETS]
    if unknown:
        bad("target_modules", f"names {unknown}; the decoder's linears are {', '.join(LORA_TARGETS)}")
    if len(set(targets)) != len(targets):
        bad("target_modules", "names a module twice")
    if config.get("bias", "none") != "none":
        bad("bias", f"is {config.get('bias')!r}; only 'none' is supported (no trained biases)")
    for option, neutral in NEUTRAL_OPTIONS.items():
        value = config.get(option, neutral)
        if value and value != neutral:  # every neutral value is empty: None, False, {} or []
            bad(option, f"is {value!r}; llmbatch applies plain LoRA only (this option changes the update)")
    name = config.get("base_model_name_or_path")
    if name is not None and not isinstance(name, str):
        bad("base_model_name_or_path", f"is {name!r}; must be a string")


def _check_llmbatch(folder: Path, path: Path, section) -> None:
    """The `llmbatch` section is optional (an adapter trained with PEFT has none); when present
    every field must have its type, and a classifier its head files."""
    if section is None:
        return
    if not isinstance(section, dict):
        raise AdapterFormatError(f"{path}: llmbatch must be an object")
    base = section.get("base_model")
    if base is not None and not isinstance(base, dict):
        raise AdapterFormatError(f"{path}: llmbatch.base_model must be an object (the base's identity)")
    digest = section.get("base_digest")
    if digest is not None and not (isinstance(digest, str) and re.fullmatch(r"[0-9a-f]{32}", digest)):
        raise AdapterFormatError(f"{path}: llmbatch.base_digest must be 32 hex characters")
    if base is not None and digest is not None and short_digest(base) != digest:
        raise AdapterFormatError(f"{path}: llmbatch.base_digest does not match llmbatch.base_model")
    shape = section.get("base_shape")
    if shape is not None:
        if not isinstance(shape, dict) or set(shape) - set(SHAPE_FIELDS):
            raise AdapterFormatError(f"{path}: llmbatch.base_shape must be an object of {', '.join(SHAPE_FIELDS)}")
        for name, value in shape.items():
            if (name == "model_type") != isinstance(value, str) or (name != "model_type" and type(value) is not int):
                raise AdapterFormatError(f"{path}: llmbatch.base_shape.{name} is {value!r}")
    task = section.get("task")
    if task not in (None, CLASSIFICATION_TASK):
        raise AdapterFormatError(f"{path}: llmbatch.task is {task!r}; known: {CLASSIFICATION_TASK}")
    max_tokens = section.get("max_tokens")
    if max_tokens is not None and (type(max_tokens) is not int or not 1 <= max_tokens <= 1 << 20):
        raise AdapterFormatError(f"{path}: llmbatch.max_tokens is {max_tokens!r}; must be a positive integer")
    if task == CLASSIFICATION_TASK:
        for name in (CLASSIFIER_FILE, LABELS_FILE):
            _plain_file(folder, name)


def _in_features(cfg: ModelConfig, target: str) -> int:
    if target == "o_proj":
        return cfg.num_attention_heads * cfg.head_dim
    if target == "down_proj":
        return cfg.intermediate_size
    return cfg.hidden_size


def _why_unexpected(name: str, cfg: ModelConfig, targets: list[str]) -> str:
    m = _KEY.match(name)
    if m is None:
        return "is not a LoRA matrix name PEFT writes (base_model.model.model.layers.N.<module>.lora_A/B.weight)"
    layer, target = int(m.group(1)), m.group(3)
    if layer >= cfg.num_hidden_layers:
        return f"names layer {layer}; the base model has {cfg.num_hidden_layers} layers"
    if target not in targets:
        return f"adapts {target}, which adapter_config.json target_modules {targets} does not list"
    return f"is not where {hf_module(layer, target)} keeps its adapter"
