"""Training correctness checks before any GPU run: RoPE frequencies stay fp32 through casts,
training placements that cannot work are refused in the manifest, and a resume refuses a
checkpoint that trained another model, data or objective."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from jobs.manifest import ManifestError, parse_manifest
from llm_core.models.config import RopeConfig
from llm_core.models.rope import RotaryEmbedding, inverse_frequencies
from tests.support.paths import REPO
from workers.training import checkpoint as ckpt
from workers.training.resume_check import ResumeRefused, check_checkpoint_matches, training_fingerprint

DATA = REPO / "examples" / "data"


class CharTokenizer:
    eos_token_id, pad_token_id, chat_template = 1, 0, None
LLAMA3 = RopeConfig(theta=500000.0, rope_type="llama3", factor=32.0, low_freq_factor=1.0, high_freq_factor=4.0,
                    original_max_position_embeddings=8192)


@pytest.mark.parametrize("cast", [lambda m: m.bfloat16(), lambda m: m.half(), lambda m: m.to(torch.bfloat16),
                                  lambda m: m.to("cpu", torch.float16), lambda m: m.double()],
                         ids=["bfloat16", "half", "to-bf16", "to-device-fp16", "double"])
def test_rope_frequencies_stay_fp32_through_model_casts(cast):
    fp32 = RotaryEmbedding(LLAMA3, 64)
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), RotaryEmbedding(LLAMA3, 64))
    cast(model)
    rotary = model[1]
    assert model[0].weight.dtype != torch.float32  # the rest of the model was cast
    assert rotary.inv_freq.dtype == torch.float32
    assert torch.equal(rotary.inv_freq, inverse_frequencies(LLAMA3, 64))
    positions = torch.arange(0, 32768, 97)
    cos, sin = rotary(positions, torch.float32)
    want_cos, want_sin = fp32(positions, torch.float32)
    assert torch.equal(cos, want_cos) and torch.equal(sin, want_sin)


def test_rope_frequencies_stay_fp32_when_a_cast_assigns_the_buffer_data():
    """DeepSpeed casts buffers by `b.data = b.data.to(dtype)` when data_types.buffer_dtype is set."""
    rotary = RotaryEmbedding(LLAMA3, 64)
    for b in rotary.buffers():
        b.data = b.data.to(torch.bfloat16)
    positions = torch.arange(0, 32768, 97)
    cos, sin = rotary(positions, torch.float32)
    want_cos, want_sin = RotaryEmbedding(LLAMA3, 64)(positions, torch.float32)
    assert torch.equal(cos, want_cos) and torch.equal(sin, want_sin)
    assert rotary.inv_freq.dtype == torch.float32


def test_a_bf16_cast_frequency_would_have_been_wrong():
    """Why it matters: the angle of a late position from bf16 frequencies is off by radians."""
    inv = inverse_frequencies(LLAMA3, 64)
    err = (32000 * inv.bfloat16().float() - 32000 * inv).abs().max().item()
    assert err > 1.0


BASE = {
    "version": 1, "kind": "training", "name": "t", "task": "pretrain",
    "model": {"vocab": "bpe", "vocab_size": 512, "hidden_size": 64, "num_layers": 2, "num_heads": 4},
    "data": {"train": str(DATA / "debian-pretrain-sample.parquet"), "seq_len": 64},
    "training": {"max_steps": 10}, "checkpoint": {"uri": "out/t/ckpt"}, "output": {"uri": "out/t/model"},
}


def manifest(**sections) -> dict:
    d = copy.deepcopy(BASE)
    for key, value in sections.items():
        d[key] = {**d.get(key, {}), **value} if isinstance(value, dict) else value
    return d


def errors(d: dict) -> dict[str, str]:
    with pytest.raises(ManifestError) as info:
        parse_manifest(d)
    return {e.path: e.message for e in info.value.errors}


@pytest.mark.parametrize("gpus", [0.5, 2, 1.5])
def test_training_gpus_per_worker_is_0_or_1(gpus):
    found = errors(manifest(resources={"gpus_per_worker": gpus}))
    assert "resources.gpus_per_worker" in found and "0 or 1" in found["resources.gpus_per_worker"]


@pytest.mark.parametrize("gpus", [0, 1])
def test_whole_gpus_are_fine(gpus):
    assert parse_manifest(manifest(resources={"gpus_per_worker": gpus})).resources.gpus_per_worker == gpus


def test_compile_is_refused_with_zero3():
    found = errors(manifest(training={"compile": True}, deepspeed={"zero_stage": 3}))
    assert set(found) == {"training.compile"} and "zero_stage 3" in found["training.compile"]
    assert parse_manifest(manifest(training={"compile": True}, deepspeed={"zero_stage": 2})).training.compile


def _fingerprint(tmp_path, **sections):
    sections["checkpoint"] = {"uri": str(tmp_path / "ckpt"), **sections.get("checkpoint", {})}
    m = parse_manifest(manifest(**sections))
    return training_fingerprint(m.training_config(), CharTokenizer(), None)


def _checkpoint(tmp_path, fingerprint) -> None:
    step = tmp_path / "ckpt" / "step-10"
    step.mkdir(parents=True)
    (step / ckpt.META).write_text(json.dumps({"step": 10, "world_size": 2, "samples": 80,
                                              "fingerprint": fingerprint}))
    (step / ckpt.COMPLETE).write_text("")


def test_resume_refuses_another_objective_or_data_naming_it(tmp_path):
    _checkpoint(tmp_path, _fingerprint(tmp_path))
    uri = str(tmp_path / "ckpt")
    other_data = _fingerprint(tmp_path, data={"train": str(DATA / "debian-classify-sample.parquet")})
    with pytest.raises(ResumeRefused, match=r"data\.train: .*debian-pretrain-sample.*-> .*debian-classify-sample"):
        check_checkpoint_matches(uri, other_data)
    with pytest.raises(ResumeRefused, match=r"step-10 trained something else.*objective: causal_lm -> sft"):
        check_checkpoint_matches(uri, _fingerprint(tmp_path, objective="sft"))
    with pytest.raises(ResumeRefused, match=r"model: .*'hidden_size': 64.*-> .*'hidden_size': 128"):
        check_checkpoint_matches(uri, _fingerprint(tmp_path, model={"hidden_size": 128}))
    with pytest.raises(ResumeRefused, match=r"seq_len: 64 -> 128"):
        check_checkpoint_matches(uri, _fingerprint(tmp_path, data={"seq_len": 128}))


def test_resume_accepts_what_may_change(tmp_path):
    _checkpoint(tmp_path, _fingerprint(tmp_path))
    changed = _fingerprint(tmp_path, training={"max_steps": 50, "micro_batch": 2, "grad_accum": 4},
                           optimizer={"lr": 1e-4}, resources={"workers": 3}, checkpoint={"every_steps": 7})
    check_checkpoint_matches(str(tmp_path / "ckpt"), changed)


def test_checkpoints_without_a_fingerprint_resume(tmp_path):
    _checkpoint(tmp_path, None)
    check_checkpoint_matches(str(tmp_path / "ckpt"), _fingerprint(tmp_path, objective="sft"))
    check_checkpoint_matches(str(tmp_path / "nothing-here"), _fingerprint(tmp_path))
