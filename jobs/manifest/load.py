"""Reading a manifest: YAML or JSON text -> the model its `kind` names, or ManifestError.

A bad manifest is refused whole, every problem listed with its field path, before any work
starts. Fields that look like credentials are refused wherever they appear.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from jobs.manifest.errors import FieldError, ManifestError, errors_from_validation
from jobs.manifest.inference import InferenceManifest
from jobs.manifest.secrets import find_credential_fields
from jobs.manifest.training import TrainingManifest

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


def parse_manifest_text(text: str, source: str = "<manifest>") -> Manifest:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise ManifestError(source, [FieldError("", f"not valid YAML: {where}{exc}")]) from None
    return parse_manifest(data, source)


def load_manifest(path: str | Path) -> Manifest:
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise ManifestError(str(p), [FieldError("", f"cannot read file: {exc.strerror}")]) from None
    return parse_manifest_text(text, str(p))
