"""What a training run trains, as a fingerprint its checkpoints record, and the refusal to resume
a checkpoint that trained something else.

The fingerprint names the model (its ref and identity, or for a pretrain the shape it builds),
the training data files (uri, size, version), the objective and what it reads (columns, labels,
held-out fraction, packing, seq_len), the tokenizer and the adapter. It leaves out what a resume
may change: step counts, learning rate and schedule, batch sizes, worker count, eval data,
checkpoint cadence, export format. The driver checks it before any worker starts.
"""

from __future__ import annotations

import json
from dataclasses import asdict

from cluster import storage
from workers.model_identity import identity_changes, model_identity
from workers.training import checkpoint as ckpt
from workers.training.config import TrainingConfig, TrainingTask
from workers.training.sample_index import tokenizer_digest


class ResumeRefused(ValueError):
    """The checkpoint under checkpoint.uri trained another model, data or objective."""


def training_fingerprint(config: TrainingConfig, tokenizer, labels: list[str] | None,
                         identity: dict | None = None) -> dict:
    """`tokenizer`: the loaded tokenizer (its content counts, not where it was read from);
    `identity`: the fine-tuned model's workers.model_identity (computed here when not given)."""
    d = config.data
    if config.task == TrainingTask.FINETUNE:
        model = {"ref": config.model.uri, "identity": identity or model_identity(config.model.uri)}
    else:
        model = {"shape": {k: v for k, v in asdict(config.model).items() if k != "uri"}}
    adapter = None
    if config.adapter is not None:
        adapter = {k: v for k, v in asdict(config.adapter).items() if k != "export"}
    fingerprint = {
        "task": str(config.task),
        "model": model,
        "data": {"train": [[f.uri, f.size, f.version] for f in storage.list_files(d.train)],
                 "columns": [d.id_column, d.text_column, d.prompt_column, d.response_column, d.label_column],
                 "eval_fraction": d.eval_fraction, "packing": d.packing},
        "objective": str(config.objective),
        "labels": labels,
        "tokenizer": tokenizer_digest(tokenizer),
        "seq_len": d.seq_len,
        "adapter": adapter,
    }
    return json.loads(json.dumps(fingerprint))  # as checkpoint meta.json will hold it: lists, not tuples


def fingerprint_changes(old: dict, new: dict) -> list[str]:
    """One plain line per difference: "objective: sft -> classification", "data.train: ..."."""
    lines = []
    for key in sorted(old.keys() | new.keys()):
        a, b = old.get(key), new.get(key)
        if a == b:
            continue
        if key == "model" and isinstance(a, dict) and isinstance(b, dict) and "identity" in a and "identity" in b \
                and a.get("ref") == b.get("ref"):
            lines += [f"model {b['ref']}: {line}" for line in identity_changes(a["identity"], b["identity"])]
        elif key == "data" and isinstance(a, dict) and isinstance(b, dict):
            lines += [f"data.{k}: {_files(a.get(k)) if k == 'train' else a.get(k)} -> "
                      f"{_files(b.get(k)) if k == 'train' else b.get(k)}"
                      for k in sorted(a.keys() | b.keys()) if a.get(k) != b.get(k)]
        else:
            lines.append(f"{key}: {_short(a)} -> {_short(b)}")
    return lines


def _files(files) -> str:
    if not isinstance(files, list):
        return _short(files)
    return ", ".join(f"{f[0]} ({f[1]} bytes, version {f[2]})" for f in files[:5]) + (
        f" and {len(files) - 5} more" if len(files) > 5 else "")


def _short(value, limit: int = 200) -> str:
    text = str(value)
    return text if len(text) <= limit else text[:limit] + "..."


def check_checkpoint_matches(checkpoint_uri: str, fingerprint: dict) -> None:
    """Refuse, naming what changed, to resume a checkpoint that recorded another fingerprint.
    No checkpoint, or one written before fingerprints were recorded: nothing to check."""
    step = ckpt.latest_complete(checkpoint_uri)
    if step is None:
        return
    recorded = ckpt.read_meta(checkpoint_uri, step).get("fingerprint")
    if recorded is None or recorded == fingerprint:
        return
    changes = fingerprint_changes(recorded, fingerprint)
    raise ResumeRefused(
        f"checkpoint {storage.join(checkpoint_uri, ckpt.tag(step))} trained something else; "
        f"changed since: {'; '.join(changes)}. Resume with the same model, data and objective, or "
        f"start over with another checkpoint.uri or output.mode: overwrite")
