"""The inference runner: one inference job from manifest to `_SUCCESS.json`.

plan shards (schema checked before any work) -> prepare the output (mode) -> `_manifest.json`
-> skip committed shards (resume) -> the actor pool -> `_SUCCESS.json` with whole-job totals.
"""

from __future__ import annotations

import threading
import time

import structlog

from cluster import ray_cluster, storage
from jobs.evaluation import scoring as evaluation
from jobs.lifecycle import JobState
from jobs.manifest import InferenceManifest
from jobs.run.protocol import ProgressCallback, Run
from jobs.run.results import JobProgress, JobResult
from llm_core.engine.sampling import SamplingParams
from llm_core.tasks import TaskKind, TaskSpec, default_sampling
from workers.inference.pool import ActorPool, PoolConfig, PoolError, PoolOutcome
from workers.inference.shard_task import ShardReport, ShardWork
from workers.inference.shards import Shard, plan_shards
from workers.output.location import OutputExistsError, OutputLocation

log = structlog.get_logger()

__all__ = ["run_job", "JobProgress", "JobResult", "build_work"]


def task_spec(m: InferenceManifest) -> TaskSpec:
    t = m.task
    return TaskSpec(
        kind=t.kind, target_language=getattr(t, "target_language", None),
        source_language=getattr(t, "source_language", "English"), labels=tuple(getattr(t, "labels", ()) or ()),
        prompt_template=getattr(t, "prompt_template", None), system_prompt=t.system_prompt,
        instructions=getattr(t, "instructions", None), style=getattr(t, "style", "one_sentence"),
    )


def sampling_params(m: InferenceManifest) -> SamplingParams:
    p, defaults = m.params, default_sampling(m.task.kind)
    return SamplingParams(
        max_new_tokens=p.max_new_tokens, temperature=p.temperature, top_k=p.top_k, top_p=p.top_p,
        repetition_penalty=p.repetition_penalty if p.repetition_penalty is not None else defaults["repetition_penalty"],
        no_repeat_ngram_size=p.no_repeat_ngram_size if p.no_repeat_ngram_size is not None
        else defaults["no_repeat_ngram_size"],
        stop=tuple(p.stop), seed=p.seed,
    )


def build_work(m: InferenceManifest, job_id: str, output: OutputLocation | None = None) -> ShardWork:
    return ShardWork(
        job_id=job_id, output=output or OutputLocation.at(m.output.uri), task=task_spec(m), sampling=sampling_params(m),
        id_column=m.input.id_column, text_column=m.input.text_column,
        language_column=getattr(m.task, "target_language_column", None),
        max_input_tokens=m.params.max_input_tokens, on_long_input=m.params.on_long_input,
    )


def run_key(m: InferenceManifest) -> dict:
    """What the output depends on: a resumed run must match it."""
    return m.model_dump(mode="json", include={"task", "model", "input", "params"})


def run_job(manifest: InferenceManifest, *, job_id: str | None = None, ray_address: str | None = None,
            on_progress: ProgressCallback | None = None, cancel: threading.Event | None = None,
            show_progress: bool = False, scope: storage.Scope | None = None) -> JobResult:
    """`scope` (default: this process's) travels with the output location and the shard work to
    every actor; each read, write and delete is checked against it where the file is opened."""
    with storage.scoped(scope) as scope, \
            Run(manifest.name, OutputLocation.at(manifest.output.uri, scope), job_id=job_id,
                on_progress=on_progress, show_progress=show_progress) as run:
        try:
            return _run(manifest, run, ray_address, cancel)
        except (PoolError, OutputExistsError, FileNotFoundError, ValueError, storage.ScopeError) as exc:
            log.error("job.failed", error=str(exc))
            return run.end(JobState.FAILED, str(exc), run.counts(JobState.FAILED))


def _required_columns(manifest: InferenceManifest, work: ShardWork) -> dict[str, str]:
    required = {work.id_column: "id", work.text_column: "text"}
    if work.language_column:
        required[work.language_column] = "target language"
    if manifest.evaluate and not manifest.evaluate.references_uri:  # references read from the input
        required.setdefault(manifest.evaluate.reference_column, "reference")
    return required


def _run(manifest: InferenceManifest, run: Run, ray_address: str | None, cancel: threading.Event | None) -> JobResult:
    output = run.output
    work = build_work(manifest, run.job_id, output)
    shards = plan_shards(manifest.input.uri, _required_columns(manifest, work), manifest.input.rows_per_shard,
                         output.scope)
    if manifest.evaluate and manifest.evaluate.references_uri:
        evaluation.check_references(manifest.evaluate.references_uri, work.id_column,
                                    manifest.evaluate.reference_column)
    run.prepare(manifest.output.mode, run_key(manifest))
    shard_ids = {s.shard_id for s in shards}
    done_before = output.committed_shards() & shard_ids
    todo = [s for s in shards if s.shard_id not in done_before]
    output.write_manifest({
        "job_id": run.job_id, "manifest": manifest.model_dump(mode="json"),
        "manifest_hash": manifest.manifest_hash(), "run_key": run_key(manifest),
        "shards": [{"shard_id": s.shard_id, "file": s.file_uri, "rows": [s.row_start, s.row_end]} for s in shards],
        "created_at": run.started,
    })
    if done_before:
        log.info("job.resume", skipped_shards=len(done_before), shard_ids=sorted(done_before), todo=len(todo))
    log.info("job.planned", shards=len(shards), todo=len(todo), output=output.uri)
    run.publish(shards_total=len(shards), shards_skipped=len(done_before))

    outcome = _run_pool(manifest, run, work, todo, ray_address, cancel) if todo else PoolOutcome()
    if outcome.cancelled:
        return run.end(JobState.CANCELLED, "cancelled by request", run.counts(JobState.CANCELLED))
    if outcome.failed and manifest.on_shard_failure == "fail":
        sid, reason = next(iter(outcome.failed.items()))
        error = f"shard {sid} failed after {outcome.attempts[sid]} attempt(s): {reason}"
        return run.end(JobState.FAILED, error, run.counts(JobState.FAILED))

    run.publish(phase="finalizing")
    committed = output.committed_shards() & shard_ids
    skipped = dict(outcome.failed)
    missing = shard_ids - committed - set(skipped)
    if missing:
        error = f"{len(missing)} shard(s) not committed: {sorted(missing)[:5]}"
        return run.end(JobState.FAILED, error, run.counts(JobState.FAILED))
    wall, progress = run.wall_s, run.progress
    summary = {
        "status": JobState.SUCCEEDED.value, **output.totals(committed), "output": output.uri,
        "shards_total": len(shards), "shards_committed": progress.shards_done,
        "shards_skipped": len(done_before), "shards_failed": len(skipped),
        "skipped_failed_shards": skipped, "wall_s": round(wall, 3),
        "run_completion_tokens": progress.completion_tokens,
        "tokens_per_s": round(progress.completion_tokens / wall, 2) if wall > 0 else 0.0,
        "model": manifest.model, "engine": manifest.engine, "manifest_hash": manifest.manifest_hash(),
        "finished_at": time.time(),
    }
    if manifest.evaluate:
        run.publish(phase="evaluating")
        summary["metrics"] = evaluation.evaluate_job(manifest, output)
        log.info("job.metrics", **evaluation.headline(summary["metrics"]),
                 scored=summary["metrics"]["scored"], errors=summary["metrics"]["errors"])
    result = run.succeed(summary)
    log.info("job.succeeded", **{k: summary[k] for k in ("rows", "error_rows", "completion_tokens", "wall_s")})
    return result


def _run_pool(manifest: InferenceManifest, run: Run, work: ShardWork, todo: list[Shard],
              ray_address: str | None, cancel: threading.Event | None) -> PoolOutcome:
    """The shards still to do, on the actor pool; progress counts each shard's report."""
    ray_cluster.connect(ray_address)
    res = manifest.resources
    pool = ActorPool(PoolConfig(
        workers=res.workers, num_cpus=res.cpus_per_worker, num_gpus=res.gpus_per_worker,
        actor_args=(manifest.model,),
        actor_kwargs=dict(engine=manifest.engine, batch_size=res.batch_size,
                          max_batch_tokens=res.max_batch_tokens, threads=max(1, int(res.cpus_per_worker)),
                          **_baseline_kwargs(manifest, run.output)),
        max_attempts=manifest.max_shard_attempts, stop_on_failure=manifest.on_shard_failure == "fail",
    ), run.job_id)
    run.publish(phase="running")
    progress = run.progress

    def on_report(r: ShardReport) -> None:
        run.publish(shards_done=progress.shards_done + 1, rows=progress.rows + r.rows,
                    error_rows=progress.error_rows + r.error_rows,
                    completion_tokens=progress.completion_tokens + r.completion_tokens)

    outcome = pool.run(todo, work, on_report, cancel)
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
