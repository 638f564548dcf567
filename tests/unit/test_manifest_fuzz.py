"""Fuzzing manifest reading: whatever the text or data, the outcome is a parsed manifest or a
ManifestError, never another exception (which would be a traceback in `validate` or a 500 at
submit). Random YAML-ish text and bytes, random YAML documents, byte-level mutations of the
example manifests, and field-level mutations of them (random values where the schema expects
others). Examples are bounded and the database off, so the module takes a few seconds.
"""

from __future__ import annotations

from pathlib import Path

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jobs.manifest import ManifestError, parse_manifest, parse_manifest_text
from jobs.manifest.load import read_manifest_text
from jobs.manifest.yaml_text import duplicate_json_keys
from tests.support.paths import REPO

EXAMPLES = sorted((REPO / "examples").glob("*.yaml"))
EXAMPLE_BYTES = [p.read_bytes() for p in EXAMPLES]
EXAMPLE_DATA = [yaml.safe_load(b) for b in EXAMPLE_BYTES]
FUZZ = settings(max_examples=150, deadline=None, database=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])

# Characters that mean something to YAML, plus some that it refuses, plus anything.
YAML_CHARS = st.sampled_from(list("&*!|>-?:,[]{}#%@`'\"\n\t \\<=~.0123456789eEx+_abkty") +
                             ["\x00", "\ufeff", "\ud800", "\x85", "---", "...", "<<", "!!python/name:"] +
                             [f"!!{tag} " for tag in ("int", "float", "bool", "timestamp", "binary", "set", "omap")])
yaml_text = st.lists(st.one_of(YAML_CHARS, st.text(max_size=5)), max_size=80).map("".join)
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.integers(min_value=10**17, max_value=10**40),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=20), st.binary(max_size=8),
)
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.one_of(st.text(max_size=8), st.integers()), inner, max_size=4),
), max_leaves=20)


def outcome(run) -> None:
    try:
        run()
    except ManifestError as exc:
        assert exc.errors and all(str(e) for e in exc.errors)


def _paths(data, prefix=()):
    """Every path into nested dicts and lists, the root included."""
    yield prefix
    items = data.items() if isinstance(data, dict) else enumerate(data) if isinstance(data, list) else ()
    for key, child in items:
        yield from _paths(child, (*prefix, key))


def _replace(data, path, value):
    if not path:
        return value
    out = dict(data) if isinstance(data, dict) else list(data)
    out[path[0]] = _replace(out[path[0]], path[1:], value)
    return out


@FUZZ
@given(yaml_text)
def test_random_yaml_text(text):
    outcome(lambda: parse_manifest_text(text))


@FUZZ
@given(st.binary(max_size=200))
def test_random_bytes(raw):
    outcome(lambda: parse_manifest_text(raw))
    assert isinstance(duplicate_json_keys(raw), list)


@FUZZ
@given(values)
def test_random_documents_dumped_as_yaml(data):
    outcome(lambda: parse_manifest_text(yaml.safe_dump(data)))
    outcome(lambda: parse_manifest(data))


@FUZZ
@given(st.sampled_from(EXAMPLE_BYTES), st.data())
def test_byte_mutations_of_the_examples(example, data):
    cut = data.draw(st.integers(0, len(example)))
    how = data.draw(st.sampled_from(["insert", "delete", "replace", "duplicate-line", "truncate"]))
    if how == "insert":
        mutated = example[:cut] + data.draw(yaml_text).encode("utf-8", "surrogatepass") + example[cut:]
    elif how == "delete":
        mutated = example[:cut] + example[cut + data.draw(st.integers(1, 40)):]
    elif how == "replace":
        mutated = example[:cut] + data.draw(st.binary(min_size=1, max_size=4)) + example[cut + 1:]
    elif how == "duplicate-line":
        lines = example.splitlines(keepends=True)
        i = data.draw(st.integers(0, len(lines) - 1))
        mutated = b"".join(lines[: i + 1] + [lines[i]] + lines[i + 1:])
    else:
        mutated = example[:cut]
    outcome(lambda: parse_manifest_text(mutated, "mutated.yaml"))


@FUZZ
@given(st.sampled_from(range(len(EXAMPLE_DATA))), st.data())
def test_field_mutations_of_the_examples(index, data):
    """Hypothesis over the schema: any field of a real manifest gets any value (or vanishes)."""
    original = EXAMPLE_DATA[index]
    path = data.draw(st.sampled_from(list(_paths(original))))
    mutated = _replace(original, path, data.draw(values))
    outcome(lambda: parse_manifest(mutated))
    outcome(lambda: parse_manifest_text(yaml.safe_dump(mutated)))


def test_examples_still_parse():
    for path, raw in zip(EXAMPLES, EXAMPLE_BYTES):
        assert read_manifest_text(raw, str(path)) == yaml.safe_load(raw), path
        parse_manifest_text(raw, Path(path).name)
