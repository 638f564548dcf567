"""Manifest text -> plain data, refusing what a hostile YAML or JSON document could do to us.

A manifest comes from a tenant, so parsing must finish in bounded time and memory and never
guess: PyYAML's SafeLoader (no Python objects) with its composer and constructor hooks
overridden to refuse

- every anchor and alias (`&name`, `*name`): no manifest needs them, and a 497-byte "billion
  laughs" made of them expands to billions of nodes downstream; refused at the first anchor;
- duplicate keys at any depth (YAML and JSON): otherwise the last one silently wins;
- integers of more than 18 digits and floats that are not finite (`1e999`, `.inf`, `.nan`);
- nesting deeper than 32 levels and texts over 1 MiB;
- bytes that are not UTF-8.

Each refusal is one line with its line and column (or field path), as a `ManifestError`.
"""

from __future__ import annotations

import json
import math
import re
from functools import wraps
from typing import Any

import yaml
from yaml.composer import ComposerError
from yaml.constructor import ConstructorError

from jobs.manifest.errors import FieldError, ManifestError

MAX_BYTES = 1 << 20
MAX_DEPTH = 32
MAX_INT_DIGITS = 18
_MERGE = "tag:yaml.org,2002:merge"
_INT_PREFIX = re.compile(r"^[-+]?(0[xbo])?")


# What PyYAML's scalar constructors raise on a tagged value they cannot read (`!!int ''`,
# `!!bool maybe`, `!!timestamp x`), instead of a YAMLError.
_VALUE_ERRORS = (ValueError, ArithmeticError, TypeError, LookupError, AttributeError)


def _refuse(message: str, mark) -> ConstructorError:
    return ConstructorError(None, None, message, mark)


def _marked(construct):
    """A scalar constructor whose ValueError (`!!int abc`, year 0) becomes a YAML error at the node."""

    @wraps(construct)
    def wrapper(self, node):
        try:
            return construct(self, node)
        except _VALUE_ERRORS as exc:
            detail = f": {exc}" if isinstance(exc, (ValueError, ArithmeticError)) else ""
            raise _refuse(f"{node.value[:40]!r} is not a valid {node.tag.rsplit(':', 1)[-1]}{detail}",
                          node.start_mark) from None

    return wrapper


class ManifestLoader(yaml.SafeLoader):
    """SafeLoader without anchors, aliases, duplicate keys, huge numbers or deep nesting."""

    def __init__(self, stream):
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent, index):
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None):
            raise ComposerError(None, None, "YAML anchors and aliases (&name, *name) are not allowed in a manifest",
                                event.start_mark)
        if self._depth >= MAX_DEPTH:
            raise ComposerError(None, None, f"nested deeper than {MAX_DEPTH} levels", event.start_mark)
        self._depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen = set()
            for key_node, _ in node.value:
                if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == _MERGE:
                    continue  # a complex key (the base class refuses unhashable ones), or `<<`
                key = self.construct_object(key_node)
                if key in seen:
                    raise _refuse(f"duplicate key {key!r} (each field may appear once)", key_node.start_mark)
                seen.add(key)
        return super().construct_mapping(node, deep=deep)

    @_marked
    def construct_yaml_int(self, node):
        digits = _INT_PREFIX.sub("", str(node.value).replace("_", ""))
        if len(digits) > MAX_INT_DIGITS:
            raise _refuse(f"integer of {len(digits)} digits (at most {MAX_INT_DIGITS})", node.start_mark)
        return super().construct_yaml_int(node)

    @_marked
    def construct_yaml_float(self, node):
        value = super().construct_yaml_float(node)
        if not math.isfinite(value):
            raise _refuse(f"number {node.value[:40]!r} is not finite (too large, .inf or .nan)", node.start_mark)
        return value

    construct_yaml_timestamp = _marked(yaml.SafeLoader.construct_yaml_timestamp)
    construct_yaml_bool = _marked(yaml.SafeLoader.construct_yaml_bool)


for _tag in ("int", "float", "timestamp", "bool"):
    ManifestLoader.add_constructor(f"tag:yaml.org,2002:{_tag}", getattr(ManifestLoader, f"construct_yaml_{_tag}"))


def _one_line(exc: yaml.YAMLError, text: str) -> str:
    if isinstance(exc, yaml.reader.ReaderError):  # a character YAML does not allow (control, surrogate)
        line = text.count("\n", 0, exc.position) + 1
        column = exc.position - (text.rfind("\n", 0, exc.position) + 1) + 1
        return f"line {line}, column {column}: character #x{exc.character:04x} is not allowed in YAML"
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
    problem = getattr(exc, "problem", None) or str(exc)
    context = getattr(exc, "context", None)
    return " ".join(f"{where}{context + ', ' if context else ''}{problem}".split())


def decode_text(raw: bytes, source: str) -> str:
    """UTF-8 bytes -> text; anything else is refused with the place of the first bad byte."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        column = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
        raise ManifestError(source, [FieldError("", f"not UTF-8: byte 0x{raw[exc.start]:02x} at line {line}, "
                                                    f"column {column} (manifests are UTF-8 text)")]) from None


def load_yaml_text(text: str, source: str) -> Any:
    """One YAML (or JSON) document -> plain data, or a one-line ManifestError."""
    if len(text) > MAX_BYTES:
        raise ManifestError(source, [FieldError("", f"manifest of {len(text)} characters is over the "
                                                    f"{MAX_BYTES} limit")])
    try:
        return yaml.load(text, Loader=ManifestLoader)  # noqa: S506 - ManifestLoader is a SafeLoader
    except yaml.YAMLError as exc:
        raise ManifestError(source, [FieldError("", f"not valid YAML: {_one_line(exc, text)}")]) from None
    except RecursionError:
        raise ManifestError(source, [FieldError("", "not valid YAML: nested too deeply")]) from None
    except _VALUE_ERRORS as exc:  # a constructor's slip not caught at its node: still one line, no traceback
        raise ManifestError(source, [FieldError("", f"not valid YAML: a value cannot be read "
                                                    f"({type(exc).__name__}: {exc})")]) from None


class _Pairs(list):
    """A JSON object as its (key, value) pairs, duplicates kept, until it is checked."""


def duplicate_json_keys(raw: bytes | str) -> list[FieldError]:
    """Every key that appears twice in one object of a JSON text, with its path.

    `json.loads` keeps the last of two equal keys; the API parses request bodies that way, so it
    asks here first. Text that is not JSON gives no errors: the JSON parser reports those.
    """
    try:
        root = json.loads(raw, object_pairs_hook=_Pairs)
    except (ValueError, RecursionError):
        return []
    found, todo = [], [("", root)]
    while todo:  # iterative: a deeply nested body must not exhaust the stack here
        path, value = todo.pop()
        if isinstance(value, _Pairs):
            seen = set()
            for key, child in value:
                here = f"{path}.{key}" if path else key
                if key in seen:
                    found.append(FieldError(here, "duplicate key (each field may appear once)"))
                seen.add(key)
                todo.append((here, child))
        elif isinstance(value, list):
            todo += [(f"{path}[{i}]", child) for i, child in enumerate(value)]
    return found
