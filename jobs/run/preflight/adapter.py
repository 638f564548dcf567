"""The job's `adapter:`, checked before any worker starts: an adapter folder in the job's scope
(workers.adapter_folder), its adapter_config.json valid (llm_core.models.lora_files), and trained
on the job's model (workers.adapter_base: the base's recorded identity, its shape, the tensors'
shapes). Only small files are read: the adapter's config, its safetensors header, the model's
config.json; the adapter's identity goes into the run fingerprint (plan.adapter).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from cluster import storage
from jobs.run.preflight.model import model_dir_on_node
from jobs.run.preflight.plan import Plan
from jobs.manifest import InferenceManifest
from llm_core.models.classifier import CLASSIFICATION_TASK, CLASSIFIER_FILE, LABELS_FILE
from llm_core.models.config import ModelConfig, is_supported
from llm_core.models.lora_files import read_adapter_config
from llm_core.tasks import TaskKind
from workers.adapter_base import check_base, read_safetensors_shapes
from workers.adapter_folder import ADAPTER_CONFIG, ADAPTER_WEIGHTS, adapter_identity


def check_adapter(m: InferenceManifest, model: dict | None, plan: Plan, scope: storage.Scope) -> dict | None:
    """The identity of the job's adapter (also in plan.adapter), or None with the problems found.
    `model`: the job's model identity (None when the model itself was refused: only the adapter is
    checked)."""
    ref = m.adapter
    try:
        identity = adapter_identity(ref, scope)
        config = _read_config(identity, scope)
        shapes = read_safetensors_shapes(_join(identity, ADAPTER_WEIGHTS), scope)
    except (OSError, ValueError) as exc:  # AdapterNotFound, ScopeError, AdapterFormatError, a bad header
        message = str(exc)  # the adapter_folder errors name the adapter already
        plan.problems.append(message if message.startswith("adapter ") else f"adapter: {ref}: {message}")
        return None
    plan.adapter = identity
    plan.checked.append(f"adapter: {ref} is an adapter folder ({identity['kind']}, rank {config['r']}, "
                        f"targets {', '.join(config['target_modules'])})")
    if (config.get("llmbatch") or {}).get("task") == CLASSIFICATION_TASK:
        plan.problems += _classifier_problems(m, identity, scope)
    if model is None:
        return identity
    try:
        cfg = _model_config(model, scope)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        plan.problems.append(f"adapter: model {m.model} cannot take it: {exc}")
        return identity
    found = check_base(ref, config, m.model, model, cfg, shapes)
    plan.problems += found.problems
    plan.warnings += found.warnings
    plan.checked += found.checked
    return identity


def _classifier_problems(m: InferenceManifest, identity: dict, scope: storage.Scope) -> list[str]:
    """A classification adapter answers through its head: classify jobs over its own labels, unquantized."""
    if m.task.kind != TaskKind.CLASSIFY:
        return [f"adapter: {m.adapter} is a classification adapter (a trained head over its labels): it runs "
                f"classify jobs only, not {m.task.kind}"]
    problems = []
    try:
        labels = json.loads(storage.read_bytes(_join(identity, LABELS_FILE), scope))
    except (OSError, ValueError) as exc:
        return [f"adapter: {m.adapter}: {LABELS_FILE} cannot be read as JSON ({exc})"]
    if not isinstance(labels, list) or set(m.task.labels) != set(labels):
        problems.append(f"task.labels: the adapter's classifier head knows labels {labels}; the job asks for "
                        f"{list(m.task.labels)}: list the same labels")
    if m.params.quantization != "none":
        problems.append(f"params.quantization: {m.params.quantization} is the native engine's; a classification "
                        "adapter runs through its head unquantized (quantization: none)")
    return problems


def _join(identity: dict, name: str) -> str:
    return f"{identity['uri']}/{name}" if identity["kind"] == "s3" else str(Path(identity["path"]) / name)


def _read_config(identity: dict, scope: storage.Scope) -> dict:
    """adapter_config.json validated by llm_core. A local folder is read in place (its files were
    checked against the scope with the identity); from S3 the config and a classifier's small head
    files are copied into a temp folder for the validator (the LoRA matrices are not downloaded)."""
    if identity["kind"] == "local":
        return read_adapter_config(Path(identity["path"]))
    with tempfile.TemporaryDirectory(prefix="adapter-config-") as tmp:
        for name in (ADAPTER_CONFIG, CLASSIFIER_FILE, LABELS_FILE):
            if name in identity["files"]:
                (Path(tmp) / name).write_bytes(storage.read_bytes(_join(identity, name), scope))
        return read_adapter_config(Path(tmp))


def _model_config(identity: dict, scope: storage.Scope) -> ModelConfig | None:
    """The model's config read without fetching its weights; None for a built-in model not yet
    on this node."""
    kind = identity.get("kind")
    if kind == "s3":
        raw = storage.read_bytes(f"{identity['uri']}/config.json", scope)
    elif kind == "local":
        raw = storage.read_bytes(str(Path(identity["path"]) / "config.json"), scope)
    else:
        folder = model_dir_on_node(identity)
        if folder is None:
            return None
        raw = (folder / "config.json").read_bytes()
    config = json.loads(raw)
    if not isinstance(config, dict):
        raise ValueError("config.json is not a JSON object")
    if not is_supported(config):  # no fallback to transformers: only the native engine merges an adapter
        raise ValueError(f"architecture {config.get('model_type')!r} is not supported by the native engine, "
                         "which an adapter needs")
    return ModelConfig.from_dict(config)
