"""Every location a parsed manifest names, found through the marks on its schema, and the scope check over them.

Fields that name storage carry a workers.uri_field mark on their type (`Annotated[str, READS]`).
`manifest_uris` walks a parsed manifest (pydantic models and the training config's dataclasses,
lists included) and yields each marked value with its field path and what a job does there; a
new field is covered by marking it, and a schema test fails when a URI-looking field is not.
`scope_violations` checks each against a token's Scope on normalised URIs (local paths resolved,
symlinks included, at the moment of the check); `model_refs` lists the model references for the
pre-flight model check (workers.model_check).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from typing import Any, get_type_hints

from pydantic import BaseModel

from cluster.storage.scope import Scope
from cluster.storage.uri import is_s3
from jobs.manifest.errors import FieldError, ManifestError
from workers.model_check import model_problem
from workers.uri_field import UriField, uri_mark

BUILTIN = "builtin:"
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


@dataclass(frozen=True)
class UriUse:
    path: str  # field path as errors spell it: "data.train[1]", "checkpoint.uri"
    uri: str
    mark: UriField


def is_section(value: Any) -> bool:
    """A nested block of the schema: a pydantic model or a (training config) dataclass instance."""
    return isinstance(value, BaseModel) or (dataclasses.is_dataclass(value) and not isinstance(value, type))


@cache
def schema_fields(cls: type) -> tuple[tuple[str, Any], ...]:
    """(name, annotation with its Annotated metadata) of a model's or dataclass's fields."""
    hints = get_type_hints(cls, include_extras=True)
    names = cls.model_fields if issubclass(cls, BaseModel) else [f.name for f in dataclasses.fields(cls)]
    return tuple((name, hints[name]) for name in names)


def manifest_uris(manifest: Any) -> Iterator[UriUse]:
    """Each location the manifest names, once per value (lists give "field[i]")."""
    yield from _walk(manifest, "")


def _walk(section: Any, prefix: str) -> Iterator[UriUse]:
    for name, annotation in schema_fields(type(section)):
        value, path = getattr(section, name), f"{prefix}.{name}" if prefix else name
        mark = uri_mark(annotation)
        if mark is not None:
            yield from _values(path, value, mark)
        elif is_section(value):
            yield from _walk(value, path)
        elif isinstance(value, (list, tuple)):
            for i, item in enumerate(value):
                if is_section(item):
                    yield from _walk(item, f"{path}[{i}]")


def _values(path: str, value: Any, mark: UriField, key: str = "") -> Iterator[UriUse]:
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _values(f"{path}.{k}", v, mark, str(k))
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            yield from _values(f"{path}[{i}]", item, mark, key)
    elif isinstance(value, str) and not _exempt(value, mark, key):
        yield UriUse(path, value, mark)


def _exempt(value: str, mark: UriField, key: str) -> bool:
    if mark.in_keys and not any(word in key.lower() for word in mark.in_keys):
        return True  # a free-form mapping: only values under path-like keys are locations
    return value in mark.words or (mark.model_ref and value.startswith(BUILTIN))


def refusal(scope: Scope, action: str, uri: str) -> str | None:
    """Why `scope` may not `action` at `uri` (the rule, for the message), or None when it may."""
    if _SCHEME.match(uri) and not uri.startswith(("s3://", "file://")):
        return "unsupported URI scheme (use a path, file:// or s3://)"
    if is_s3(uri) and ".." in uri.split("/"):
        return "'..' is refused in s3:// URIs"
    allowed = scope.may_read(uri) if action == "read" else scope.may_write(uri)
    return None if allowed else f"outside its allowed {action} prefixes"


def scope_violations(scope: Scope, manifest: Any) -> list[tuple[str, str]]:
    """(field path, message) for every use of a location the scope does not allow."""
    out: list[tuple[str, str]] = []
    for use in manifest_uris(manifest):
        for action in use.mark.access:
            rule = refusal(scope, action, use.uri)
            if rule is not None:
                out.append((use.path, f"{scope.who} may not {action} {use.uri}: {rule}"))
    return out


def check_models(manifest: Any, source: str = "manifest") -> Any:
    """The manifest, or ManifestError naming each model reference no worker could load."""
    errors = [FieldError(use.path, problem) for use in model_refs(manifest)
              if (problem := model_problem(use.uri, use.mark.need)) is not None]
    if errors:
        raise ManifestError(source, errors)
    return manifest


def model_refs(manifest: Any) -> list[UriUse]:
    """The model references a job will load (builtin names included: unknown ones are refused)."""
    if getattr(manifest, "engine", None) == "baseline":
        return []  # the model-free baselines never load `model:`
    return [UriUse(path, value, mark) for path, value, mark in _model_values(manifest, "")]


def _model_values(section: Any, prefix: str) -> Iterator[tuple[str, str, UriField]]:
    for name, annotation in schema_fields(type(section)):
        value, path = getattr(section, name), f"{prefix}.{name}" if prefix else name
        mark = uri_mark(annotation)
        if mark is not None and mark.model_ref:
            if isinstance(value, str) and value not in mark.words:
                yield path, value, mark
        elif mark is None and is_section(value):
            yield from _model_values(value, path)
