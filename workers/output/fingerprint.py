"""The run fingerprint: everything an inference output depends on, so `resume` continues only the
very same run and `retry_errors` only redoes rows of it.

`{"input": [{"uri", "size", "version"}...], "model": <model identity>, "engine", "task", "params",
"columns": {id, text, language}, "id_type"}`, and `"adapter": <adapter identity>` when the job
applies a LoRA adapter (workers.adapter_folder: its files' hashes, as a model's), so a resume
with a changed adapter is refused naming the file that changed. `"dtype": "bfloat16"` is there
when the driver decided `params.dtype: auto` as bf16 (jobs/run/precision.py), so a resume keeps
it. `params.n` (completions per row) is there only when it is not 1, so the runs of jobs from
before it existed keep their fingerprints. An input file's version is its S3 ETag, or its local
mtime in nanoseconds: a file rewritten in place changes it even at the same size. The model
identity (workers.model_identity) hashes the config and weight files, so a model re-published
behind the same URI changes it too.
"""

from __future__ import annotations

import json
from typing import Any

from cluster.hashing import stable_json, stable_json_sha256
from cluster.storage.backend import FileRef
from workers.model_identity import identity_changes

_SHORT = 24  # long values (hashes) are cut in diff lines


def run_fingerprint(*, files: list[FileRef], model: dict, engine: str, task: dict, params: dict,
                    columns: dict, id_type: str, adapter: dict | None = None, dtype: str | None = None) -> dict:
    """The fingerprint as plain JSON data (what `_manifest.json` and the markers hold). Without
    an adapter the key is absent, so the runs of jobs without one keep their fingerprints."""
    if params.get("n") == 1:  # one completion per row, as before params.n existed
        params = {k: v for k, v in params.items() if k != "n"}
    fp = {
        "input": [{"uri": f.uri, "size": f.size, "version": f.version} for f in sorted(files, key=lambda f: f.uri)],
        "model": model, "engine": engine, "task": task, "params": params, "columns": columns, "id_type": id_type,
    }
    if adapter is not None:
        fp["adapter"] = adapter
    if dtype is not None:
        fp["dtype"] = dtype
    return json.loads(stable_json(fp))  # tuples -> lists etc.: equal after a JSON round trip


def fingerprint_sha256(fp: dict) -> str:
    return stable_json_sha256(fp)


def same_fingerprint(old: dict | None, new: dict | None) -> bool:
    return old is not None and new is not None and fingerprint_sha256(old) == fingerprint_sha256(new)


def _short(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= _SHORT else text[: _SHORT - 3] + "..."


def _keyed(items: list) -> dict | None:
    """A list of dicts as {name: item} when each names itself (files of a model), else None."""
    for key in ("path", "name", "uri", "file"):
        if items and all(isinstance(i, dict) and key in i for i in items):
            return {str(i[key]): i for i in items}
    return None


def _diff(label: str, old: Any, new: Any) -> list[str]:
    """One line per leaf that differs, labelled by its path (`task.kind`, `model files.x`)."""
    if old == new:
        return []
    if isinstance(old, list) and isinstance(new, list):
        old_k, new_k = _keyed(old), _keyed(new)
        if old_k is not None and new_k is not None:
            old, new = old_k, new_k
    if isinstance(old, dict) and isinstance(new, dict):
        lines = []
        for key in sorted(set(old) | set(new), key=str):
            name = f"{label}.{key}" if label else str(key)
            if key not in old:
                lines.append(f"{name}: added ({_short(new[key])})")
            elif key not in new:
                lines.append(f"{name}: removed (was {_short(old[key])})")
            else:
                lines.extend(_diff(name, old[key], new[key]))
        return lines
    return [f"{label}: {_short(old)} -> {_short(new)}"]


def _input_diff(old: list[dict], new: list[dict]) -> list[str]:
    before, after = {f["uri"]: f for f in old or []}, {f["uri"]: f for f in new or []}
    lines = []
    for uri in sorted(set(before) | set(after)):
        if uri not in before:
            lines.append(f"input file {uri}: added")
        elif uri not in after:
            lines.append(f"input file {uri}: removed")
        elif before[uri].get("size") != after[uri].get("size"):
            lines.append(f"input file {uri}: size {before[uri].get('size')} -> {after[uri].get('size')}")
        elif before[uri].get("version") != after[uri].get("version"):
            lines.append(f"input file {uri}: rewritten (version {_short(before[uri].get('version'))} -> "
                         f"{_short(after[uri].get('version'))})")
    return lines


def _model_diff(old, new, label: str = "model") -> list[str]:
    """A model's (or an adapter's) identity changes, its files named one by one
    (workers.model_identity's lines); an adapter added or removed is said so."""
    if old is None or new is None:
        return [f"{label}: {'added' if old is None else 'removed'} ({_where(new if old is None else old)})"]
    if not (isinstance(old, dict) and isinstance(new, dict)) or old.get("kind") != new.get("kind"):
        return _diff(label, old, new)
    return [f"{label}: {line}" for line in identity_changes(old, new)]


def _where(identity) -> str:
    if isinstance(identity, dict):
        return str(identity.get("uri") or identity.get("path") or identity.get("name") or _short(identity))
    return _short(identity)


def fingerprint_diff(old: dict | None, new: dict | None) -> list[str]:
    """Human lines naming each part of the fingerprint that differs (empty when equal).

    e.g. "input file s3://b/x.parquet: size 100 -> 120", "engine: native -> baseline",
    "model: model.safetensors etag 9f2c (1024 bytes) -> 41aa (1024 bytes)", "params.temperature: 0.0 -> 0.7".
    """
    old, new = old or {}, new or {}
    if not old:
        return ["the earlier run has no fingerprint (written by an older llmbatch)"]
    lines = _input_diff(old.get("input", []), new.get("input", []))
    for part in sorted((set(old) | set(new)) - {"input"}):
        if old.get(part) == new.get(part):
            continue
        if part in ("model", "adapter"):
            lines.extend(_model_diff(old.get(part), new.get(part), part) or [f"{part}: changed"])
        elif isinstance(old.get(part), dict) and isinstance(new.get(part), dict):
            lines.extend(_diff(part, old[part], new[part]))
        else:
            lines.append(f"{part}: {_short(old.get(part))} -> {_short(new.get(part))}")
    return lines
