"""Resuming on another number of workers: DeepSpeed's universal checkpoint, and the data position.

ZeRO stages 1-2 cut the optimizer state per rank and stage 3 the weights too, so a checkpoint
written by W ranks cannot be loaded as is by W' ranks. DeepSpeed's `ds_to_universal` rewrites
the folder as one file per parameter and state (fp32 weights, Adam moments, step) that any world
size slices; an engine built with `checkpoint.load_universal` loads it, LR scheduler included.
Stage 0 keeps a whole copy on every rank and loads as is.

Every rank converts its own download: ranks on other nodes share no disk with it, and the
conversions run in parallel, so a rescale costs about one conversion of wall time, once. (Rank 0
converting and uploading the result would save CPU but add an upload, a download and a wait.)
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import torch

from workers.training.deepspeed import deep_merge


def needs_universal(zero_stage: int, written_by: int, world: int) -> bool:
    return zero_stage > 0 and written_by != world


def universal_config(config: dict) -> dict:
    """The engine's config for a run that loads a universal checkpoint (read at initialize)."""
    return deep_merge(config, {"checkpoint": {"load_universal": True}})


def to_universal(folder: Path, out: Path) -> None:
    """Convert one DeepSpeed checkpoint folder (`.../step-N`) into a universal one at `out`.

    A subprocess: its memory goes back when it ends, and its progress output stays out of the
    worker's log unless it fails. One extract/merge process each: every rank of the node converts.
    `--inject_missing_state`: plain (non-Megatron) models record no universal_checkpoint_info.
    """
    cmd = [sys.executable, "-m", "deepspeed.checkpoint.ds_to_universal", "--input_folder", str(folder),
           "--output_folder", str(out), "--num_extract_workers", "1", "--num_merge_workers", "1",
           "--inject_missing_state"]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"ds_to_universal failed on {folder} (exit {done.returncode}): "
                           f"{(done.stdout + done.stderr)[-2000:]}")


def repair_optimizer_state(optimizer, folder: Path) -> None:
    """Undo two slips of DeepSpeed's ZeRO-3 universal load (0.19), after it ran.

    It gives every param group the first group's hyperparameters (biases and norms would get
    weight decay): each group gets its own back from `folder`, as stages 1-2 already do. And it
    hands one `step` tensor to every group's state, which AdamW advances in place once per
    group, so later groups would bias-correct with too large a step: each state gets its own.
    """
    # Lazy: deepspeed takes seconds to import; this runs only on a worker resuming a rescaled run.
    from deepspeed.checkpoint.constants import PARAM_GROUPS

    saved = torch.load(folder / "zero" / "optimizer_state.pt", map_location="cpu", weights_only=False)
    for group, own in zip(optimizer.param_groups, saved[PARAM_GROUPS]):
        group.update({k: v for k, v in own.items() if k != "params"})
    for state in optimizer.state.values():
        if torch.is_tensor(state.get("step")):
            state["step"] = state["step"].clone()


def resume_sample(meta: dict, micro_batch: int, grad_accum: int) -> int:
    """The global sample a resumed run starts at: the count the checkpoint's run trained on.

    The sample order does not depend on the worker count (workers.training.data), so this holds
    for any world size, micro_batch or grad_accum. Checkpoints written before `samples` was
    recorded trained on step * grad_accum micro-batches on each of their ranks.
    """
    return int(meta.get("samples", meta["step"] * grad_accum * micro_batch * meta["world_size"]))
