"""Manifest `evaluate:` block and `engine: baseline`: defaults, and errors with their field paths."""

from __future__ import annotations

import pytest

from jobs.manifest import ManifestError, parse_manifest

BASE = {"name": "ok", "task": "summarize", "input": {"uri": "data/x.parquet"}, "output": {"uri": "out/x"}}
CLASSIFY = {"kind": "classify", "labels": ["perl", "python"]}


def errors_of(data) -> dict[str, str]:
    with pytest.raises(ManifestError) as info:
        parse_manifest(data)
    return {e.path: e.message for e in info.value.errors}


def test_no_evaluate_by_default_and_evaluate_defaults():
    assert parse_manifest(BASE).evaluate is None
    m = parse_manifest({**BASE, "evaluate": {"reference_column": "reference"}})
    assert m.evaluate.reference_column == "reference"
    assert m.evaluate.references_uri is None and m.evaluate.metrics is None and m.evaluate.use_stemmer is False


def test_evaluate_with_every_field():
    m = parse_manifest({**BASE, "evaluate": {"reference_column": "synopsis", "references_uri": ["a.parquet"],
                                             "metrics": ["rouge1", "rougeL"], "use_stemmer": True}})
    assert m.evaluate.references_uri == ["a.parquet"] and m.evaluate.metrics == ["rouge1", "rougeL"]


def test_evaluate_does_not_change_the_fingerprint_but_changes_the_hash():
    from cluster.storage import FileRef
    from jobs.run.inference import fingerprint_of
    from jobs.run.preflight import Plan

    plan = Plan(files=[FileRef("/data/in.parquet", 10, "1")], rows=1, id_type="string", model={"kind": "builtin"})
    plain = parse_manifest(BASE)
    scored = parse_manifest({**BASE, "evaluate": {"reference_column": "reference"}})
    assert fingerprint_of(plain, plan) == fingerprint_of(scored, plan)  # resuming with an evaluate block added is fine
    assert plain.manifest_hash() != scored.manifest_hash()
    changed = parse_manifest({**BASE, "params": {"max_new_tokens": 7}})
    assert fingerprint_of(changed, plan) != fingerprint_of(plain, plan)


def test_evaluate_errors_have_paths():
    errs = errors_of({**BASE, "evaluate": {"metrics": ["rouge1", "meteor"], "colour": 1}})
    assert set(errs) == {"evaluate.reference_column", "evaluate.metrics", "evaluate.colour"}, errs
    assert "meteor" in errs["evaluate.metrics"]
    assert "evaluate.metrics" in errors_of({**BASE, "evaluate": {"reference_column": "r", "metrics": []}})


def test_generate_needs_named_metrics():
    generate = {"kind": "generate", "prompt_template": "Answer: {text}"}
    errs = errors_of({**BASE, "task": generate, "evaluate": {"reference_column": "r"}})
    assert set(errs) == {"evaluate.metrics"}, errs
    m = parse_manifest({**BASE, "task": generate, "evaluate": {"reference_column": "r", "metrics": ["chrf"]}})
    assert m.evaluate.metrics == ["chrf"]


def test_engine_baseline_for_summarize_and_translate():
    assert parse_manifest({**BASE, "engine": "baseline"}).engine == "baseline"
    translate = {"kind": "translate", "target_language": "fr"}
    assert parse_manifest({**BASE, "task": translate, "engine": "baseline"}).engine == "baseline"
    assert set(errors_of({**BASE, "engine": "tgi"})) == {"engine"}  # not an engine we run


def test_baseline_classify_needs_train_uri():
    errs = errors_of({**BASE, "task": CLASSIFY, "engine": "baseline"})
    assert set(errs) == {"task.train_uri"}, errs
    m = parse_manifest({**BASE, "task": {**CLASSIFY, "train_uri": "train.parquet"}, "engine": "baseline"})
    assert m.task.train_uri == "train.parquet" and m.task.train_label_column == "label"


def test_train_uri_only_with_the_baseline_engine():
    errs = errors_of({**BASE, "task": {**CLASSIFY, "train_uri": "train.parquet"}})
    assert set(errs) == {"task.train_uri"}, errs


def test_no_baseline_for_generate():
    errs = errors_of({**BASE, "task": {"kind": "generate", "prompt_template": "{text}"}, "engine": "baseline"})
    assert set(errs) == {"engine"}, errs


def test_cross_field_errors_come_together():
    errs = errors_of({**BASE, "task": {"kind": "generate", "prompt_template": "{text}"}, "engine": "baseline",
                      "evaluate": {"reference_column": "r"}})
    assert set(errs) == {"engine", "evaluate.metrics"}, errs
