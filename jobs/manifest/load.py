"""Reading a manifest: YAML or JSON text -> the model its `kind` names, or ManifestError.

A bad manifest is refused whole, every problem listed with its field path, before any work
starts. Fields that look like credentials are refused wherever they appear. The text itself is
read by `yaml_text` (no anchors, aliases, duplicate keys, huge numbers or non-UTF-8 bytes).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import ValidationError

from jobs.manifest.errors import FieldError, ManifestError, errors_from_validation
from jobs.manifest.inference import InferenceManifest
from jobs.manifest.secrets import find_credential_fields
from jobs.manifest.training import TrainingManifest
from jobs.manifest.yaml_text import MAX_BYTES, decode_text, load_yaml_text

Manifest = InferenceManifest | TrainingManifest


def parse_manifest(data: Any, source: str = "<manifest>") -> Manifest:
    """Validate already-parsed manifest data; raise ManifestError with every problem.

    `kind: inference` (the default) gives an InferenceManifest, `kind: training` a
    TrainingManifest.
    """
    if not isinstance(data, dict):
        raise ManifestError(source, [FieldError("", "a manifest must be a mapping of fields")])
    errors = find_credential_fields(data)
    # Any other kind goes to the inference model, whose `kind` field then names the problem.
    model = TrainingManifest if data.get("kind") == "training" else InferenceManifest
    try:
        manifest = model.model_validate(data)
    except ValidationError as exc:
        seen = {e.path for e in errors}
        errors += [e for e in errors_from_validation(exc) if e.path not in seen]
        raise ManifestError(source, errors) from None
    if errors:
        raise ManifestError(source, errors)
    return manifest


def parse_manifest_text(text: str | bytes, source: str = "<manifest>") -> Manifest:
    return parse_manifest(read_manifest_text(text, source), source)


def read_manifest_text(text: str | bytes, source: str = "<manifest>") -> Any:
    """YAML or JSON text (bytes must be UTF-8) -> plain data, not yet validated."""
    return load_yaml_text(decode_text(text, source) if isinstance(text, bytes) else text, source)


def read_manifest_file(path: str | Path) -> Any:
    """A manifest file's plain data, read as `load_manifest` reads it (the CLI's `submit` sends it)."""
    p = Path(path)
    try:
        with p.open("rb") as f:
            raw = f.read(MAX_BYTES + 1)  # never more than the limit into memory
    except OSError as exc:
        raise ManifestError(str(p), [FieldError("", f"cannot read file: {exc.strerror}")]) from None
    if len(raw) > MAX_BYTES:
        raise ManifestError(str(p), [FieldError("", f"file is over the {MAX_BYTES}-byte limit of a manifest")])
    return read_manifest_text(raw, str(p))


def load_manifest(path: str | Path) -> Manifest:
    return parse_manifest(read_manifest_file(path), str(path))
