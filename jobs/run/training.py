"""The training runner: prepare (output mode, tokenizer, labels, step count), then a Ray Train
TorchTrainer whose workers run workers.training.loop.train_loop, then `_SUCCESS.json`.

Resume is automatic: the workers start from the newest complete checkpoint under
checkpoint.uri, whether Ray Train restarted them after a failure (FailureConfig) or the same
manifest was run again. `output.mode: overwrite` deletes the output and the checkpoints first.
The run protocol (output mode, progress, summary, outcome) is jobs.run.protocol's, as for
inference; the checkpoints are workers.training's.
"""

from __future__ import annotations

import math
import shutil
import tempfile
import threading
import time
from pathlib import Path

import ray
import structlog
from ray.train import FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchConfig, TorchTrainer

from cluster import ray_cluster, storage
from jobs.lifecycle import JobState
from jobs.manifest.training import TrainingManifest
from jobs.run.protocol import ProgressCallback, Run
from jobs.run.results import JobResult
from llm_core.tokenizer import load_hf_tokenizer
from workers.model_identity import model_identity
from workers.model_resolver import resolve_model
from workers.output.location import OutputLocation
from workers.output.modes import OutputExistsError, OutputMode
from workers.training import checkpoint as ckpt
from workers.training.bpe import train_bpe
from workers.training.config import BPE, Objective, TrainingTask
from workers.training.data import discover_labels
from workers.training.encode import Encoder
from workers.training.resume_check import check_checkpoint_matches, training_fingerprint
from workers.training.sample_index import ensure_sample_index
from workers.training.loop import train_loop
from workers.training.progress_sink import ProgressSink

TOKENIZER_DIR = "tokenizer"


def run_training(manifest: TrainingManifest, *, job_id: str | None = None, ray_address: str | None = None,
                 on_progress: ProgressCallback | None = None, show_progress: bool = False,
                 cancel: threading.Event | None = None, crash_at_step: int | None = None,
                 scope: storage.Scope | None = None) -> JobResult:
    """Train to completion, failure or cancel.

    on_progress gets the job's JobProgress after each event from rank 0: `event` names what
    just happened (step, eval, resumed, cancelled, done), `step` and `total_steps` where it is,
    `values` the latest loss, lr, tokens_per_s, mfu, eval_*. `crash_at_step` is a chaos-test hook.
    `scope` (default: this process's) is checked at every read, write and delete, here and in
    the training workers (data, checkpoints, export).
    """
    with storage.scoped(scope):
        return _train(manifest, job_id, ray_address, on_progress, show_progress, cancel, crash_at_step)


def _train(manifest: TrainingManifest, job_id, ray_address, on_progress, show_progress, cancel,
           crash_at_step) -> JobResult:
    manifest = absolute_uris(manifest)
    output = OutputLocation.at(manifest.output.uri)
    with Run(manifest.name, output, job_id=job_id, on_progress=on_progress, show_progress=show_progress) as run:
        log = structlog.get_logger().bind(job=manifest.name)
        try:
            earlier = run.prepare_model(manifest.output.mode)
            if earlier is None and manifest.output.mode == OutputMode.OVERWRITE:
                storage.delete_prefix(manifest.checkpoint.uri)
        except (OutputExistsError, storage.ScopeError) as exc:
            return run.end(JobState.FAILED, str(exc))
        if earlier is not None:
            return earlier
        try:
            ray_cluster.connect(ray_address)
            config = _prepare(manifest, run.job_id, log)
            config["crash_at_step"] = crash_at_step
            config["s3_settings"] = storage.s3_settings()  # the workers use the driver's S3 settings
            config["scope"] = storage.current_scope()  # and the job's scope, checked at every open
            events, elapsed = _fit(manifest, run, config, cancel)
        except Exception as exc:  # the job fails with the reason; the caller records it
            log.exception("train.failed", error=str(exc))
            return run.end(JobState.FAILED, f"{type(exc).__name__}: {exc}")
        summary = _summary(manifest, config, events, elapsed)
        if any(e.get("event") == "cancelled" for e in events):
            log.info("train.cancelled", step=summary["steps"])
            return run.end(JobState.CANCELLED, "cancelled by request", summary)
        result = run.succeed_model(summary)
        log.info("train.succeeded", output=output.uri, steps=summary["steps"], wall_s=round(elapsed, 1))
        return result


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
    """What every worker must agree on, decided once here: tokenizer, labels, total steps, and
    the identity of a fine-tune's base model (an adapter folder names it)."""
    m = manifest
    base_identity = None
    if m.task == TrainingTask.FINETUNE:
        base_identity = model_identity(m.model.uri)  # in the job's scope (run_training's)
        tokenizer = {"kind": "ref", "value": m.model.uri}
    elif m.model.vocab != BPE:
        tokenizer = {"kind": "ref", "value": m.model.vocab}
    else:
        tokenizer = {"kind": "uri", "value": _stored_bpe(m, log)}
    labels = discover_labels(m.data) if m.objective == Objective.CLASSIFICATION else None
    config = m.training_config()
    scratch = Path(tempfile.mkdtemp(prefix="llmbatch-tok-"))
    try:
        tok = _driver_tokenizer(tokenizer, scratch)
        # Before any worker starts: a checkpoint of another model, data or objective is refused.
        fingerprint = training_fingerprint(config, tok, labels, base_identity)
        check_checkpoint_matches(m.checkpoint.uri, fingerprint)
        # Samples per unit: the one pass over the data (stored, reused while the data is unchanged).
        index = ensure_sample_index(config, Encoder(config, tok, labels))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    tr = m.training
    total = tr.max_steps if tr.max_steps is not None else _epoch_steps(m, index.samples_per_epoch, log)
    log.info("train.prepared", total_steps=total, labels=labels, tokenizer=tokenizer["value"],
             samples_per_epoch=index.samples_per_epoch)
    return {"training": config, "manifest_hash": m.manifest_hash(), "job_id": job_id,
            "tokenizer": tokenizer, "labels": labels, "total_steps": total, "base_identity": base_identity,
            "fingerprint": fingerprint, "sample_index": index.to_dict()}


def _epoch_steps(manifest: TrainingManifest, samples_per_epoch: int, log) -> int:
    """Optimizer steps that cover `epochs`. A resumed run may take another number of samples per
    step (other workers, micro_batch or grad_accum): its steps left are counted from the global
    samples the checkpoint has trained on, so the job still covers `epochs`, no more, no less."""
    tr, workers = manifest.training, manifest.resources.workers
    per_step = tr.micro_batch * tr.grad_accum * workers
    wanted = math.ceil(tr.epochs * samples_per_epoch)
    last = ckpt.latest_complete(manifest.checkpoint.uri)
    meta = ckpt.read_meta(manifest.checkpoint.uri, last) if last is not None else {}
    if "samples" not in meta:
        return max(1, math.ceil(wanted / per_step))
    left = max(0, wanted - meta["samples"])
    total = meta["step"] + math.ceil(left / per_step)
    if meta["step"] * per_step != meta["samples"]:
        log.info("train.rescaled_schedule", from_world=meta["world_size"], to_world=workers,
                 samples_done=meta["samples"], samples_wanted=wanted, total_steps=total)
    return total


def _driver_tokenizer(tokenizer: dict, scratch: Path):
    """The job's tokenizer, loaded here: a model ref resolved, or the stored BPE folder downloaded."""
    ref = tokenizer["kind"] == "ref"
    tok_dir = resolve_model(tokenizer["value"]) if ref else ckpt.download_folder(tokenizer["value"], scratch)
    return load_hf_tokenizer(tok_dir)


def _stored_bpe(manifest: TrainingManifest, log) -> str:
    """The job's BPE tokenizer beside its checkpoints, trained on the first run only."""
    uri = storage.join(manifest.checkpoint.uri, TOKENIZER_DIR)
    if not storage.exists(storage.join(uri, "tokenizer.json")):
        local = Path(tempfile.mkdtemp(prefix="llmbatch-bpe-"))
        t0 = time.perf_counter()
        train_bpe(manifest.training_config(), local)
        # tokenizer.json last: its presence means the folder is whole
        for path in sorted(local.iterdir(), key=lambda p: p.name == "tokenizer.json"):
            storage.write_bytes(storage.join(uri, path.name), path.read_bytes())
        shutil.rmtree(local, ignore_errors=True)
        log.info("train.bpe_trained", vocab=manifest.model.vocab_size, seconds=round(time.perf_counter() - t0, 1))
    return uri


def _trainer(manifest: TrainingManifest, job_id: str, config: dict, run_state: str) -> TorchTrainer:
    res = manifest.resources
    use_gpu = res.gpus_per_worker > 0
    per_worker = {"CPU": res.cpus_per_worker, **({"GPU": res.gpus_per_worker} if use_gpu else {})}
    return TorchTrainer(
        train_loop,
        train_loop_config=config,
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        scaling_config=ScalingConfig(num_workers=res.workers, use_gpu=use_gpu, resources_per_worker=per_worker),
        run_config=RunConfig(
            name=f"llmbatch-{job_id}",
            storage_path=run_state,
            failure_config=FailureConfig(max_failures=manifest.max_failures),
        ),
    )


def _fit(manifest: TrainingManifest, run: Run, config: dict,
         cancel: threading.Event | None) -> tuple[list[dict], float]:
    """Ray Train's fit, with rank 0's events drained into the run's progress once a second."""
    sink = ProgressSink.remote()
    config["sink"] = sink
    run_state = tempfile.mkdtemp(prefix="llmbatch-raytrain-")  # Ray's run bookkeeping only
    trainer = _trainer(manifest, run.job_id, config, run_state)
    events: list[dict] = []
    stop = threading.Event()

    def pump() -> None:
        while not stop.is_set():
            if cancel is not None and cancel.is_set():
                sink.cancel.remote()
            _drain(ray.get(sink.drain.remote()), events, run)
            stop.wait(1.0)

    poller = threading.Thread(target=pump, name=f"train-progress-{run.job_id}", daemon=True)
    t0 = time.perf_counter()
    poller.start()
    try:
        trainer.fit()
    finally:
        stop.set()
        poller.join(timeout=10)
        _drain(ray.get(sink.drain.remote()), events, run)
        ray.kill(sink)
        shutil.rmtree(run_state, ignore_errors=True)
    return events, time.perf_counter() - t0


def _drain(new: list[dict], events: list[dict], run: Run) -> None:
    for event in new:
        events.append(event)
        run.progress.record(event)
        run.publish(phase="running")


def _summary(manifest: TrainingManifest, config: dict, events: list[dict], elapsed: float) -> dict:
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
