"""Is an adapter trained on the job's model? Answered before any work from small reads only: the
adapter's config, the header of its safetensors file (names and shapes, no tensor data) and the
model's config.json.

An adapter llmbatch trained records its base (adapter_config.json "llmbatch": the base's
workers.model_identity identity, its digest and shape); the job's model must be that model. An
adapter from another trainer records none: it is accepted when every tensor has the shape the
model's config gives its target, with a warning that its base could not be verified.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

from cluster import storage
from cluster.storage.scope import Scope
from llm_core.models.config import ModelConfig
from llm_core.models.lora_files import SHAPE_FIELDS
from llm_core.models.lora_names import peft_key, target_slice
from workers.model_identity import identity_changes, identity_digest

MAX_HEADER_BYTES = 16 * 2**20  # an adapter's safetensors header (names, shapes, offsets) is far smaller
_PEFT_KEY = re.compile(r"^base_model\.model\.model\.layers\.(\d{1,6})\.(self_attn|mlp)\.(\w+)\.lora_(A|B)\.weight$")
SHOWN = 3  # offending tensors named in one problem line


@dataclass
class BaseCheck:
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    checked: list[str] = field(default_factory=list)


def read_safetensors_shapes(uri: str, scope: Scope | None = None) -> dict[str, list[int]]:
    """{tensor name: shape} from a safetensors file's header (8-byte length, then JSON), read
    through cluster.storage (scope-checked at open; two small reads, also on S3)."""
    with storage.open_input(uri, scope) as f:
        prefix = f.read(8)
        if len(prefix) < 8:
            raise ValueError(f"{uri}: not a safetensors file (shorter than its header)")
        size = int.from_bytes(prefix, "little")
        if size > MAX_HEADER_BYTES:
            raise ValueError(f"{uri}: safetensors header of {size} bytes (more than {MAX_HEADER_BYTES}): refused")
        raw = f.read(size)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ValueError(f"{uri}: safetensors header is not JSON") from None
    if not isinstance(header, dict):
        raise ValueError(f"{uri}: safetensors header is not a JSON object")
    shapes = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        shape = entry.get("shape") if isinstance(entry, dict) else None
        if not isinstance(shape, list) or not all(isinstance(d, int) and 0 <= d < 2**31 for d in shape):
            raise ValueError(f"{uri}: tensor {name!r} has no valid shape in the header")
        shapes[str(name)] = shape
    return shapes


def _in_out(cfg: ModelConfig, target: str) -> tuple[int, int]:
    """(input features, output rows) of an HF target module of the model."""
    rows = target_slice(cfg, target)[1]
    inputs = {"o_proj": cfg.num_attention_heads * cfg.head_dim, "down_proj": cfg.intermediate_size}
    return inputs.get(target, cfg.hidden_size), rows.stop - rows.start


def expected_shapes(cfg: ModelConfig, rank: int, targets: list[str]) -> dict[str, list[int]]:
    """Every PEFT key an adapter of `rank` on `targets` may hold for this model, with its shape."""
    out = {}
    for target in targets:
        fan_in, fan_out = _in_out(cfg, target)
        for layer in range(cfg.num_hidden_layers):
            out[peft_key(layer, target, "A")] = [rank, fan_in]
            out[peft_key(layer, target, "B")] = [fan_out, rank]
    return out


def _named(items: list[str]) -> str:
    return ", ".join(items[:SHOWN]) + (f" and {len(items) - SHOWN} more" if len(items) > SHOWN else "")


def tensor_problems(ref: str, shapes: dict[str, list[int]], cfg: ModelConfig, rank: int,
                    targets: list[str]) -> list[str]:
    """Why the adapter's tensors do not fit the model (one A [r, in] and one B [out, r] per layer
    and target, as llm_core.models.lora_files will require when it merges them); [] when they do."""
    expected = expected_shapes(cfg, rank, targets)
    problems = []
    stray = sorted(name for name in shapes if name not in expected)
    if stray:
        beyond = [n for n in stray if (m := _PEFT_KEY.match(n)) and int(m.group(1)) >= cfg.num_hidden_layers]
        why = (f"layers beyond the model's {cfg.num_hidden_layers}" if beyond
               else f"not LoRA matrices of its target_modules {targets}")
        problems.append(f"{ref}: tensors {_named(stray)} are {why}")
    wrong = [f"{name} {shape} (the model needs {expected[name]})" for name, shape in sorted(shapes.items())
             if name in expected and shape != expected[name]]
    if wrong:
        problems.append(f"{ref}: shapes do not fit the model ({_model_shape(cfg)}): {_named(wrong)}")
    missing = sorted(set(expected) - set(shapes))
    if missing:
        problems.append(f"{ref}: {len(missing)} LoRA matrices missing ({_named(missing)}): target_modules "
                        f"{targets} need one lora_A and one lora_B in each of the model's "
                        f"{cfg.num_hidden_layers} layers")
    return problems


def _model_shape(cfg: ModelConfig) -> str:
    return ", ".join(f"{f} {getattr(cfg, f)}" for f in SHAPE_FIELDS)


def shape_differences(recorded: dict, cfg: ModelConfig) -> list[str]:
    """"hidden_size 64 -> 128" for each base_shape field the model's config has otherwise."""
    return [f"{name} {recorded.get(name)!r} -> {getattr(cfg, name)!r}" for name in SHAPE_FIELDS
            if name in recorded and recorded.get(name) != getattr(cfg, name)]


def same_content(recorded: object, identity: dict) -> bool:
    """The recorded base and the model are the same files at another path (a copied local folder)."""
    return (isinstance(recorded, dict) and recorded.get("kind") == identity.get("kind") == "local"
            and bool(identity.get("files")) and recorded.get("files") == identity.get("files"))


def check_base(adapter_ref: str, config: dict, model_ref: str, identity: dict, cfg: ModelConfig | None,
               shapes: dict[str, list[int]] | None) -> BaseCheck:
    """The adapter (`config`: its adapter_config.json as llm_core.models.lora_files validated it;
    `shapes`: its tensors') against the job's model (`identity`: workers.model_identity's; `cfg`:
    its config, None when not readable before the model is fetched: the shapes are then checked
    when a worker merges the adapter)."""
    out = BaseCheck()
    block = config.get("llmbatch")
    base_ref = config.get("base_model_name_or_path") or "(unnamed)"
    actual = identity_digest(identity)
    if isinstance(block, dict):
        recorded = block.get("base_digest")
        if recorded is None:
            out.warnings.append(f"adapter: {adapter_ref} records no base identity: its base ({base_ref}) could "
                                f"not be verified by fingerprint, only its shapes against model {model_ref}")
        elif recorded == actual:
            out.checked.append(f"adapter: {adapter_ref} trained on this model (base identity {actual[:12]})")
        elif same_content(block.get("base_model"), identity):
            out.checked.append(f"adapter: {adapter_ref} trained on the same model files at {base_ref}")
        else:
            changes = (identity_changes(block["base_model"], identity)
                       if isinstance(block.get("base_model"), dict) else [])
            detail = f" ({'; '.join(changes[:SHOWN])})" if changes else ""
            out.problems.append(f"adapter: {adapter_ref} was trained on {base_ref} (identity "
                                f"{str(recorded)[:12]}), not on model {model_ref} (identity {actual[:12]}){detail}")
        if cfg is not None and isinstance(block.get("base_shape"), dict):
            differences = shape_differences(block["base_shape"], cfg)
            if differences:
                out.problems.append(f"adapter: {adapter_ref} was trained on a model of another shape than "
                                    f"model {model_ref}: {'; '.join(differences)}")
    else:
        out.warnings.append(f"adapter: {adapter_ref} was not trained by llmbatch (no llmbatch block in "
                            f"adapter_config.json): its base ({base_ref}) could not be verified by fingerprint, "
                            f"only its tensor shapes against model {model_ref}")
    if cfg is not None and shapes is not None:
        found = tensor_problems(adapter_ref, shapes, cfg, config["r"], config["target_modules"])
        out.problems += [f"adapter: {p}" for p in found]
        if not found:
            out.checked.append(f"adapter: {adapter_ref} tensors fit model {model_ref} ({len(shapes)} LoRA matrices)")
    else:
        out.warnings.append(f"adapter: model {model_ref} is not on this node yet: the adapter's shapes are "
                            "checked when a worker loads it")
    return out
