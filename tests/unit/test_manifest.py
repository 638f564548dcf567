"""Manifest schema v1: every error at once, each with its field path; bad manifests refused whole."""

from __future__ import annotations

import pickle
import subprocess
import sys

import pytest

from jobs.manifest import InferenceManifest, ManifestError, load_manifest, parse_manifest, parse_manifest_text
from tests.support.paths import REPO

GOOD = {
    "name": "ok",
    "task": "summarize",
    "input": {"uri": "data/x.parquet"},
    "output": {"uri": "out/x"},
}


def errors_of(data) -> dict[str, str]:
    with pytest.raises(ManifestError) as info:
        parse_manifest(data)
    return {e.path: e.message for e in info.value.errors}


def test_example_manifest_is_valid():
    m = load_manifest(REPO / "examples" / "summarize-debian.yaml")
    assert isinstance(m, InferenceManifest)
    assert m.task.kind == "summarize" and m.model == "builtin:smollm2-135m-instruct"
    assert m.resources.workers >= 1 and m.output.mode in ("overwrite", "resume", "error_if_exists")


def test_defaults_and_task_shorthand():
    m = parse_manifest(GOOD)
    assert m.task.kind == "summarize"
    assert m.output.mode == "error_if_exists" and m.engine == "auto"
    assert m.input.text_column == "text" and m.input.id_column == "id"


def test_three_mistakes_give_three_errors_with_paths():
    bad = {**GOOD, "task": {"kind": "classify", "labels": ["only-one"]},
           "output": {"uri": "out/x", "mode": "sometimes"}, "params": {"max_new_tokens": -5}}
    errs = errors_of(bad)
    assert set(errs) == {"task.labels", "output.mode", "params.max_new_tokens"}, errs


def test_unknown_fields_are_refused_at_every_level():
    errs = errors_of({**GOOD, "colour": "blue", "input": {"uri": "x", "textcolumn": "t"}})
    assert "colour" in errs and "input.textcolumn" in errs
    assert "unknown field" in errs["colour"]


def test_missing_required_fields():
    errs = errors_of({"name": "x", "task": "summarize"})
    assert errs == {"input": "required field is missing", "output": "required field is missing"}


@pytest.mark.parametrize("task,path,needle", [
    ({"kind": "translate"}, "task", "target_language"),
    ({"kind": "classify"}, "task.labels", "missing"),
    ({"kind": "classify", "labels": ["a", "a"]}, "task.labels", "distinct"),
    ({"kind": "generate", "prompt_template": "no placeholder"}, "task.prompt_template", "{text}"),
    ({"kind": "poetry"}, "task", "kind"),
])
def test_task_specific_requirements(task, path, needle):
    errs = errors_of({**GOOD, "task": task})
    assert path in errs and needle in errs[path], errs


def test_translate_and_generate_accepted():
    m = parse_manifest({**GOOD, "task": {"kind": "translate", "target_language": "fr"}})
    assert m.task.target_language == "fr"
    m = parse_manifest({**GOOD, "task": {"kind": "generate", "prompt_template": "Q: {text}\nA:"}})
    assert m.task.prompt_template.startswith("Q:")


def test_credentials_are_refused():
    errs = errors_of({**GOOD, "input": {"uri": "s3://b/k", "aws_secret_access_key": "x"},
                      "output": {"uri": "AKIAABCDEFGHIJKLMNOP"}})
    assert "input.aws_secret_access_key" in errs and "credential" in errs["input.aws_secret_access_key"]
    assert "output.uri" in errs


def test_yaml_syntax_error_names_the_line():
    with pytest.raises(ManifestError) as info:
        parse_manifest_text("name: x\ntask: [unclosed\n", "bad.yaml")
    assert "line" in str(info.value) and "bad.yaml" in str(info.value)


def test_non_mapping_manifest():
    with pytest.raises(ManifestError):
        parse_manifest_text("- just\n- a list\n")


def test_cli_validate_prints_every_error_and_fails(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "version: 1\nname: bad name\ntask: {kind: translate}\n"
        "input: {uri: x.parquet}\noutput: {uri: out/x, mode: sometimes}\n"
    )
    proc = subprocess.run([sys.executable, "-m", "jobs.cli.main", "validate", str(bad)], capture_output=True,
                          text=True, cwd=REPO)
    assert proc.returncode == 2
    for path in ("name:", "task:", "output.mode:"):
        assert path in proc.stderr, proc.stderr
    assert "3 error(s)" in proc.stderr


def test_cli_validate_ok():
    proc = subprocess.run([sys.executable, "-m", "jobs.cli.main", "validate", "examples/summarize-debian.yaml"],
                          capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0 and proc.stdout.startswith("ok:")


def test_manifest_error_keeps_every_error_through_pickle():
    """It reaches a client from a Ray actor: pickled, and rebuilt from its fields."""
    with pytest.raises(ManifestError) as info:
        parse_manifest({**GOOD, "input": {"uri": ""}, "resources": {"wrokers": 2}})
    copy = pickle.loads(pickle.dumps(info.value))
    assert copy.source == info.value.source and copy.errors == info.value.errors
    assert str(copy) == str(info.value)
    assert {e.path for e in copy.errors} == {"input.uri", "resources.wrokers"}


def test_dtype_and_quantization_default_to_auto_and_none():
    m = parse_manifest({**GOOD, "params": {"dtype": "bfloat16", "quantization": "int8"}})
    assert (m.params.dtype, m.params.quantization) == ("bfloat16", "int8")
    m = parse_manifest(GOOD)
    assert (m.params.dtype, m.params.quantization) == ("auto", "none")


@pytest.mark.parametrize("value,needle", [("fp8", "fp8 is not implemented yet; choose one of: none, int8, w8a8"),
                                          ("int3", "unknown quantization 'int3'; choose one of: none, int8, w8a8")])
def test_unsupported_quantization_is_refused_naming_the_field(value, needle):
    errs = errors_of({**GOOD, "params": {"quantization": value}})
    assert errs == {"params.quantization": needle}


def test_w8a8_is_refused_on_gpu_actors():
    m = parse_manifest({**GOOD, "params": {"quantization": "w8a8"}})
    assert m.params.quantization == "w8a8"
    errs = errors_of({**GOOD, "params": {"quantization": "w8a8"}, "resources": {"gpus_per_worker": 1}})
    assert "CPU actors" in errs["params.quantization"]


def test_unknown_dtype_is_refused():
    assert "params.dtype" in errors_of({**GOOD, "params": {"dtype": "int8"}})


def test_manifest_quantizations_are_the_engines():
    from jobs.manifest import inference
    from llm_core.engine.native.quantize import QUANTIZATIONS

    assert inference.QUANTIZATIONS == QUANTIZATIONS
