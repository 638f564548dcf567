"""Run one training job: prepare (output check, tokenizer, labels, step count), then a Ray Train
TorchTrainer whose workers run workers.training.loop.train_loop, then write `_SUCCESS.json`.

Resume is automatic: the workers start from the newest complete checkpoint under
checkpoint.uri, whether Ray Train restarted them after a failure (FailureConfig) or the same
manifest was run again. `output.mode: overwrite` deletes the output and the checkpoints first.
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import structlog

from cluster import storage
from jobs.manifest.training import BPE, TrainingManifest
from jobs.run.results import JobResult

SUCCESS = "_SUCCESS.json"
TOKENIZER_DIR = "tokenizer"


def run_training(manifest: TrainingManifest, *, job_id: str | None = None, ray_address: str | None = None,
                 on_progress: Callable[[dict], None] | None = None, show_progress: bool = False,
                 cancel: threading.Event | None = None, crash_at_step: int | None = None) -> JobResult:
    """Train to completion, failure or cancel.

    on_progress gets the job's progress as a dict after each event from rank 0: the latest step,
    loss, lr, tokens_per_s, mfu, eval_* values, with `event` naming what just happened (step,
    eval, resumed, cancelled, done). `crash_at_step` is a chaos-test hook only.
    """
    job_id = job_id or f"{manifest.name}-{uuid.uuid4().hex[:8]}"
    structlog.contextvars.bind_contextvars(job_id=job_id)
    log = structlog.get_logger().bind(job=manifest.name)
    manifest = absolute_uris(manifest)
    out_uri = manifest.output.uri
    done = storage.exists(storage.join(out_uri, SUCCESS))
    if done and manifest.output.mode == "resume":
        summary = json.loads(storage.read_bytes(storage.join(out_uri, SUCCESS)))
        log.info("train.already_done", output=out_uri)
        return JobResult("succeeded", out_uri, None, summary)
    if done and manifest.output.mode == "error_if_exists":
        msg = f"output {out_uri} already holds a trained model (output.mode: error_if_exists)"
        return JobResult("failed", out_uri, msg)
    if manifest.output.mode == "overwrite":
        storage.delete_prefix(out_uri)
        storage.delete_prefix(manifest.checkpoint.uri)

    try:
        from cluster import ray_cluster

        ray_cluster.connect(ray_address)
        config = _prepare(manifest, job_id, log)
        config["crash_at_step"] = crash_at_step
        events, elapsed = _fit(manifest, job_id, config, on_progress, show_progress, cancel, log)
    except Exception as exc:  # the job fails with the reason; the caller records it
        log.exception("train.failed", error=str(exc))
        return JobResult("failed", out_uri, f"{type(exc).__name__}: {exc}")

    summary = _summary(manifest, config, events, elapsed)
    if any(e.get("event") == "cancelled" for e in events):
        log.info("train.cancelled", step=summary["steps"])
        return JobResult("cancelled", out_uri, "cancelled by request", summary)
    storage.write_bytes(storage.join(out_uri, SUCCESS), json.dumps(summary, indent=1).encode())
    log.info("train.succeeded", output=out_uri, steps=summary["steps"], wall_s=round(elapsed, 1))
    return JobResult("succeeded", out_uri, None, summary)


def absolute_uris(manifest: TrainingManifest) -> TrainingManifest:
    """Relative local paths made absolute here: Ray workers run in other working directories."""

    def fix(uri):
        if uri is None or ":" in uri.split("/")[0]:  # builtin:..., s3://...
            return uri
        return [fix(u) for u in uri] if isinstance(uri, list) else storage.normalize(uri)

    d = manifest.model_dump(mode="json")
    d["data"]["train"], d["data"]["eval"] = fix(d["data"]["train"]), fix(d["data"]["eval"])
    d["checkpoint"]["uri"], d["output"]["uri"] = fix(d["checkpoint"]["uri"]), fix(d["output"]["uri"])
    d["model"]["uri"] = fix(d["model"]["uri"])
    return TrainingManifest.model_validate(d)


def _prepare(manifest: TrainingManifest, job_id: str, log) -> dict:
    """What every worker must agree on, decided once here: tokenizer, labels, total steps."""
    from workers.training.data import count_rows, discover_labels

    m = manifest
    if m.task == "finetune":
        tokenizer = {"kind": "ref", "value": m.model.uri}
    elif m.model.vocab != BPE:
        tokenizer = {"kind": "ref", "value": m.model.vocab}
    else:
        tokenizer = {"kind": "uri", "value": _stored_bpe(m, log)}
    labels = discover_labels(m) if m.objective == "classification" else None
    tr = m.training
    if tr.max_steps is not None:
        total = tr.max_steps
    else:
        needs_tokens = m.objective == "causal_lm" and m.data.packing is not False
        samples = (_packed_samples(m, tokenizer, labels) if needs_tokens
                   else int(count_rows(m.data.train) * (1 - m.data.eval_fraction)))
        total = _epoch_steps(m, samples, log)
    log.info("train.prepared", total_steps=total, labels=labels, tokenizer=tokenizer["value"])
    return {"manifest": m.model_dump(mode="json"), "manifest_hash": m.manifest_hash(), "job_id": job_id,
            "tokenizer": tokenizer, "labels": labels, "total_steps": total}


def _epoch_steps(manifest: TrainingManifest, samples_per_epoch: int, log) -> int:
    """Optimizer steps that cover `epochs`. A run resuming a checkpoint written by another number
    of workers takes another number of samples per step: its steps left are counted from the
    samples the checkpoint has trained on, so the job still covers `epochs`, no more, no less."""
    from workers.training import checkpoint as ckpt
    tr, workers = manifest.training, manifest.resources.workers
    per_step = tr.micro_batch * tr.grad_accum * workers
    wanted = math.ceil(tr.epochs * samples_per_epoch)
    last = ckpt.latest_complete(manifest.checkpoint.uri)
    meta = ckpt.read_meta(manifest.checkpoint.uri, last) if last is not None else {}
    if not meta or meta.get("world_size") == workers or "samples" not in meta:
        return max(1, math.ceil(wanted / per_step))
    left = max(0, wanted - meta["samples"])
    total = meta["step"] + math.ceil(left / per_step)
    log.info("train.rescaled_schedule", from_world=meta["world_size"], to_world=workers,
             samples_done=meta["samples"], samples_wanted=wanted, total_steps=total)
    return total


def _packed_samples(manifest: TrainingManifest, tokenizer: dict, labels) -> int:
    """Packed sequences in one epoch: counting them means tokenizing the training data once."""
    from workers.training import checkpoint as ckpt
    from workers.model_resolver import resolve_model
    from workers.training.data import Encoder, count_samples
    from workers.training.model import load_tokenizer

    scratch = Path(tempfile.mkdtemp(prefix="llmbatch-tok-"))
    try:
        ref = tokenizer["kind"] == "ref"
        tok_dir = resolve_model(tokenizer["value"]) if ref else ckpt.download_folder(tokenizer["value"], scratch)
        return count_samples(manifest, Encoder(manifest, load_tokenizer(tok_dir), labels))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _stored_bpe(manifest: TrainingManifest, log) -> str:
    """The job's BPE tokenizer beside its checkpoints, trained on the first run only."""
    from workers.training.tokenizer import train_bpe

    uri = storage.join(manifest.checkpoint.uri, TOKENIZER_DIR)
    if not storage.exists(storage.join(uri, "tokenizer.json")):
        local = Path(tempfile.mkdtemp(prefix="llmbatch-bpe-"))
        t0 = time.perf_counter()
        train_bpe(manifest, local)
        # tokenizer.json last: its presence means the folder is whole
        for path in sorted(local.iterdir(), key=lambda p: p.name == "tokenizer.json"):
            storage.write_bytes(storage.join(uri, path.name), path.read_bytes())
        shutil.rmtree(local, ignore_errors=True)
        log.info("train.bpe_trained", vocab=manifest.model.vocab_size, seconds=round(time.perf_counter() - t0, 1))
    return uri


def _fit(manifest, job_id, config, on_progress, show_progress, cancel, log) -> tuple[list[dict], float]:
    import ray
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from cluster.storage import s3
    from workers.training.loop import train_loop
    from workers.training.progress import ProgressSink

    res = manifest.resources
    use_gpu = res.gpus_per_worker > 0
    sink = ProgressSink.remote()
    config["sink"] = sink
    run_state = tempfile.mkdtemp(prefix="llmbatch-raytrain-")  # Ray's run bookkeeping only
    per_worker = {"CPU": res.cpus_per_worker, **({"GPU": res.gpus_per_worker} if use_gpu else {})}
    trainer = TorchTrainer(
        train_loop,
        train_loop_config=config,
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        scaling_config=ScalingConfig(num_workers=res.workers, use_gpu=use_gpu, resources_per_worker=per_worker),
        run_config=RunConfig(
            name=f"llmbatch-{job_id}",
            storage_path=run_state,
            failure_config=FailureConfig(max_failures=manifest.max_failures),
            worker_runtime_env={"env_vars": s3.worker_env()},
        ),
    )
    events: list[dict] = []
    state: dict = {"phase": "running", "job_id": job_id}
    stop = threading.Event()

    def pump() -> None:
        while not stop.is_set():
            if cancel is not None and cancel.is_set():
                sink.cancel.remote()
            _drain(ray.get(sink.drain.remote()), events, state, on_progress, show_progress)
            stop.wait(1.0)

    poller = threading.Thread(target=pump, name=f"train-progress-{job_id}", daemon=True)
    t0 = time.perf_counter()
    poller.start()
    try:
        trainer.fit()
    finally:
        stop.set()
        poller.join(timeout=10)
        _drain(ray.get(sink.drain.remote()), events, state, on_progress, show_progress)
        ray.kill(sink)
        shutil.rmtree(run_state, ignore_errors=True)
    return events, time.perf_counter() - t0


def _drain(new: list[dict], events: list[dict], state: dict, on_progress, show_progress: bool) -> None:
    for event in new:
        events.append(event)
        state.update({k: v for k, v in event.items() if k != "final_eval"})
        if on_progress is not None:
            on_progress(dict(state))
        if show_progress and event.get("event") == "step":
            loss = event.get("loss")
            print(f"step {event['step']}/{event['total_steps']} loss {loss:.4f} "
                  f"{event['tokens_per_s']:.0f} tok/s", flush=True)


def _summary(manifest, config, events: list[dict], elapsed: float) -> dict:
    steps = [e for e in events if e.get("event") == "step"]
    done = next((e for e in reversed(events) if e.get("event") in ("done", "cancelled")), {})
    return {
        "kind": "training", "name": manifest.name, "job_id": config["job_id"],
        "manifest_hash": config["manifest_hash"], "steps": done.get("step", config["total_steps"]),
        "first_loss": steps[0]["loss"] if steps else None, "last_loss": steps[-1]["loss"] if steps else None,
        "tokens_per_s": steps[-1]["tokens_per_s"] if steps else None,
        "mfu": steps[-1]["mfu"] if steps else None,
        "eval": done.get("final_eval") or {},
        "resumed_from": [e["step"] for e in events if e.get("event") == "resumed"],
        "labels": config["labels"], "params": done.get("params"), "wall_s": round(elapsed, 1),
    }
