"""`task.examples` in manifests and on the driver: refusals that name the field, file and row; the
Parquet pool loaded once, bounded and scope-checked; the TaskSpec that carries it to the workers."""

from __future__ import annotations

import pickle

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cluster.storage.scope import Scope, canonical
from jobs.manifest import ManifestError, parse_manifest
from jobs.run import examples as examples_module
from jobs.run.examples import examples_digest, fewshot_spec
from jobs.run.preflight import Plan
from jobs.run.preflight.prompts import check_examples
from jobs.run.work import build_work, task_spec
from llm_core.fewshot import Example


def manifest(tmp_path, task):
    return parse_manifest({"name": "t", "task": task, "input": {"uri": str(tmp_path / "in.parquet")},
                           "output": {"uri": str(tmp_path / "out")}})


def refusal(tmp_path, task) -> str:
    with pytest.raises(ManifestError) as caught:
        manifest(tmp_path, task)
    return str(caught.value)


def write(path, **columns):
    pq.write_table(pa.table(columns), path)
    return str(path)


@pytest.mark.parametrize("task, words", [
    ({"kind": "classify", "labels": ["net", "mail"], "examples": [{"text": "x", "output": "web"}]},
     ["examples.items[0].output", "'web' is not one of the labels"]),
    ({"kind": "summarize", "examples": {"uri": "e.parquet", "items": [{"text": "a", "output": "b"}]}},
     ["task.examples", "exactly one of items"]),
    ({"kind": "summarize", "examples": {"k": 2}}, ["task.examples", "exactly one of items"]),
    ({"kind": "summarize", "examples": {"uri": "e.parquet", "k": 0}}, ["task.examples.k"]),
    ({"kind": "summarize", "examples": {"uri": "e.parquet", "select": "nearest"}}, ["task.examples.select"]),
    ({"kind": "summarize", "examples": {"uri": "e.parquet", "max_example_tokens": 1}},
     ["task.examples.max_example_tokens"]),
    ({"kind": "summarize", "examples": [{"text": " ", "output": "b"}]}, ["task.examples.items[0].text", "blank"]),
    ({"kind": "summarize", "examples": []}, ["task.examples.items"]),
    ({"kind": "summarize", "examples": [{"text": "a", "output": "b", "target_language": "fr"}]},
     ["examples.items[0].target_language", "only for translate"]),
    ({"kind": "translate", "target_language_column": "lang", "examples": [{"text": "a", "output": "b"}]},
     ["examples.items[0].target_language", "required"]),
    ({"kind": "translate", "target_language_column": "lang", "examples": {"uri": "e.parquet"}},
     ["examples.target_language_column", "required"]),
    ({"kind": "translate", "target_language": "fr", "examples": [{"text": "a", "output": "b", "target_language": "de"}]},
     ["examples.items[0].target_language", "never be used"]),
    ({"kind": "summarize", "calibrate": False}, ["task.calibrate", "unknown field"]),
])
def test_bad_examples_are_refused_naming_the_field(tmp_path, task, words):
    message = refusal(tmp_path, task)
    assert all(w in message for w in words), message


def test_good_examples_and_calibration_defaults(tmp_path):
    m = manifest(tmp_path, {"kind": "classify", "labels": ["net", "mail"],
                            "examples": [{"text": "a daemon", "output": "net"}]})
    assert m.task.calibrate == "batch" and m.task.examples.k == 3 and m.task.examples.select == "similar"
    spec = task_spec(m)
    assert spec.calibrate == "batch" and spec.fewshot.examples == (Example("a daemon", "net"),)
    off = manifest(tmp_path, {"kind": "classify", "labels": ["net", "mail"], "calibrate": False})
    assert task_spec(off).calibrate is False and task_spec(off).fewshot is None
    fr = manifest(tmp_path, {"kind": "translate", "target_language": "fr",
                             "examples": [{"text": "cat", "output": "chat", "target_language": "French"}]})
    assert task_spec(fr).fewshot.examples[0].target_language == "French"


def test_a_file_of_examples_is_loaded_on_the_driver_and_travels_in_the_work(tmp_path):
    uri = write(tmp_path / "ex.parquet", body=["a network daemon", "a mail client"], answer=["net", "mail"])
    m = manifest(tmp_path, {"kind": "classify", "labels": ["net", "mail"],
                            "examples": {"uri": uri, "text_column": "body", "output_column": "answer",
                                         "k": 1, "select": "random", "seed": 5}})
    with pytest.raises(ValueError, match="task.examples.uri"):
        task_spec(m)  # a file's examples come loaded, never read again by whoever builds the spec
    plan = Plan()
    spec = check_examples(m, plan, None)
    assert plan.problems == [] and spec.examples == (Example("a network daemon", "net"), Example("a mail client", "mail"))
    assert plan.examples == spec  # for the prompt check and the run: loaded once
    assert (spec.k, spec.select, spec.seed) == (1, "random", 5)
    work = build_work(m, "job", fewshot=spec)
    assert pickle.loads(pickle.dumps(work)).task.fewshot == spec
    assert examples_digest(spec) == examples_digest(fewshot_spec(m, spec.examples))
    other = fewshot_spec(m, (Example("a network daemon", "mail"), Example("a mail client", "mail")))
    assert examples_digest(other) != examples_digest(spec)


@pytest.mark.parametrize("columns, task_extra, words", [
    ({"text": ["ok", None], "output": ["net", "net"]}, {}, ["ex.parquet row 1", "text is empty"]),
    ({"text": ["ok", "fine"], "output": ["net", ""]}, {}, ["ex.parquet row 1", "output is empty"]),
    ({"text": ["ok", "fine"], "output": ["net", "web"]}, {}, ["ex.parquet row 1", "'web' is not one of the labels"]),
    ({"text": ["ok"], "answer": ["net"]}, {}, ["ex.parquet", "no column 'output'", "columns: text, answer"]),
    ({"text": pa.array([], pa.string()), "output": pa.array([], pa.string())}, {}, ["holds no rows"]),
])
def test_a_bad_examples_file_is_refused_naming_file_and_row(tmp_path, columns, task_extra, words):
    uri = write(tmp_path / "ex.parquet", **columns)
    m = manifest(tmp_path, {"kind": "classify", "labels": ["net", "mail"], "examples": {"uri": uri}, **task_extra})
    plan = Plan()
    assert check_examples(m, plan, None) is None
    [problem] = plan.problems
    assert problem.startswith("task.examples.uri: ") and all(w in problem for w in words), problem


def test_a_missing_file_and_a_file_outside_the_scope_are_refused(tmp_path):
    m = manifest(tmp_path, {"kind": "summarize", "examples": {"uri": str(tmp_path / "none.parquet")}})
    plan = Plan()
    check_examples(m, plan, None)
    assert len(plan.problems) == 1 and plan.problems[0].startswith("task.examples.uri: ")
    assert "none.parquet" in plan.problems[0]
    (tmp_path / "secret").mkdir()
    uri = write(tmp_path / "secret" / "ex.parquet", text=["a"], output=["b"])
    m = manifest(tmp_path, {"kind": "summarize", "examples": {"uri": uri}})
    scope = Scope(read=(canonical(str(tmp_path / "public")),), write=(), who="token t")
    plan = Plan()
    assert check_examples(m, plan, scope) is None
    assert plan.problems[0].startswith("task.examples.uri: ") and "token t" in plan.problems[0]


def test_translate_examples_need_their_language_when_rows_name_theirs(tmp_path):
    uri = write(tmp_path / "ex.parquet", text=["cat", "dog"], output=["chat", "Hund"], lang=["fr", None])
    m = manifest(tmp_path, {"kind": "translate", "target_language_column": "tl",
                            "examples": {"uri": uri, "target_language_column": "lang"}})
    plan = Plan()
    check_examples(m, plan, None)
    assert "ex.parquet row 1" in plan.problems[0] and "lang is empty" in plan.problems[0]
    fixed = manifest(tmp_path, {"kind": "translate", "target_language": "es",
                                "examples": {"uri": uri, "target_language_column": "lang"}})
    plan = Plan()
    check_examples(fixed, plan, None)
    assert plan.problems == []  # the row without a language is taken to be in Spanish: usable
    only_fr = write(tmp_path / "fr.parquet", text=["cat"], output=["chat"], lang=["fr"])
    fixed = manifest(tmp_path, {"kind": "translate", "target_language": "es",
                                "examples": {"uri": only_fr, "target_language_column": "lang"}})
    plan = Plan()
    check_examples(fixed, plan, None)
    assert "no example has the task's target_language 'es'" in plan.problems[0]


def test_a_large_file_is_sampled_down_to_the_pool_bound_with_a_warning(tmp_path, monkeypatch):
    monkeypatch.setattr(examples_module, "MAX_POOL", 10)
    n = 25
    uri = write(tmp_path / "ex.parquet", text=[f"text {i}" for i in range(n)], output=[f"out {i}" for i in range(n)])
    m = manifest(tmp_path, {"kind": "summarize", "examples": {"uri": uri, "seed": 1, "max_example_tokens": 8}})
    plan = Plan()
    spec = check_examples(m, plan, None)
    assert len(spec.examples) == 10 and "25 rows" in plan.warnings[0]
    order = [int(e.text.split()[1]) for e in spec.examples]
    assert order == sorted(order)  # file order kept
    again = check_examples(m, Plan(), None)
    assert again == spec  # the same sample every time: a resume builds the same prompts


def test_stored_examples_are_cut_to_a_bound(tmp_path):
    uri = write(tmp_path / "ex.parquet", text=["word " * 1000], output=["summary " * 1000])
    m = manifest(tmp_path, {"kind": "summarize", "examples": {"uri": uri, "max_example_tokens": 8}})
    spec = check_examples(m, Plan(), None)
    assert len(spec.examples[0].text) == len(spec.examples[0].output) == 8 * 16
