"""Training manifests: the examples parse; bad ones are refused with every error and its path."""

from __future__ import annotations

import copy

import pytest

from jobs.manifest import ManifestError, TrainingManifest, load_manifest, parse_manifest
from tests.support.paths import REPO


BASE = {
    "version": 1,
    "kind": "training",
    "name": "t",
    "task": "pretrain",
    "model": {"vocab": "bpe", "vocab_size": 512, "hidden_size": 64, "num_layers": 2, "num_heads": 4},
    "data": {"train": "examples/data/debian-pretrain-sample.parquet", "seq_len": 64},
    "training": {"max_steps": 10},
    "checkpoint": {"uri": "out/t/ckpt"},
    "output": {"uri": "out/t/model"},
}


def with_(**changes) -> dict:
    d = copy.deepcopy(BASE)
    for dotted, value in changes.items():
        node = d
        *parents, leaf = dotted.split("__")
        for p in parents:
            node = node.setdefault(p, {})
        if value is None:
            node.pop(leaf, None)
        else:
            node[leaf] = value
    return d


def paths(data: dict) -> dict[str, str]:
    with pytest.raises(ManifestError) as info:
        parse_manifest(data)
    return {e.path: e.message for e in info.value.errors}


@pytest.mark.parametrize("name", ["pretrain-tiny.yaml", "finetune-classify-debian.yaml"])
def test_examples_parse(name):
    m = load_manifest(REPO / "examples" / name)
    assert isinstance(m, TrainingManifest)
    assert m.resources.workers == 2


def test_minimal_defaults():
    m = parse_manifest(BASE)
    assert m.objective == "causal_lm" and m.deepspeed.zero_stage == 2 and m.deepspeed.precision == "auto"
    assert m.checkpoint.every_steps == 100 and m.checkpoint.keep == 2


def test_every_cross_field_error_at_once_with_paths():
    bad = with_(task="finetune", training__epochs=1, deepspeed__offload_params="cpu", data__eval_fraction=0.1,
                data__eval="x.parquet")
    errors = paths(bad)
    assert set(errors) >= {"model.uri", "model.vocab", "model.vocab_size", "training.max_steps",
                           "deepspeed.offload_params", "data.eval_fraction"}


def test_field_errors_have_paths():
    errors = paths(with_(deepspeed__zero_stage=4, training__micro_batch=0, resources__wrokers=2))
    assert set(errors) == {"deepspeed.zero_stage", "training.micro_batch", "resources.wrokers"}
    assert "unknown field" in errors["resources.wrokers"]


def test_pretrain_shape_checks():
    errors = paths(with_(model__hidden_size=66, model__num_kv_heads=3))
    assert "model.num_heads" in errors and "model.num_kv_heads" in errors


def test_packing_for_causal_lm_and_sft_not_classification():
    assert "data.packing" in paths(with_(objective="classification", data__packing=True))
    assert parse_manifest(with_(objective="sft", data__packing=True)).data.packing is True
    assert parse_manifest(with_(objective="sft", data__packing=False)).data.packing is False


def test_deepspeed_override_checked_by_deepspeed():
    ok = parse_manifest(with_(deepspeed__override={"zero_optimization": {"reduce_bucket_size": 5e7}}))
    assert ok.deepspeed.override["zero_optimization"]["reduce_bucket_size"] == 5e7
    errors = paths(with_(deepspeed__override={"zero_optimization": {"stage": 7, "bogus_knob": 1}}))
    assert "deepspeed.override.zero_optimization.stage" in errors
    assert "deepspeed.override.zero_optimization.bogus_knob" in errors
    errors = paths(with_(deepspeed__override={"train_batch_size": 999}))
    assert "deepspeed.override.train_batch_size" in errors
    errors = paths(with_(deepspeed__override={"fp16": {"enabled": True}, "bf16": {"enabled": True}}))
    assert any(p.startswith("deepspeed.override") for p in errors)


def test_batch_size_identity_uses_worker_count():
    data = with_(resources__workers=4, training__micro_batch=2, training__grad_accum=3,
                 deepspeed__override={"train_batch_size": 24})
    assert parse_manifest(data).resources.workers == 4


def test_manifest_hash_stable_and_sensitive():
    a, b = parse_manifest(BASE), parse_manifest(copy.deepcopy(BASE))
    assert a.manifest_hash() == b.manifest_hash()
    assert parse_manifest(with_(training__max_steps=11)).manifest_hash() != a.manifest_hash()


def test_finetune_needs_no_shape():
    m = parse_manifest(with_(task="finetune", model={"uri": "builtin:smollm2-135m-instruct"},
                             objective="classification"))
    assert m.model.uri == "builtin:smollm2-135m-instruct"
