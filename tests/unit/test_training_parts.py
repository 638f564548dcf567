"""The training loop's parts without Ray: data order and resume start, LR schedule, checkpoint
bookkeeping, the DeepSpeed config, throughput arithmetic."""

from __future__ import annotations

import itertools

import pytest
import torch

from jobs.manifest import parse_manifest
from workers.training import checkpoint as ckpt
from workers.training.data import global_rows, list_units, train_batches
from workers.training.encode import IGNORE, Encoder, collate
from workers.training.deepspeed import deepspeed_config
from workers.training.metrics import flops_per_token, mfu
from tests.support.paths import REPO
from workers.training.optim import lr_factor

PRETRAIN = str(REPO / "examples" / "data" / "debian-pretrain-sample.parquet")


def manifest(**over):
    d = {
        "version": 1, "kind": "training", "name": "t", "task": "pretrain",
        "model": {"vocab": "builtin:smollm2-135m-instruct", "hidden_size": 64, "num_layers": 2, "num_heads": 4},
        "data": {"train": PRETRAIN, "seq_len": 32},
        "training": {"max_steps": 10, "micro_batch": 4},
        "checkpoint": {"uri": "/tmp/x"}, "output": {"uri": "/tmp/y"},
    }
    for k, v in over.items():
        d[k] = {**d.get(k, {}), **v} if isinstance(v, dict) else v
    return parse_manifest(d)


class CharTokenizer:
    """A stand-in with the two calls the Encoder makes: enough to test packing and masking."""

    eos_token_id, pad_token_id, chat_template = 1, 0, None

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [2 + (ord(c) % 200) for c in text]}


def test_epoch_order_is_deterministic_and_changes_per_epoch():
    units = list_units(PRETRAIN)
    assert len(units) == 8  # 2,000 rows in row groups of 250
    a = [r["id"] for r in global_rows(units, ["id"], seed=1, epoch=0)]
    assert len(a) == len(set(a)) == 2000
    assert a == [r["id"] for r in global_rows(units, ["id"], seed=1, epoch=0)]
    assert a != [r["id"] for r in global_rows(units, ["id"], seed=1, epoch=1)]


def test_resume_start_sees_exactly_the_remaining_batches():
    m = manifest().training_config()
    enc = Encoder(m, CharTokenizer(), None)
    full = list(itertools.islice(train_batches(m, enc, 1, 2), 12))
    # 7 micro-batches of 4 on each of 2 ranks trained: the checkpoint records 56 global samples.
    resumed = list(itertools.islice(train_batches(m, enc, 1, 2, start=7 * 4 * 2), 5))
    for a, b in zip(full[7:], resumed):
        assert torch.equal(a["input_ids"], b["input_ids"])


def test_packing_fills_every_sequence():
    m = manifest().training_config()
    batch = next(train_batches(m, Encoder(m, CharTokenizer(), None), 0, 1))
    assert batch["input_ids"].shape == (4, 32) and bool(batch["attention_mask"].all())


def test_sft_masks_the_prompt():
    m = manifest(objective="sft", data={"train": PRETRAIN, "seq_len": 64}).training_config()
    sample = Encoder(m, CharTokenizer(), None)._sft({"prompt": "abc", "response": "xy"})
    assert sample["labels"][:4] == [IGNORE] * 4  # "abc\n"
    assert sample["labels"][4:] == sample["input_ids"][4:] and sample["labels"][-1] == 1


def test_collate_pads_right_with_ignored_labels():
    b = collate([{"input_ids": [5, 6, 7], "labels": [5, 6, 7]}, {"input_ids": [8], "labels": [8]}], pad_id=0)
    assert b["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert b["labels"][1].tolist() == [8, IGNORE, IGNORE] and b["attention_mask"][1].tolist() == [1, 0, 0]


def test_lr_schedule_warmup_then_decay_to_floor():
    spec = manifest(optimizer={"warmup_steps": 10, "schedule": "cosine", "min_lr_ratio": 0.1}).optimizer
    assert lr_factor(0, 100, spec) == pytest.approx(0.1)
    assert lr_factor(9, 100, spec) == pytest.approx(1.0)
    assert lr_factor(100, 100, spec) == pytest.approx(0.1)
    lin = manifest(optimizer={"schedule": "linear", "min_lr_ratio": 0.0}).optimizer
    assert lr_factor(50, 100, lin) == pytest.approx(0.5)


def test_checkpoint_listing_ignores_incomplete_and_prunes(tmp_path):
    root = str(tmp_path / "ck")
    for step, complete in [(5, True), (10, True), (15, True), (20, False)]:
        d = tmp_path / "ck" / f"step-{step}"
        d.mkdir(parents=True)
        (d / "shard.pt").write_bytes(b"x")
        if complete:
            (d / ckpt.COMPLETE).write_bytes(b"")
    assert ckpt.latest_complete(root) == 15
    ckpt.prune(root, keep=2)
    # step-20 (incomplete, newer) may be a save in flight: kept; step-5 is dropped.
    assert ckpt.steps_present(root) == {10: True, 15: True, 20: False}


def test_deepspeed_config_merges_override_last():
    m = manifest(deepspeed={"zero_stage": 3, "override": {"zero_optimization": {"stage3_max_live_parameters": 5}}})
    cfg = deepspeed_config(m.deepspeed, m.training, "bf16")
    assert cfg["zero_optimization"]["stage"] == 3 and cfg["zero_optimization"]["stage3_max_live_parameters"] == 5
    assert cfg["bf16"]["enabled"] and not cfg["fp16"]["enabled"]
    assert cfg["train_micro_batch_size_per_gpu"] == 4


def test_mfu_arithmetic():
    f = flops_per_token(1_000_000, layers=2, hidden=64, seq_len=128)
    assert f == 6e6 + 12 * 2 * 64 * 128
    assert mfu(1000.0, f, devices=2, peak=None) is None
    assert mfu(1000.0, f, devices=2, peak=1e12) == pytest.approx(1000 * f / 2e12)


def test_a_resume_starts_at_the_global_samples_trained():
    from workers.training import rescale
    # 10 steps of grad_accum 2, micro_batch 8, on 2 ranks: 320 samples, on any world size.
    meta = {"step": 10, "world_size": 2, "samples": 320}
    assert rescale.resume_sample(meta, micro_batch=8, grad_accum=2) == 320
    assert rescale.resume_sample(meta, micro_batch=4, grad_accum=1) == 320  # batch sizes edited too
    # Checkpoints from before `samples` was recorded: every step took grad_accum micro-batches a rank.
    assert rescale.resume_sample({"step": 10, "world_size": 2}, micro_batch=8, grad_accum=2) == 320


def test_universal_load_only_for_zero_state_on_another_world_size():
    from workers.training import rescale
    assert rescale.needs_universal(zero_stage=2, written_by=2, world=1)
    assert rescale.needs_universal(zero_stage=3, written_by=1, world=2)
    assert not rescale.needs_universal(zero_stage=2, written_by=2, world=2)
    assert not rescale.needs_universal(zero_stage=0, written_by=2, world=1)  # whole copies on every rank
    m = manifest(deepspeed={"zero_stage": 3})
    base = deepspeed_config(m.deepspeed, m.training, "fp32")
    cfg = rescale.universal_config(base)
    assert cfg["checkpoint"] == {"load_universal": True} and "checkpoint" not in base
    assert cfg["zero_optimization"] == base["zero_optimization"]


def test_optimizer_state_repaired_after_a_zero3_universal_load(tmp_path):
    from workers.training import rescale
    from workers.training.optim import param_groups

    module = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))
    opt = torch.optim.AdamW(param_groups(module, weight_decay=0.1), lr=1e-3)
    saved = [{**{k: v for k, v in g.items() if k != "params"}, "params": [0]} for g in opt.param_groups]
    (tmp_path / "zero").mkdir()
    torch.save({"param_groups": saved}, tmp_path / "zero" / "optimizer_state.pt")
    # What DeepSpeed's ZeRO-3 universal load leaves: group 0's values everywhere, one step tensor.
    step = torch.tensor(3.0)
    for g in opt.param_groups:
        g["weight_decay"] = 0.1
        opt.state[g["params"][0]]["step"] = step
    rescale.repair_optimizer_state(opt, tmp_path)
    assert [g["weight_decay"] for g in opt.param_groups] == [0.1, 0.0]
    assert [len(g["params"]) for g in opt.param_groups] == [1, 3]  # the tensors stay
    steps = [opt.state[g["params"][0]]["step"] for g in opt.param_groups]
    steps[0] += 1  # AdamW advances it in place
    assert [float(s) for s in steps] == [4.0, 3.0]


def test_epoch_schedule_after_a_rescale_covers_the_samples_left(tmp_path):
    import json

    import structlog

    from jobs.run.training import _epoch_steps

    uri = str(tmp_path / "ckpt")
    m = manifest(training={"max_steps": None, "epochs": 2, "micro_batch": 4},
                 resources={"workers": 1}, checkpoint={"uri": uri})
    log = structlog.get_logger()
    assert _epoch_steps(m, 100, log) == 50  # 200 samples, 4 a step
    # A 2-worker run stopped at step 10, having trained on 80 samples (8 a step).
    step = tmp_path / "ckpt" / "step-10"
    step.mkdir(parents=True)
    (step / "meta.json").write_text(json.dumps({"step": 10, "world_size": 2, "samples": 80}))
    (step / "_COMPLETE").write_text("")
    assert _epoch_steps(m, 100, log) == 10 + 30  # 120 samples left, 4 a step
    same = manifest(training={"max_steps": None, "epochs": 2, "micro_batch": 4},
                    resources={"workers": 2}, checkpoint={"uri": uri})
    assert _epoch_steps(same, 100, log) == 25  # same world: the plan is unchanged
