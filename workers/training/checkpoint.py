"""Checkpoints in object storage: `<uri>/step-<N>/` holding every rank's DeepSpeed files.

Save: each rank writes its DeepSpeed shards into its own local temp folder and uploads them;
after a barrier rank 0 writes `meta.json` then `_COMPLETE`. A folder without `_COMPLETE` (a save
cut short by a crash) is ignored on resume and removed by pruning. Only the newest `keep`
complete checkpoints are kept. Load: each rank downloads the newest complete folder and hands it
to DeepSpeed, converted to DeepSpeed's universal format first when the run has another number of
ranks than the one that wrote it.

A model with frozen parameters (LoRA's base, a classifier's unused lm_head) is saved without them:
a checkpoint holds what trains (adapters, head, optimizer state). Loading then leaves the frozen
weights as the model was built with them (from the base model folder, or the seeded init).
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

import structlog

from cluster import storage
from cluster.storage import s3
from workers.training import rescale

log = structlog.get_logger()

COMPLETE = "_COMPLETE"
META = "meta.json"
_STEP = re.compile(r"^step-(\d+)$")


def tag(step: int) -> str:
    return f"step-{step}"


def _tree(uri: str) -> list[str]:
    """Relative names of every object under a folder/prefix, nested ones included."""
    if storage.is_s3(uri):
        prefix = uri.rstrip("/") + "/"
        return sorted(r.uri[len(prefix):] for r in s3.list_objects(prefix))
    root = Path(storage.normalize(uri))
    if not root.is_dir():
        return []
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def steps_present(uri: str) -> dict[int, bool]:
    """{step: complete?} for every step-N folder under the checkpoint uri."""
    found: dict[int, bool] = {}
    for rel in _tree(uri):
        head, _, rest = rel.partition("/")
        m = _STEP.match(head)
        if m:
            step = int(m.group(1))
            found[step] = found.get(step, False) or rest == COMPLETE
    return found


def latest_complete(uri: str) -> int | None:
    done = [s for s, ok in steps_present(uri).items() if ok]
    return max(done) if done else None


def read_meta(uri: str, step: int) -> dict:
    return json.loads(storage.read_bytes(storage.join(uri, tag(step), META)))


def save(engine, uri: str, step: int, meta: dict, rank: int, keep: int, log=log) -> None:
    """Collective: every rank must call it at the same step."""
    # Lazy: deepspeed takes seconds to import; only a worker saving a checkpoint needs it here.
    import deepspeed.comm as dist

    local = Path(tempfile.mkdtemp(prefix=f"llmbatch-ckpt-r{rank}-"))
    try:
        with _frozen_aliases_left_out(engine):
            engine.save_checkpoint(str(local), tag=tag(step), client_state={"step": step},
                                   exclude_frozen_parameters=has_frozen(engine.module))
        folder = local / tag(step)
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            rel = str(path.relative_to(folder))
            storage.write_bytes(storage.join(uri, tag(step), rel), path.read_bytes())
        dist.barrier()  # every rank's shards are uploaded before the folder is marked complete
        if rank == 0:
            storage.write_bytes(storage.join(uri, tag(step), META), json.dumps(meta, indent=1).encode())
            storage.write_bytes(storage.join(uri, tag(step), COMPLETE), b"")
            prune(uri, keep)
        dist.barrier()
    finally:
        shutil.rmtree(local, ignore_errors=True)
    if rank == 0:
        log.info("train.checkpoint_saved", step=step, uri=storage.join(uri, tag(step)))


def has_frozen(module) -> bool:
    return any(not p.requires_grad for p in module.parameters())


def frozen_state_keys(module) -> set[str]:
    """Every state-dict key of a frozen parameter, each alias of a shared one included."""
    from torch import nn  # lazy: the driver reads checkpoint folders without torch

    return {k for k, v in module.state_dict(keep_vars=True).items()
            if isinstance(v, nn.Parameter) and not v.requires_grad}


@contextmanager
def _frozen_aliases_left_out(engine):
    """DeepSpeed's `exclude_frozen_parameters` drops a frozen parameter under its first name
    only: a tied lm_head (the embedding again, under a second name) stayed in every LoRA
    checkpoint, 113 MB of SmolLM2's 133. While saving, the engine's state dict also leaves out
    the aliases (resume loads non-strict and takes them from the base)."""
    original = engine.module_state_dict

    def trimmed(*args, **kwargs):
        state = original(*args, **kwargs)
        if kwargs.get("exclude_frozen_parameters"):
            for key in frozen_state_keys(engine.module):
                state.pop(key, None)
        return state

    engine.module_state_dict = trimmed
    try:
        yield
    finally:
        del engine.module_state_dict  # the class's method again


def prune(uri: str, keep: int) -> None:
    """Keep the newest `keep` complete checkpoints; drop older ones and older incomplete ones."""
    present = steps_present(uri)
    complete = sorted((s for s, ok in present.items() if ok), reverse=True)
    kept = set(complete[:keep])
    newest = complete[0] if complete else -1
    for step, ok in present.items():
        # An incomplete folder newer than the newest complete one may be another save in flight.
        if step not in kept and (ok or step < newest):
            storage.delete_prefix(storage.join(uri, tag(step)))


def load(engine, uri: str, step: int, rank: int, universal: bool = False) -> None:
    """Download step-N and load it into the engine (weights, optimizer, LR schedule).

    `universal`: the checkpoint was written by another number of ranks; it is converted first
    and the engine must have been built with `checkpoint.load_universal` (training_rescale).
    """
    local = Path(tempfile.mkdtemp(prefix=f"llmbatch-resume-r{rank}-"))
    prefix = storage.join(uri, tag(step))
    try:
        saved = download_folder(prefix, local / "saved" / tag(step))
        folder = local / "universal" / tag(step) if universal else saved
        if universal:
            rescale.to_universal(saved, folder)
        # Without its frozen weights the checkpoint's module state is partial by design.
        load_path, _ = engine.load_checkpoint(str(folder.parent), tag=tag(step), load_optimizer_states=True,
                                              load_lr_scheduler_states=True,
                                              load_module_strict=not has_frozen(engine.module))
        if load_path is None:
            raise RuntimeError(f"DeepSpeed could not load checkpoint {prefix}")
        if universal:
            rescale.repair_optimizer_state(engine.basic_optimizer, folder)
    finally:
        shutil.rmtree(local, ignore_errors=True)


def upload_folder(local: Path, uri: str) -> None:
    for path in sorted(p for p in local.rglob("*") if p.is_file()):
        storage.write_bytes(storage.join(uri, str(path.relative_to(local))), path.read_bytes())


def download_folder(uri: str, local: Path) -> Path:
    for rel in _tree(uri):
        dest = local / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(storage.read_bytes(storage.join(uri, rel)))
    return local

