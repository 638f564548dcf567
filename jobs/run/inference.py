"""The inference runner: one inference job from manifest to a published snapshot.

pre-flight (refused with every problem before any worker or delete) -> the run's fingerprint ->
the output's writer lease -> the output mode (a run id: a new one, or the run `resume` continues)
-> `_manifest.json` -> the actor pool over the shards still to do (deadline, per-shard timeout,
progress per batch) -> the outcome (succeeded / partial / failed, jobs.run.outcome) -> evaluation
of the parts to publish -> the snapshot published (`_SUCCESS.json` or `_PARTIAL.json`, listing
exactly its parts, with the metrics; nothing at all when failed).
"""

from __future__ import annotations

import threading
import time

import structlog

from cluster import ray_cluster, storage
from cluster.ray_code import ClusterCodeMismatch
from jobs.evaluation import scoring as evaluation
from jobs.lifecycle import JobState
from jobs.manifest import InferenceManifest
from jobs.run.outcome import Outcome, PartCounts, decide, part_counts, total
from jobs.run.preflight import Plan, preflight
from jobs.run.precision import fingerprint_entry, run_dtype
from jobs.run.protocol import ProgressCallback, Run
from jobs.run.results import JobProgress, JobResult
from jobs.run.retry_plan import RetryRefused
from jobs.run.row_progress import RowProgress
from jobs.run.run_start import RunStart, plan_record, run_start
from jobs.run.examples import examples_digest
from jobs.run.work import build_work, sampling_params, task_spec
from llm_core.tasks import TaskKind
from workers.inference.pool import ActorPool, PoolConfig, PoolError, PoolOutcome
from workers.inference.shard_task import ShardWork
from workers.inference.shards import Shard
from workers.output.fingerprint import run_fingerprint
from workers.output.lease import LeaseLost, OutputBusyError, OutputLease
from workers.output.layout import PARTIAL_FILE, SUCCESS_FILE
from workers.output.location import OutputLocation
from workers.output.modes import OutputExistsError
from workers.output.snapshot import publish_snapshot

log = structlog.get_logger()

__all__ = ["run_job", "JobProgress", "JobResult", "build_work", "task_spec", "sampling_params"]

# What ends a run as failed with its message, never as a crash.
REFUSALS = (OutputExistsError, OutputBusyError, RetryRefused, ClusterCodeMismatch)
RUN_ERRORS = (PoolError, LeaseLost, OSError, ValueError, storage.ScopeError, *REFUSALS)


def run_job(manifest: InferenceManifest, *, job_id: str | None = None, ray_address: str | None = None,
            on_progress: ProgressCallback | None = None, cancel: threading.Event | None = None,
            show_progress: bool = False, scope: storage.Scope | None = None,
            retry_all: bool = False) -> JobResult:
    """`scope` (default: this process's) travels with the output location and the shard work to
    every actor; each read, write and delete is checked against it where the file is opened.
    `retry_all` (output.mode: retry_errors): redo permanent error rows too, not only retriable ones."""
    with storage.scoped(scope) as scope, \
            Run(manifest.name, OutputLocation.at(manifest.output.uri, scope), job_id=job_id,
                on_progress=on_progress, show_progress=show_progress) as run:
        try:
            return _run(manifest, run, ray_address, cancel, retry_all)
        except RUN_ERRORS as exc:
            log.error("job.failed", error=str(exc))
            # Refused before any work: the output is another job's or does not fit the mode, or the
            # cluster cannot run this code. Exit code 2 like a pre-flight refusal.
            refusal = {"refused": True} if isinstance(exc, REFUSALS) else {}
            return run.end(JobState.FAILED, str(exc), {**run.counts(JobState.FAILED), **refusal})


def refused(run: Run, plan: Plan) -> JobResult:
    """Pre-flight found problems: nothing ran, nothing changed; `summary["refused"]` (exit code 2)."""
    error = f"pre-flight refused the job ({len(plan.problems)} problem(s)): " + "; ".join(plan.problems)
    return run.end(JobState.FAILED, error, {**run.counts(JobState.FAILED), "refused": True,
                                            "problems": list(plan.problems), "warnings": list(plan.warnings)})


def fingerprint_of(manifest: InferenceManifest, plan: Plan) -> dict:
    """What the output depends on: `resume` continues, and `retry_errors` redoes, only the same."""
    return run_fingerprint(
        files=plan.files, model=plan.model, engine=manifest.engine, task={**manifest.task.model_dump(mode="json"),
              **({"examples_digest": examples_digest(plan.examples)} if plan.examples is not None else {})},
        params=manifest.params.model_dump(mode="json"),
        columns={"id": manifest.input.id_column, "text": manifest.input.text_column,
                 "language": getattr(manifest.task, "target_language_column", None)},
        id_type=plan.id_type, adapter=plan.adapter, **fingerprint_entry(manifest, plan.dtype or manifest.params.dtype))


def _run(manifest: InferenceManifest, run: Run, ray_address: str | None, cancel: threading.Event | None,
         retry_all: bool) -> JobResult:
    started = time.monotonic()
    plan = preflight(manifest, run.output.scope)
    if plan.problems:
        return refused(run, plan)
    for warning in plan.warnings:
        log.warning("job.preflight_warning", warning=warning)
    plan.dtype = run_dtype(manifest, run.output, ray_address)
    fingerprint = fingerprint_of(manifest, plan)
    with OutputLease.acquire(run.output, run.job_id) as lease:
        slot = run.output.prepare(manifest.output.mode, fingerprint)
        return _run_slot(manifest, run, plan, fingerprint, slot, lease, ray_address, cancel, retry_all, started)


def _run_slot(manifest, run: Run, plan: Plan, fingerprint: dict, slot, lease, ray_address, cancel,
              retry_all: bool, started: float) -> JobResult:
    output = run.output
    planned = [s.shard_id for s in plan.shards]
    start = run_start(manifest.output.mode, output, fingerprint, plan, slot, retry_all)
    output.write_manifest(plan_record(manifest, plan, slot, run.job_id, fingerprint, run.started))
    earlier = {sid: part_counts(output, path) for sid, path in start.kept.items()}
    earlier.update({sid: part_counts(output, output.part_path(slot.run_id, sid)) for sid in start.done_here})
    rows = _row_progress(plan, start, earlier)
    resumed = sorted(set(start.done_here) | set(start.kept))
    log.info("job.planned", shards=len(planned), todo=len(start.todo), resumed=len(resumed), run_id=slot.run_id,
             output=output.uri, rows=plan.rows, dropped=len(plan.dropped))
    if resumed:
        log.info("job.resume", skipped_shards=len(resumed), shard_ids=resumed, todo=len(start.todo))
    run.publish(shards_total=len(planned), shards_skipped=len(planned) - len(start.todo), **rows.fields())

    deadline = started + manifest.timeout_s if manifest.timeout_s else None
    work = build_work(manifest, run.job_id, output, run_id=slot.run_id, id_type=plan.id_type,
                      retry_kinds=start.retry_kinds, base_parts=start.base_parts, fewshot=plan.examples,
                      file_rows=plan.file_rows().items())
    outcome = (_run_pool(manifest, run, plan, work, start.todo, rows, ray_address, cancel, deadline)
               if start.todo else PoolOutcome())
    if outcome.cancelled:
        return run.end(JobState.CANCELLED, "cancelled by request", run.counts(JobState.CANCELLED))
    if outcome.failed and manifest.on_shard_failure == "fail":
        sid, reason = next(iter(outcome.failed.items()))
        error = f"shard {sid} failed after {outcome.attempts[sid]} attempt(s): {reason}"
        return run.end(JobState.FAILED, error, run.counts(JobState.FAILED))
    run.publish(phase="finalizing")
    committed = output.committed_shards(slot.run_id) & set(planned)
    parts = {**start.carried, **{sid: output.part_path(slot.run_id, sid) for sid in committed}}
    files = {sid: parts[sid] for sid in planned if sid in parts}  # in plan order: readers get input order
    counts = {sid: earlier[sid] if sid in start.kept else part_counts(output, path) for sid, path in files.items()}
    whole = total(counts)
    result = decide(planned=set(planned), present=set(files), counts=whole, skipped=dict(outcome.failed),
                    timed_out=outcome.timed_out, timeout_s=manifest.timeout_s, max_error_rate=manifest.max_error_rate)
    summary = _summary(manifest, run, plan, slot.run_id, whole, result, outcome, start)
    if not result.publishes:
        return run.end(JobState.FAILED, result.error, {**run.counts(JobState.FAILED), **summary})
    return _publish(manifest, run, plan, fingerprint, slot, lease, files, result, summary)


def _row_progress(plan: Plan, start: RunStart, earlier: dict[str, PartCounts]) -> RowProgress:
    if start.retry is None:  # whole-job rows, the parts an earlier run committed included
        return RowProgress(plan.rows, total(earlier))
    # A retry counts the rows it redoes (and the shards it runs whole), not the whole job.
    fresh = sum(s.num_rows for s in start.todo if s.shard_id in start.retry.fresh)
    return RowProgress(start.retry.error_rows + fresh, PartCounts())


def _publish(manifest: InferenceManifest, run: Run, plan: Plan, fingerprint: dict, slot, lease,
             files: dict[str, str], result: Outcome, summary: dict) -> JobResult:
    """Evaluate the parts about to be published (so the marker carries the metrics), publish."""
    if manifest.evaluate:
        run.publish(phase="evaluating")
        summary["metrics"] = evaluation.evaluate_job(manifest, run.output, files=files)
        log.info("job.metrics", **evaluation.headline(summary["metrics"]),
                 scored=summary["metrics"]["scored"], errors=summary["metrics"]["errors"])
    marker = publish_snapshot(run.output, status=result.state.value, job_id=run.job_id, run_id=slot.run_id,
                              fingerprint=fingerprint, files=files, id_column=manifest.input.id_column,
                              id_type=plan.id_type, reasons=result.reasons, lease=lease,
                              # the marker names its job whole: `llmbatch retry OUTPUT` reruns it
                              summary={**summary, "manifest": manifest.model_dump(mode="json")})
    summary.update({"snapshot": PARTIAL_FILE if result.state is JobState.PARTIAL else SUCCESS_FILE,
                    "snapshot_id": marker["snapshot_id"], "errors_file": marker.get("errors_file"),
                    **{name: marker[name] for name in ("rows", "error_rows", "prompt_tokens", "completion_tokens")}})
    return _ended(run, result, summary)


def _ended(run: Run, result: Outcome, summary: dict) -> JobResult:
    run.publish(phase="done")
    error = None if result.state is JobState.SUCCEEDED else "; ".join(result.reasons)
    log.info(f"job.{result.state.value}", reasons=result.reasons,
             **{k: summary[k] for k in ("rows", "error_rows", "completion_tokens", "wall_s")})
    return JobResult(result.state, run.output.uri, error, summary)


def _summary(manifest: InferenceManifest, run: Run, plan: Plan, run_id: str, whole: PartCounts, result: Outcome,
             outcome: PoolOutcome, start: RunStart) -> dict:
    wall, progress, shards_total, todo = run.wall_s, run.progress, len(plan.shards), len(start.todo)
    return {
        "job_id": run.job_id, "status": result.state.value, "reasons": result.reasons, **whole.as_dict(),
        "rows_planned": plan.rows, "output": run.output.uri, "run_id": run_id,
        "shards_total": shards_total, "shards_committed": progress.shards_done, "shards_todo": todo,
        "shards_skipped": shards_total - todo, "shards_failed": len(outcome.failed),
        "skipped_failed_shards": dict(outcome.failed), "timed_out": outcome.timed_out,
        "dropped": plan.dropped, "dropped_rows": len(plan.dropped),
        "retried_rows": start.retry.error_rows if start.retry is not None else None,
        "error_rate": round(whole.error_rows / whole.rows, 6) if whole.rows else None,
        "max_error_rate": manifest.max_error_rate, "wall_s": round(wall, 3),
        "run_completion_tokens": progress.completion_tokens,
        "tokens_per_s": round(progress.completion_tokens / wall, 2) if wall > 0 else 0.0,
        "model": manifest.model, "adapter": manifest.adapter, "engine": manifest.engine, "dtype": plan.dtype or None,
        "actor_log": outcome.log_file,
        "finished_at": time.time(),
    }


def _run_pool(manifest: InferenceManifest, run: Run, plan: Plan, work: ShardWork, todo: list[Shard],
              rows: RowProgress, ray_address: str | None, cancel: threading.Event | None,
              deadline: float | None) -> PoolOutcome:
    """The shards still to do, on the actor pool; progress counts rows batch by batch."""
    ray_cluster.connect(ray_address)
    res = manifest.resources
    pool = ActorPool(PoolConfig(
        workers=res.workers, num_cpus=res.cpus_per_worker, num_gpus=res.gpus_per_worker,
        actor_args=(manifest.model,),
        actor_kwargs=dict(engine=manifest.engine, batch_size=res.batch_size,
                          max_batch_tokens=res.max_batch_tokens, threads=max(1, int(res.cpus_per_worker)),
                          dtype=plan.dtype or manifest.params.dtype, quantization=manifest.params.quantization,
                          model_identity=plan.model if manifest.engine != "baseline" else None,
                          adapter_ref=manifest.adapter, adapter_identity=plan.adapter,
                          **_baseline_kwargs(manifest, run.output)),
        max_attempts=manifest.max_shard_attempts, stop_on_failure=manifest.on_shard_failure == "fail",
        shard_timeout_s=manifest.shard_timeout_s,
    ), run.job_id)
    run.publish(phase="running")
    progress = run.progress

    def on_report(r) -> None:
        rows.on_report(r)
        if r.committed:
            progress.observe_shard(r.seconds)  # the shard latency histogram (Prometheus)
        run.publish(shards_done=progress.shards_done + 1, **rows.fields())

    def on_batches(shards: dict) -> None:
        rows.on_batches(shards)
        run.publish(**rows.fields())

    outcome = pool.run(todo, work, on_report, cancel, on_progress=on_batches, deadline=deadline)
    run.publish(shards_failed=len(outcome.failed))
    return outcome


def _baseline_kwargs(m: InferenceManifest, output: OutputLocation) -> dict:
    """engine: baseline + classify: fit the classifier once here; the actors load it."""
    if m.engine != "baseline" or m.task.kind != TaskKind.CLASSIFY:
        return {}
    # torch and scikit-learn load only for this case, not in every process that imports runners.
    from workers.inference.baseline import prepare_classifier

    return {"baseline_model_uri": prepare_classifier(output.uri, m.task.train_uri, m.input.text_column,
                                                     m.task.train_label_column, tuple(m.task.labels))}
