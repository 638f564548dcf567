"""A LoRA fine-tune as a real training job: 2 Ray Train workers, DeepSpeed ZeRO-2, a worker killed
after the last step. The checkpoints hold only the adapters and their optimizer state, the
resumed run takes the very steps the first attempt took (same loss), and the export is an
adapter folder in PEFT's layout naming its base, which applies onto the base model.

And at the checkpoint layer under ZeRO-3 (plain torch.distributed processes, no Ray): the frozen
base is partitioned too, the wrapper's call of the base module gathers it, and a checkpoint
written by 2 ranks resumes on 1 (universal format) to the same next step.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from jobs.manifest import parse_manifest
from jobs.run.training import run_training
from llm_core.models import load_model
from llm_core.models.lora_files import apply_adapter_folder, read_adapter_config
from llm_core.models.lora_names import peft_key
from tests.integration.test_training import tiny
from tests.integration.test_training_rescale import _free_port
from tests.unit.test_lora import logits, training_config
from workers.model_identity import model_identity
from workers.training import checkpoint as ckpt

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]
TARGETS = ["q_proj", "v_proj", "down_proj"]


def test_lora_job_checkpoints_only_adapters_resumes_exactly_and_exports_an_adapter(ray_local, tiny_dir, tmp_path):
    data = tiny(tmp_path, task="finetune",
                data={"eval_fraction": 0.0},
                training={"micro_batch": 4, "max_steps": 4, "log_every": 1, "eval_every": None},
                # dropout 0: torch's RNG is not part of a checkpoint, so with dropout a resumed step
                # would draw other masks than the first attempt did
                adapter={"rank": 4, "alpha": 8.0, "dropout": 0.0, "target_modules": TARGETS, "export": "adapter"},
                checkpoint={"every_steps": 2}, max_failures=1)
    data["model"] = {"uri": str(tiny_dir)}  # a fine-tune names only its model
    events: list[dict] = []
    # The last rank dies after step 4, before the final save: the job resumes from step 2.
    result = run_training(parse_manifest(data), job_id="t-lora", crash_at_step=4,
                          on_progress=lambda p: events.append(p.to_dict()))
    assert result.status == "succeeded", result.error
    assert result.summary["resumed_from"] == [2]
    losses = [(e["step"], e["loss"]) for e in events if e.get("event") == "step"]
    third = [loss for step, loss in losses if step == 3]
    assert len(third) == 2, losses  # step 3 ran in both attempts, on the same state and data
    assert third[1] == pytest.approx(third[0], rel=1e-6, abs=1e-7)

    # Checkpoints: the adapters, their Adam state and the schedule; no frozen base weight.
    uri = tmp_path / "ckpt"
    assert ckpt.steps_present(str(uri)) == {2: True, 4: True}
    saved = uri / "step-4"
    module_state = torch.load(saved / "mp_rank_00_model_states.pt", map_location="cpu", weights_only=False)["module"]
    assert module_state and all(k.endswith(("lora_A", "lora_B")) for k in module_state), sorted(module_state)
    checkpoint_bytes = sum(p.stat().st_size for p in saved.rglob("*") if p.is_file())
    base_bytes = (tiny_dir / "model.safetensors").stat().st_size
    assert checkpoint_bytes < base_bytes / 2, (checkpoint_bytes, base_bytes)

    # The export: PEFT's layout, naming the base by reference and identity; no tokenizer or weights.
    folder = tmp_path / "model"
    assert {p.name for p in folder.iterdir()} == {"adapter_config.json", "adapter_model.safetensors",
                                                  "_SUCCESS.json"}
    config = read_adapter_config(folder)
    assert config["base_model_name_or_path"] == str(tiny_dir) and config["target_modules"] == TARGETS
    assert config["llmbatch"]["base_model"] == json.loads(json.dumps(model_identity(str(tiny_dir))))
    base, cfg = load_model(tiny_dir, device="cpu", dtype=torch.float32)
    ids = torch.arange(1, 17)
    before = logits(base, ids)
    apply_adapter_folder(base, folder)
    assert (logits(base, ids) - before).abs().max() > 1e-4  # 4 steps of lr 3e-3 moved the adapters
    from safetensors import safe_open

    with safe_open(str(folder / "adapter_model.safetensors"), "pt") as f:
        assert set(f.keys()) == {peft_key(i, t, x) for i in range(cfg.num_hidden_layers) for t in TARGETS
                                 for x in "AB"}


def _zero3_rank(rank: int, world: int, port: int, root: str, phase: str, tiny_model: str) -> None:
    """`save`: 3 steps, checkpoint, a 4th step; `load`: resume the checkpoint (universal when the
    world differs) and take that 4th step. Rank 0 keeps the loss and the gathered weights after it,
    and exports the adapter from them."""
    import deepspeed
    import torch.distributed as dist

    from workers.training import rescale
    from workers.training.config import DeepSpeedSpec, OptimizerSpec, TrainingSpec
    from workers.training.deepspeed import deepspeed_config
    from workers.training.model import build_model, export_model
    from workers.training.optim import build_optimizer, build_scheduler

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    cfg = training_config("sft", {"rank": 4, "dropout": 0.0, "export": "adapter"}, model_uri=tiny_model)
    module = build_model(cfg, None, Path(tiny_model), None, seed=0)
    optimizer = build_optimizer(module, OptimizerSpec(lr=1e-2), offload=False)
    scheduler = build_scheduler(optimizer, 10, OptimizerSpec(lr=1e-2))
    config = deepspeed_config(DeepSpeedSpec(zero_stage=3), TrainingSpec(micro_batch=2), "fp32")
    universal = phase == "load" and world == 1
    engine, _, _, _ = deepspeed.initialize(model=module, optimizer=optimizer, lr_scheduler=scheduler,
                                           config=rescale.universal_config(config) if universal else config)
    g = torch.Generator().manual_seed(1)
    batches = [torch.randint(0, 200, (2, 12), generator=g) for _ in range(4)]  # the same on every rank

    def train_step(ids: torch.Tensor) -> float:
        loss = engine(input_ids=ids, attention_mask=torch.ones_like(ids), labels=ids)
        engine.backward(loss)
        engine.step()
        return float(loss.detach())

    uri = os.path.join(root, "ckpt")
    if phase == "save":
        for ids in batches[:3]:
            train_step(ids)
        ckpt.save(engine, uri, 3, {"step": 3, "world_size": world}, rank, keep=2)
    else:
        ckpt.load(engine, uri, 3, rank, universal=universal)
    loss = train_step(batches[3])
    with deepspeed.zero.GatheredParameters(list(module.parameters())):
        state = {k: v.detach().clone() for k, v in module.state_dict().items()}
    if rank == 0:
        torch.save({"state": state, "loss": loss}, os.path.join(root, f"{phase}.pt"))
        export_model(state, module, Path(tiny_model), None, Path(root) / f"adapter-{phase}", 12,
                     adapter=cfg.adapter, base_ref=tiny_model, base_identity=None)
    dist.destroy_process_group()


@pytest.mark.slow
def test_zero3_lora_checkpoint_resumes_on_one_rank_to_the_same_step(tiny_dir, tmp_path):
    root = str(tmp_path)
    mp.spawn(_zero3_rank, args=(2, _free_port(), root, "save", str(tiny_dir)), nprocs=2)
    mp.spawn(_zero3_rank, args=(1, _free_port(), root, "load", str(tiny_dir)), nprocs=1)
    saved, loaded = torch.load(tmp_path / "save.pt"), torch.load(tmp_path / "load.pt")
    assert loaded["loss"] == pytest.approx(saved["loss"], rel=1e-6)
    for name, value in saved["state"].items():
        torch.testing.assert_close(loaded["state"][name], value, rtol=0, atol=1e-6, msg=name)
    trained = [k for k in saved["state"] if k.endswith("lora_B")]
    assert trained and all(saved["state"][k].abs().max() > 0 for k in trained)
    base, _ = load_model(tiny_dir, device="cpu", dtype=torch.float32)
    ids = torch.arange(1, 17)
    before = logits(base, ids)
    apply_adapter_folder(base, tmp_path / "adapter-load")  # exported from ZeRO-3's gathered weights
    assert (logits(base, ids) - before).abs().max() > 1e-4
