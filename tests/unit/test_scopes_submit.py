"""The scope check over every location a manifest names, and the pre-flight model check.

The schema test decides which fields are URI-like by a rule, so a field added later cannot slip
past the scope check unmarked. The rule: a field that can hold text (str, a list of str, a
free-form mapping; not a Literal or an enum) is URI-like when its name contains one of URI_WORDS,
or when it is or sits in a section that names storage (SECTIONS) - except column names (`*_column`),
which name a Parquet column. Every URI-like field must carry a workers.uri_field mark, or be
listed in NOT_LOCATIONS with the reason it names no location.
"""

from __future__ import annotations

import dataclasses
import enum
import re
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import pytest
from pydantic import BaseModel

from cluster.storage.scope import Scope
from jobs.cli.local import cmd_validate
from jobs.manifest import InferenceManifest, ManifestError, TrainingManifest, parse_manifest
from jobs.manifest.uri_fields import check_models, manifest_uris, schema_fields, scope_violations
from jobs.service.auth import Principal
from jobs.service.queue import AccessDenied, check_manifest
from workers.model_check import model_problem
from workers.uri_field import uri_mark

URI_WORDS = ("uri", "url", "path", "model", "tokenizer", "vocab", "checkpoint", "ckpt", "reference",
             "dir", "folder", "file", "prefix", "location")
SECTIONS = ("input", "output", "data", "checkpoint", "model", "evaluate")
NOT_LOCATIONS = {
    "data.labels": "class names of a classification fine-tune",
    "evaluate.metrics": "metric names (llm_core.metrics.KNOWN_METRICS)",
    "task.examples.items.output": "a few-shot example's answer (text shown to the model)",
}
# The fields the issue names, at least: each must be marked.
MUST_BE_MARKED = {"input.uri", "output.uri", "model", "evaluate.references_uri", "task.train_uri", "model.uri",
                  "model.vocab", "data.train", "data.eval", "checkpoint.uri", "deepspeed.override", "task.examples.uri"}


def _is_section_type(tp: Any) -> bool:
    return isinstance(tp, type) and (issubclass(tp, BaseModel) or dataclasses.is_dataclass(tp))


def _parts(tp: Any) -> list[Any]:
    """The types inside Annotated, Union/Optional, list, tuple and dict."""
    if get_origin(tp) is Annotated:
        return _parts(get_args(tp)[0])
    if get_origin(tp) in (Union, list, tuple, dict) or type(tp).__name__ == "UnionType":
        return [p for arg in get_args(tp) for p in _parts(arg)]
    return [tp]


def _holds_text(tp: Any) -> bool:
    if get_origin(tp) is Annotated:
        return _holds_text(get_args(tp)[0])
    if get_origin(tp) is Literal or (isinstance(tp, type) and issubclass(tp, enum.Enum)):
        return False
    if get_origin(tp) is dict or tp in (str, Any):
        return True
    return any(_holds_text(arg) for arg in get_args(tp) if arg is not type(None))


def schema_report(cls: type, prefix: str = "") -> tuple[set[str], set[str]]:
    """(marked field paths, URI-like field paths without a mark) of a schema, walked recursively."""
    marked, unmarked = set(), set()
    for name, tp in schema_fields(cls):
        path = f"{prefix}.{name}" if prefix else name
        if uri_mark(tp) is not None:
            marked.add(path)
            continue
        for part in _parts(tp):
            if _is_section_type(part):
                sub_marked, sub_unmarked = schema_report(part, path)
                marked |= sub_marked
                unmarked |= sub_unmarked
        uri_like = any(w in name.lower() for w in URI_WORDS) or any(s in SECTIONS for s in path.split("."))
        if _holds_text(tp) and uri_like and not name.endswith("_column") and path not in NOT_LOCATIONS:
            unmarked.add(path)
    return marked, unmarked


@pytest.mark.parametrize("manifest_cls", [InferenceManifest, TrainingManifest])
def test_every_uri_like_field_of_the_schema_is_marked(manifest_cls):
    marked, unmarked = schema_report(manifest_cls)
    assert not unmarked, f"URI-like fields without a workers.uri_field mark: {sorted(unmarked)}"
    assert marked


@dataclasses.dataclass
class _Later:  # fields someone adds later without a mark
    weights_path: str
    extra: dict[str, Any]


class _Sneaky(BaseModel):
    data: _Later
    output: Annotated[str | None, "no mark"] = None


def test_the_fields_the_issue_names_are_marked_and_the_rule_bites():
    marked = schema_report(InferenceManifest)[0] | schema_report(TrainingManifest)[0]
    assert MUST_BE_MARKED <= marked
    assert schema_report(_Sneaky)[1] == {"data.weights_path", "data.extra", "output"}


TEAM_A = Scope(read=("s3://team-a/",), write=("s3://team-a/",), who="token 'tenant-a'")


def training(**over) -> dict:
    m = {"kind": "training", "name": "t", "task": "finetune", "model": {"uri": "s3://team-a/model"},
         "data": {"train": "s3://team-a/train"}, "training": {"max_steps": 2},
         "checkpoint": {"uri": "s3://team-a/ckpt"}, "output": {"uri": "s3://team-a/out"}}
    return {**m, **over}


def inference(**over) -> dict:
    m = {"name": "i", "task": "summarize", "input": {"uri": "s3://team-a/in"}, "output": {"uri": "s3://team-a/out"}}
    return {**m, **over}


def violations(data: dict, scope: Scope = TEAM_A) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for path, msg in scope_violations(scope, parse_manifest(data)):
        out.setdefault(path, []).append(msg)
    return out


def test_every_marked_field_is_walked_lists_included():
    full_training = training(model={"uri": "s3://x/m"}, data={"train": ["s3://x/t0", "s3://x/t1"], "eval": "s3://x/e"},
                             checkpoint={"uri": "s3://x/c"}, output={"uri": "s3://x/o"},
                             deepspeed={"override": {"tensorboard": {"enabled": True, "output_path": "/x/tb"}}})
    pretrain = training(task="pretrain", model={"vocab": "s3://x/tok"})
    full_inference = inference(task={"kind": "classify", "labels": ["a", "b"], "train_uri": "s3://x/ct"},
                               engine="baseline", model="s3://x/m", input={"uri": ["s3://x/i0", "s3://x/i1"]},
                               evaluate={"reference_column": "r", "references_uri": "s3://x/r"})
    tuned_inference = inference(model="s3://x/m", adapter="s3://x/a")
    fewshot_inference = inference(task={"kind": "summarize", "examples": {"uri": ["s3://x/e0", "s3://x/e1"]}})
    seen = {u.path for m in (full_training, pretrain, full_inference, tuned_inference, fewshot_inference)
            for u in manifest_uris(parse_manifest(m))}
    # "data.train[1]" is field data.train; "deepspeed.override.tensorboard.output_path" is deepspeed.override
    fields = {re.sub(r"\[\d+\]$", "", p).split(".override.")[0].replace(".override", "") for p in seen}
    fields = {f + ".override" if f == "deepspeed" else f for f in fields}
    assert fields == {p for cls in (InferenceManifest, TrainingManifest) for p in schema_report(cls)[0]}


def test_training_into_team_b_is_refused_per_field_checkpoint_read_and_write():
    v = violations(training(model={"uri": "s3://team-b/model"}, data={"train": ["s3://team-a/t", "s3://team-b/t"],
                                                                      "eval": "s3://team-b/e"},
                            checkpoint={"uri": "s3://team-b/ckpt"}, output={"uri": "s3://team-b/out", "mode": "overwrite"}))
    assert set(v) == {"model.uri", "data.train[1]", "data.eval", "checkpoint.uri", "output.uri"}
    assert v["checkpoint.uri"] == [
        "token 'tenant-a' may not read s3://team-b/ckpt: outside its allowed read prefixes",
        "token 'tenant-a' may not write s3://team-b/ckpt: outside its allowed write prefixes"]
    read_only_ckpt = Scope(read=("s3://team-a/", "s3://shared/"), write=("s3://team-a/",), who="token 'a'")
    assert violations(training(checkpoint={"uri": "s3://shared/ckpt"}), read_only_ckpt) == {
        "checkpoint.uri": ["token 'a' may not write s3://shared/ckpt: outside its allowed write prefixes"]}


def test_tokenizer_references_baseline_data_and_deepspeed_paths_are_checked():
    assert set(violations(training(task="pretrain", model={"vocab": "s3://team-b/tok"}))) == {"model.vocab"}
    assert violations(training(task="pretrain", model={"vocab": "bpe", "vocab_size": 512})) == {}
    ds = {"override": {"tensorboard": {"enabled": True, "output_path": "/data/tenant-b/tb"}, "steps_per_print": 5}}
    assert set(violations(training(deepspeed=ds))) == {"deepspeed.override.tensorboard.output_path"}
    v = violations(inference(task={"kind": "classify", "labels": ["a", "b"], "train_uri": ["s3://team-b/t"]},
                             engine="baseline", evaluate={"reference_column": "r", "references_uri": "s3://team-b/r"}))
    assert set(v) == {"task.train_uri[0]", "evaluate.references_uri"}


def test_model_references_builtin_names_exempt_and_tricks_refused():
    assert violations(inference(model="builtin:smollm2-135m-instruct")) == {}
    assert violations(training(model={"uri": "builtin:smollm2-135m-instruct"})) == {}
    assert set(violations(inference(model="s3://team-b/m"))) == {"model"}
    tricks = {"s3://team-a-evil/x": "outside its allowed read prefixes",
              "s3://team-a/../team-b/x": "'..' is refused in s3:// URIs",
              "S3://team-a/x": "unsupported URI scheme", "gs://team-a/x": "unsupported URI scheme"}
    for uri, rule in tricks.items():
        (msg,) = violations(inference(input={"uri": uri}))["input.uri"]
        assert msg.startswith(f"token 'tenant-a' may not read {uri}: ") and rule in msg


def test_local_paths_are_normalised_and_symlinks_resolved(tmp_path):
    (tmp_path / "tenant-a").mkdir()
    (tmp_path / "tenant-b").mkdir()
    (tmp_path / "tenant-a" / "link").symlink_to(tmp_path / "tenant-b")
    scope = Scope(read=(f"{tmp_path}/tenant-a/",), write=(f"{tmp_path}/tenant-a/",), who="token 'a'")
    for uri in (f"{tmp_path}/tenant-a/../tenant-b/x", f"{tmp_path}/tenant-a/link/x", f"{tmp_path}/tenant-a-evil/x",
                f"file://{tmp_path}/tenant-b/x"):
        assert set(violations(inference(input={"uri": uri}, output={"uri": f"{tmp_path}/tenant-a/o"}), scope)) == {
            "input.uri"}, uri


def model_folder(path, *names):
    path.mkdir(parents=True)
    for name in names:
        (path / name).write_bytes(b"{}")
    return str(path)


def test_model_problem_names_what_is_missing_in_one_plain_line(tmp_path):
    assert model_problem("/etc") == "/etc is not a model folder (no config.json)"
    assert "unknown built-in model 'nope'" in model_problem("builtin:nope")
    assert model_problem("builtin:smollm2-135m-instruct") is None
    assert "does not exist" in model_problem(str(tmp_path / "none"))
    assert "is not a folder" in model_problem("/etc/hostname")
    no_weights = model_folder(tmp_path / "a", "config.json")
    assert model_problem(no_weights) == f"{no_weights} is not a model folder (no .safetensors or .gguf weights)"
    assert model_problem(model_folder(tmp_path / "b", "config.json", "model.safetensors")) is None
    assert model_problem(model_folder(tmp_path / "c", "config.json", "m.gguf")) is None
    assert "no tokenizer.json" in model_problem(no_weights, need="tokenizer")
    for ref in ("/etc", "builtin:nope", no_weights):
        msg = model_problem(ref)
        assert "\n" not in msg and "\x1b" not in msg


def test_check_models_covers_both_kinds_and_skips_the_baseline(tmp_path):
    with pytest.raises(ManifestError) as err:
        check_models(parse_manifest(inference(model="/etc")))
    assert [str(e) for e in err.value.errors] == ["model: /etc is not a model folder (no config.json)"]
    with pytest.raises(ManifestError) as err:
        check_models(parse_manifest(training(task="pretrain", model={"vocab": "builtin:nope"})))
    assert [e.path for e in err.value.errors] == ["model.vocab"]
    with pytest.raises(ManifestError) as err:
        check_models(parse_manifest(training(model={"uri": str(tmp_path)})))
    assert [e.path for e in err.value.errors] == ["model.uri"]
    baseline = inference(task={"kind": "classify", "labels": ["a", "b"], "train_uri": "s3://team-a/t"},
                         engine="baseline", model="/nowhere")
    check_models(parse_manifest(baseline))  # the baselines load no model


def test_check_manifest_refuses_scope_first_then_a_wrong_model(tmp_path):
    tenant = Principal("tenant-a", (f"{tmp_path}/",), (f"{tmp_path}/",))
    m = inference(input={"uri": str(tmp_path / "in")}, output={"uri": str(tmp_path / "out")})
    with pytest.raises(AccessDenied) as denied:  # outside the scope: never looked at
        check_manifest(tenant, {**m, "model": "/etc"})
    assert [str(e) for e in denied.value.errors] == [
        "model: token 'tenant-a' may not read /etc: outside its allowed read prefixes"]
    with pytest.raises(ManifestError) as wrong:
        check_manifest(tenant, {**m, "model": str(tmp_path)})
    assert [e.path for e in wrong.value.errors] == ["model"]
    with pytest.raises(AccessDenied) as denied:
        check_manifest(tenant, {**m, "output": {"uri": "/elsewhere", "mode": "overwrite"}})
    assert [e.path for e in denied.value.errors] == ["output.uri"]
    assert check_manifest(tenant, m).name == "i"


def test_validate_refuses_a_wrong_model_before_any_worker(tmp_path, capsys):
    path = tmp_path / "job.yaml"
    path.write_text("name: x\ntask: summarize\nmodel: /etc\ninput: {uri: /tmp/in}\noutput: {uri: /tmp/out}\n")
    assert cmd_validate(type("Args", (), {"manifest": str(path)})) == 2
    assert "  model: /etc is not a model folder (no config.json)\n" in capsys.readouterr().err
