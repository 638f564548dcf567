"""Resuming a training checkpoint on another number of workers (DeepSpeed universal checkpoints).

Two levels: the checkpoint layer alone (ckpt.save on W ranks, ckpt.load on W' ranks, plain
torch.distributed processes, no Ray), where the step after the resume must match the
uninterrupted run's to float precision; and whole training jobs on Ray, stopped by the crash
hook after a checkpoint and run again with another `resources.workers`.
"""

from __future__ import annotations

import math
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from jobs.manifest import parse_manifest
from jobs.run.training import run_training
from tests.integration.test_training import DATA, step_losses, tiny
from workers.training import checkpoint as ckpt
pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

STEP = 3  # the checkpoint's step in the checkpoint-layer test


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _batches() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return [torch.randint(0, 50, (4, 12), generator=g) for _ in range(STEP + 1)]


def _rank(rank: int, world: int, port: int, stage: int, root: str, phase: str, universal: bool) -> None:
    """One rank: `save` trains STEP steps, checkpoints, then takes one more step; `load` resumes
    the checkpoint (as a universal one if `universal`) and takes that same step. Rank 0 writes
    the weights after it, and the lr it ran with, to `<root>/<phase>.pt`."""
    import deepspeed
    import torch.distributed as dist

    from workers.training import rescale
    from workers.training.deepspeed import deepspeed_config
    from workers.training.optim import build_optimizer, build_scheduler

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    m = parse_manifest(tiny(Path(root), deepspeed={"zero_stage": stage}, training={"micro_batch": 4},
                            optimizer={"lr": 1e-2, "warmup_steps": 2, "weight_decay": 0.1}))
    torch.manual_seed(0)
    # Embedding, norm, head: decayed and undecayed param groups, as in a real model.
    module = torch.nn.Sequential(torch.nn.Embedding(50, 16), torch.nn.LayerNorm(16), torch.nn.Linear(16, 50))
    optimizer = build_optimizer(module, m.optimizer, offload=False)
    scheduler = build_scheduler(optimizer, 10, m.optimizer)
    config = deepspeed_config(m.deepspeed, m.training, "fp32")
    engine, _, _, _ = deepspeed.initialize(model=module, optimizer=optimizer, lr_scheduler=scheduler,
                                           config=rescale.universal_config(config) if universal else config)

    def train_step(ids: torch.Tensor) -> None:
        logits = engine(ids)
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), ids.roll(-1, dims=1).flatten())
        engine.backward(loss)
        engine.step()

    batches = _batches()  # every rank the same batch: the averaged gradient is the same on any world
    uri = os.path.join(root, "ckpt")
    if phase == "save":
        for ids in batches[:STEP]:
            train_step(ids)
        ckpt.save(engine, uri, STEP, {"step": STEP, "world_size": world}, rank, keep=2)
    else:
        ckpt.load(engine, uri, STEP, rank, universal=universal)
    lr = scheduler.get_last_lr()
    train_step(batches[STEP])
    with deepspeed.zero.GatheredParameters(list(module.parameters())):
        weights = {k: v.detach().clone() for k, v in module.state_dict().items()}
    if rank == 0:
        torch.save({"weights": weights, "lr": lr, "global_steps": engine.global_steps},
                   os.path.join(root, f"{phase}.pt"))
    dist.destroy_process_group()


@pytest.mark.parametrize(("stage", "before", "after"),
                         [(0, 2, 1), (1, 2, 1), (2, 2, 1), (3, 2, 1), (2, 1, 2), (3, 1, 2)])
def test_resume_on_another_world_size_continues_exactly(tmp_path, stage, before, after):
    """Weights, Adam moments and step, per-group weight decay and the LR schedule all carry over:
    the step after the resume is the one the uninterrupted run took (a fresh Adam, biases decayed
    like weights, or a bias correction for the wrong step would each move the weights otherwise).
    Stage 0 keeps whole copies and loads as is; stages 1-3 go through the universal format."""
    from workers.training import rescale
    root, universal = str(tmp_path), rescale.needs_universal(stage, before, after)
    assert universal == (stage > 0)
    mp.spawn(_rank, args=(before, _free_port(), stage, root, "save", False), nprocs=before)
    assert ckpt.latest_complete(str(tmp_path / "ckpt")) == STEP
    mp.spawn(_rank, args=(after, _free_port(), stage, root, "load", universal), nprocs=after)
    saved, loaded = torch.load(tmp_path / "save.pt"), torch.load(tmp_path / "load.pt")
    assert loaded["lr"] == saved["lr"] and loaded["global_steps"] == saved["global_steps"] == STEP + 1
    for name, w in saved["weights"].items():
        torch.testing.assert_close(loaded["weights"][name], w, rtol=0, atol=1e-6, msg=name)


@pytest.mark.parametrize(("stage", "before", "after"), [(2, 2, 1), (3, 1, 2)])
def test_job_resumes_on_another_worker_count(ray_local, tmp_path, stage, before, after):
    import pyarrow.parquet as pq
    from transformers import AutoTokenizer, LlamaForCausalLM

    from workers.training.data import is_holdout

    def manifest(workers: int):
        return parse_manifest(tiny(tmp_path, deepspeed={"zero_stage": stage}, resources={"workers": workers},
                                   training={"max_steps": 20, "log_every": 2, "eval_every": None},
                                   optimizer={"lr": 1e-2, "warmup_steps": 2},
                                   checkpoint={"every_steps": 10}, max_failures=0))

    uri = str(tmp_path / "ckpt")
    first_events: list[dict] = []
    first = run_training(manifest(before), job_id=f"t-rescale{stage}-a",
                         on_progress=lambda p: first_events.append(p.to_dict()), crash_at_step=10)
    assert first.status == "failed"  # crashed right after the step-10 checkpoint, no restarts allowed
    assert ckpt.latest_complete(uri) == 10 and ckpt.read_meta(uri, 10)["world_size"] == before

    events: list[dict] = []
    second = run_training(manifest(after), job_id=f"t-rescale{stage}-b",
                          on_progress=lambda p: events.append(p.to_dict()))
    assert second.status == "succeeded", second.error
    resumed = [(e["step"], e["from_world"], e["to_world"]) for e in events if e.get("event") == "resumed"]
    assert resumed == [(10, before, after)]
    assert second.summary["resumed_from"] == [10] and second.summary["steps"] == 20
    old, new = step_losses(first_events), step_losses(events)
    assert sorted(new) == [12, 14, 16, 18, 20]
    # The trained state came back: the loss goes on from where it was, not from a fresh model's.
    assert abs(new[12] - old[10]) < 0.25, (old, new)
    assert new[12] < old[2] - 0.5, (old, new)
    # The data position counts what both runs trained on: 10 steps of 8 samples on each worker.
    assert ckpt.read_meta(uri, 20)["samples"] == 10 * 8 * before + 10 * 8 * after

    folder = tmp_path / "model"
    tok = AutoTokenizer.from_pretrained(str(folder))
    lm = LlamaForCausalLM.from_pretrained(str(folder)).eval()
    m = manifest(after)
    held_out = [r["text"] for r in pq.read_table(str(DATA / "debian-pretrain-sample.parquet")).to_pylist()
                if is_holdout(r, m.data)][:20]
    with torch.no_grad():
        losses = [float(lm(input_ids=ids, labels=ids).loss) for ids in
                  (torch.tensor([tok(t, add_special_tokens=False)["input_ids"][:64]]) for t in held_out)]
    assert sum(losses) / len(losses) < math.log(1024) - 0.5  # the exported weights are the trained ones
