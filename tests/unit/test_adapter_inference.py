"""Inference with `adapter:` (a LoRA adapter folder on the base `model:`): the manifest's refusals,
the pre-flight's base check (fingerprint, shape, tensors, hostile folders), the adapter in the run
fingerprint, its resolution on a worker, and the merge before the dtype cast. No Ray: the job end
to end is tests/integration/test_adapter_job.py."""

from __future__ import annotations

import json
import os
import shutil
import struct

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import save_file

from cluster.storage.scope import Scope, canonical
from jobs.manifest import parse_manifest
from jobs.manifest.errors import ManifestError
from jobs.run.inference import fingerprint_of
from jobs.run.preflight import preflight
from jobs.run.preflight.report import plan_lines
from llm_core.engine.select import load_engine
from llm_core.models import load_model
from llm_core.models.config import ModelConfig
from llm_core.models.lora_files import apply_adapter_folder
from llm_core.models.classifier import CLASSIFIER_FILE, LABELS_FILE
from tests.support.adapters import make_adapter, merged_copy
from tests.support.tiny_model import build_tiny_model
from workers.adapter_folder import AdapterChanged, adapter_identity, resolve_adapter
from workers.inference.actor import ShardProcessor
from workers.inference.classifier_head import load_classifier
from workers.output.fingerprint import fingerprint_diff, same_fingerprint


@pytest.fixture(autouse=True)
def empty_model_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LLMBATCH_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def other_model(tmp_path_factory):
    """Another tiny model of another shape (hidden 32): an adapter of tiny_dir does not fit it."""
    return build_tiny_model(tmp_path_factory.mktemp("other"), tokenizer="bpe", hidden_size=32, seed=1)


def job(tmp_path, model, adapter, **over) -> dict:
    src = tmp_path / "in" / "a.parquet"
    if not src.exists():
        src.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.table({"id": ["a", "b"], "text": ["the quick brown fox", "a batch job"]}), src)
    data = {"name": "t", "task": "summarize", "model": str(model), "adapter": str(adapter) if adapter else None,
            "input": {"uri": str(tmp_path / "in")}, "output": {"uri": str(tmp_path / "out")},
            "params": {"max_new_tokens": 8}}
    return {**data, **over}


def plan_of(tmp_path, model, adapter, scope=None, **over):
    return preflight(parse_manifest(job(tmp_path, model, adapter, **over)), scope, probe_output=False)


def adapter_problems(plan) -> list[str]:
    return [p for p in plan.problems if p.startswith("adapter")]


# -- the manifest ------------------------------------------------------------------------------

@pytest.mark.parametrize("engine", ["hf", "baseline"])
def test_adapter_needs_the_native_engine(tmp_path, engine):
    with pytest.raises(ManifestError) as caught:
        parse_manifest(job(tmp_path, "builtin:smollm2-135m-instruct", "/models/a", engine=engine))
    text = str(caught.value)
    assert "adapter" in text and f"engine: {engine}" in text and "merges the adapter" in text


@pytest.mark.parametrize("adapter, says", [("builtin:smollm2-135m-instruct", "not a built-in model"),
                                           ("/models/base/", "same folder as model"), ("  ", "name an adapter")])
def test_adapter_that_cannot_be_one_is_refused(tmp_path, adapter, says):
    with pytest.raises(ManifestError) as caught:
        parse_manifest(job(tmp_path, "/models/base", adapter))
    assert "adapter" in str(caught.value) and says in str(caught.value)


def test_adapter_with_auto_or_native_and_int8_is_accepted(tmp_path):
    for engine in ("auto", "native"):
        m = parse_manifest(job(tmp_path, "/models/base", "s3://b/adapters/a", engine=engine,
                               params={"quantization": "int8"}))
        assert m.adapter == "s3://b/adapters/a"


# -- pre-flight ---------------------------------------------------------------------------------

def test_adapter_trained_on_the_model_passes_and_enters_the_fingerprint(tmp_path, tiny_dir):
    adapter = make_adapter(tmp_path / "adapter", tiny_dir)
    plan = plan_of(tmp_path, tiny_dir, adapter)
    assert plan.ok, plan.problems
    assert plan.adapter["kind"] == "local" and set(plan.adapter["files"]) == {"adapter_config.json",
                                                                              "adapter_model.safetensors"}
    assert any("trained on this model" in c for c in plan.checked)
    assert any(line.startswith("adapter: ") for line in plan_lines(plan, title="plan", model_ref=str(tiny_dir)))
    m = parse_manifest(job(tmp_path, tiny_dir, adapter))
    assert fingerprint_of(m, plan)["adapter"] == plan.adapter
    without = preflight(parse_manifest(job(tmp_path, tiny_dir, None)), probe_output=False)
    assert "adapter" not in fingerprint_of(parse_manifest(job(tmp_path, tiny_dir, None)), without)


def test_adapter_of_another_base_is_refused_naming_both(tmp_path, tiny_dir, other_model):
    adapter = make_adapter(tmp_path / "adapter", tiny_dir)
    plan = plan_of(tmp_path, other_model, adapter)
    problems = adapter_problems(plan)
    assert any(f"was trained on {tiny_dir}" in p and f"not on model {other_model}" in p for p in problems), problems
    assert any("another shape" in p and "hidden_size 64 -> 32" in p for p in problems), problems


def test_same_identity_but_other_recorded_shape_is_refused(tmp_path, tiny_dir, other_model):
    # the digest matches (a tampered or careless config): the recorded shape still has to be the model's
    adapter = make_adapter(tmp_path / "adapter", tiny_dir, base_config=ModelConfig.from_folder(other_model))
    problems = adapter_problems(plan_of(tmp_path, tiny_dir, adapter))
    assert len(problems) == 1 and "another shape" in problems[0] and "hidden_size 32 -> 64" in problems[0]


def test_a_copy_of_the_base_elsewhere_is_the_same_model(tmp_path, tiny_dir):
    copy = shutil.copytree(tiny_dir, tmp_path / "copy")
    adapter = make_adapter(tmp_path / "adapter", tiny_dir)
    plan = plan_of(tmp_path, copy, adapter)
    assert plan.ok, plan.problems
    assert any("same model files" in c for c in plan.checked)


def test_adapter_from_another_trainer_is_checked_by_shapes_with_a_warning(tmp_path, tiny_dir, other_model):
    adapter = make_adapter(tmp_path / "adapter", tiny_dir)
    config = json.loads((adapter / "adapter_config.json").read_text())
    del config["llmbatch"]  # as PEFT writes it
    (adapter / "adapter_config.json").write_text(json.dumps(config))
    plan = plan_of(tmp_path, tiny_dir, adapter)
    assert plan.ok, plan.problems
    assert any("could not be verified by fingerprint" in w for w in plan.warnings)
    problems = adapter_problems(plan_of(tmp_path, other_model, adapter))
    assert problems and "shapes do not fit the model" in problems[0] and "hidden_size 32" in problems[0]


def test_a_model_the_native_engine_cannot_run_is_refused(tmp_path, tiny_dir):
    adapter = make_adapter(tmp_path / "adapter", tiny_dir)
    gelu = shutil.copytree(tiny_dir, tmp_path / "gelu")
    config = json.loads((gelu / "config.json").read_text())
    (gelu / "config.json").write_text(json.dumps({**config, "hidden_act": "gelu"}))
    problems = adapter_problems(plan_of(tmp_path, gelu, adapter))
    assert problems == [f"adapter: model {gelu} cannot take it: architecture 'llama' is not supported by the "
                        "native engine, which an adapter needs"]


def test_tensors_that_do_not_match_the_config_are_refused(tmp_path, tiny_dir):
    adapter = make_adapter(tmp_path / "adapter", tiny_dir, targets=("q_proj", "v_proj"))
    config = json.loads((adapter / "adapter_config.json").read_text())
    config["target_modules"] = ["q_proj", "v_proj", "o_proj"]  # no o_proj matrices in the file
    (adapter / "adapter_config.json").write_text(json.dumps(config))
    problems = adapter_problems(plan_of(tmp_path, tiny_dir, adapter))
    assert problems and "LoRA matrices missing" in problems[0] and "o_proj" in problems[0]


def _set(adapter, **fields):
    config = json.loads((adapter / "adapter_config.json").read_text())
    config.update(fields)
    (adapter / "adapter_config.json").write_text(json.dumps(config))


HOSTILE_CONFIGS = [
    ({"r": 10**9}, "r is"),
    ({"use_dora": True}, "use_dora"),
    ({"target_modules": ["lm_head"]}, "target_modules"),
    ({"peft_type": "PROMPT_TUNING"}, "peft_type"),
    ({"llmbatch": {"base_digest": "../../etc"}}, "base_digest"),
]


@pytest.mark.parametrize("fields, says", HOSTILE_CONFIGS)
def test_hostile_adapter_config_is_refused_at_preflight(tmp_path, tiny_dir, fields, says):
    adapter = make_adapter(tmp_path / "adapter", tiny_dir)
    _set(adapter, **fields)
    problems = adapter_problems(plan_of(tmp_path, tiny_dir, adapter))
    assert len(problems) == 1 and says in problems[0] and "adapter_config.json" in problems[0], problems


def test_hostile_adapter_files_are_refused_at_preflight(tmp_path, tiny_dir):
    adapter = make_adapter(tmp_path / "adapter", tiny_dir)
    (adapter / "adapter_config.json").write_text('{"r": NaN')
    assert "not valid JSON" in adapter_problems(plan_of(tmp_path, tiny_dir, adapter))[0]

    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "adapter_config.json").write_text("{}")
    (pickled / "adapter_model.bin").write_bytes(b"\x80\x04pickle")
    assert "pickle" in adapter_problems(plan_of(tmp_path, tiny_dir, pickled))[0]

    huge = make_adapter(tmp_path / "huge", tiny_dir)
    (huge / "adapter_model.safetensors").write_bytes(struct.pack("<Q", 2**40) + b"{}")
    assert "safetensors header" in adapter_problems(plan_of(tmp_path, tiny_dir, huge))[0]

    assert "not found" in adapter_problems(plan_of(tmp_path, tiny_dir, tmp_path / "nowhere"))[0]


def test_adapter_outside_the_scope_or_linking_out_of_it_is_refused(tmp_path, tiny_dir):
    outside = make_adapter(tmp_path / "elsewhere" / "adapter", tiny_dir)
    inside = tmp_path / "tenant"
    inside.mkdir()
    scope = Scope(read=(canonical(str(inside)), canonical(str(tiny_dir))), write=(canonical(str(inside)),),
                  who="tenant t")
    src = inside / "in" / "a.parquet"
    src.parent.mkdir()
    pq.write_table(pa.table({"id": ["a"], "text": ["x"]}), src)
    over = {"input": {"uri": str(inside / "in")}, "output": {"uri": str(inside / "out")}}
    problems = adapter_problems(plan_of(tmp_path, tiny_dir, outside, scope, **over))
    assert problems and "tenant t may not read" in problems[0]
    linked = inside / "adapter"
    linked.mkdir()
    os.symlink(outside / "adapter_model.safetensors", linked / "adapter_model.safetensors")
    (linked / "adapter_config.json").write_bytes((outside / "adapter_config.json").read_bytes())
    problems = adapter_problems(plan_of(tmp_path, tiny_dir, linked, scope, **over))
    assert problems and "tenant t may not read" in problems[0]


# -- fingerprint and workers ----------------------------------------------------------------------

def test_a_changed_adapter_changes_the_fingerprint_and_the_diff_names_it(tmp_path, tiny_dir):
    adapter = make_adapter(tmp_path / "adapter", tiny_dir)
    m = parse_manifest(job(tmp_path, tiny_dir, adapter))
    before = fingerprint_of(m, plan_of(tmp_path, tiny_dir, adapter))
    make_adapter(adapter, tiny_dir, seed=5)  # retrained in place: new matrices
    after = fingerprint_of(m, plan_of(tmp_path, tiny_dir, adapter))
    assert not same_fingerprint(before, after)
    lines = fingerprint_diff(before, after)
    assert lines == [next(line for line in lines if line.startswith("adapter: adapter_model.safetensors sha256"))]
    without = {k: v for k, v in before.items() if k != "adapter"}
    assert fingerprint_diff(without, before) == [f"adapter: added ({adapter.resolve()})"]


def test_a_worker_refuses_an_adapter_changed_since_preflight(tmp_path, tiny_dir):
    adapter = make_adapter(tmp_path / "adapter", tiny_dir)
    planned = adapter_identity(str(adapter))
    assert resolve_adapter(str(adapter), expect=planned) == adapter.resolve()
    make_adapter(adapter, tiny_dir, seed=7)
    with pytest.raises(AdapterChanged, match=r"adapter .* changed since the job started: adapter_model.safetensors"):
        resolve_adapter(str(adapter), expect=planned)


def test_the_adapter_is_merged_before_the_dtype_cast(tmp_path, tiny_dir):
    adapter = make_adapter(tmp_path / "adapter", tiny_dir)
    merged32, _ = load_model(tiny_dir, "cpu", "float32")
    apply_adapter_folder(merged32, adapter)
    bf16, _ = load_model(tiny_dir, "cpu", "bfloat16", adapter_dir=adapter)
    base, _ = load_model(tiny_dir, "cpu", "bfloat16")
    for (name, want), got, plain in zip(merged32.named_parameters(), bf16.parameters(), base.parameters()):
        assert got.dtype == torch.bfloat16
        assert torch.equal(got, want.to(torch.bfloat16)), name  # one rounding of base + adapter
    changed = [n for (n, p), b in zip(bf16.named_parameters(), base.parameters()) if not torch.equal(p, b)]
    assert changed and all("qkv_proj" in n or "down_proj" in n for n in changed)
    assert bf16.rotary.inv_freq.dtype == torch.float32


def test_engines_without_the_merge_refuse_an_adapter(tmp_path, tiny_dir):
    adapter = make_adapter(tmp_path / "adapter", tiny_dir)
    with pytest.raises(ValueError, match="adapter needs the native engine"):
        load_engine(tiny_dir, "hf", "cpu", adapter_dir=adapter)


def test_a_classification_adapter_runs_base_plus_merged_adapter_plus_head(tmp_path, tiny_dir):
    labels = ["net", "python", "utils"]
    adapter = make_adapter(tmp_path / "adapter", tiny_dir, extra={"task": "classification", "max_tokens": 32})
    torch.manual_seed(3)
    head = {"weight": torch.randn(len(labels), 64), "bias": torch.zeros(len(labels))}
    save_file(head, str(adapter / CLASSIFIER_FILE))
    (adapter / LABELS_FILE).write_text(json.dumps(labels))
    assert plan_of(tmp_path, tiny_dir, adapter, task={"kind": "classify", "labels": labels[::-1]}).ok
    wrong = plan_of(tmp_path, tiny_dir, adapter, task={"kind": "classify", "labels": ["cats", "dogs"]})
    assert any(p.startswith("task.labels: the adapter's classifier head knows labels") for p in wrong.problems)
    summarize = adapter_problems(plan_of(tmp_path, tiny_dir, adapter))
    assert summarize and "classify jobs only, not summarize" in summarize[0]

    # the same classifier as one folder: the adapter merged by hand, the head and labels beside it
    whole = merged_copy(tiny_dir, adapter, tmp_path / "whole")
    config = json.loads((whole / "config.json").read_text())
    (whole / "config.json").write_text(json.dumps({**config, "llmbatch_task": "classification",
                                                   "llmbatch_max_tokens": 32}))
    shutil.copy(adapter / CLASSIFIER_FILE, whole / CLASSIFIER_FILE)
    shutil.copy(adapter / LABELS_FILE, whole / LABELS_FILE)

    texts = [f"package {i} does {'networking' if i % 2 else 'python'} things" for i in range(8)]
    actor = ShardProcessor(str(tiny_dir), device="cpu", dtype="float32", adapter_ref=str(adapter),
                           adapter_identity=adapter_identity(str(adapter)))
    assert actor.llm.engine.name == "classifier-head" and actor.llm.max_tokens == 32
    got = actor.llm.predict_proba(texts)
    want = load_classifier(whole, device="cpu", dtype="float32").predict_proba(texts)
    assert torch.allclose(torch.tensor(got), torch.tensor(want), atol=1e-5)
    base_only = ShardProcessor(str(tiny_dir), device="cpu", dtype="float32")
    assert base_only.llm.engine.name == "native"  # no adapter: the plain language model
