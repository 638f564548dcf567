"""The job runner: one inference job from manifest to `_SUCCESS.json`.

plan shards (schema checked before any work) -> prepare the output (mode) -> `_manifest.json`
-> skip committed shards (resume) -> the actor pool -> `_SUCCESS.json` with whole-job totals.
"""

from __future__ import annotations

import threading
import time
import uuid
from typing import Callable

import structlog

from cluster import ray_cluster, storage
from jobs.evaluation import scoring as evaluation
from jobs.manifest.schema import InferenceManifest
from jobs.run.results import JobProgress, JobResult
from llm_core.engine.sampling import SamplingParams
from llm_core.tasks import TaskSpec, default_sampling
from workers.output import commit
from workers.inference.shard_task import ShardReport, ShardWork
from workers.inference.shards import plan_shards

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


def build_work(m: InferenceManifest, job_id: str) -> ShardWork:
    return ShardWork(
        job_id=job_id, output_uri=storage.normalize(m.output.uri), task=task_spec(m), sampling=sampling_params(m),
        id_column=m.input.id_column, text_column=m.input.text_column,
        language_column=getattr(m.task, "target_language_column", None),
        max_input_tokens=m.params.max_input_tokens, on_long_input=m.params.on_long_input,
    )


def run_key(m: InferenceManifest) -> dict:
    """What the output depends on: a resumed run must match it."""
    return m.model_dump(mode="json", include={"task", "model", "input", "params"})


def run_job(manifest: InferenceManifest, *, job_id: str | None = None, ray_address: str | None = None,
            on_progress: Callable[[JobProgress], None] | None = None, cancel: threading.Event | None = None,
            show_progress: bool = False) -> JobResult:
    from workers.inference.pool import ActorPool, PoolConfig, PoolError

    job_id = job_id or f"{manifest.name}-{uuid.uuid4().hex[:8]}"
    structlog.contextvars.bind_contextvars(job_id=job_id)
    started = time.time()
    work = build_work(manifest, job_id)
    out_uri = work.output_uri
    progress = JobProgress()
    display = None
    if show_progress:
        from jobs.run.progress import ProgressDisplay

        display = ProgressDisplay(manifest.name)
        display.__enter__()

    def publish() -> None:
        progress.elapsed_s = time.time() - started
        if display:
            display.update(progress)
        if on_progress:
            on_progress(progress)

    try:
        required = {work.id_column: "id", work.text_column: "text"}
        if work.language_column:
            required[work.language_column] = "target language"
        if manifest.evaluate and not manifest.evaluate.references_uri:  # references read from the input
            required.setdefault(manifest.evaluate.reference_column, "reference")
        shards = plan_shards(manifest.input.uri, required, manifest.input.rows_per_shard)
        if manifest.evaluate and manifest.evaluate.references_uri:
            evaluation.check_references(manifest.evaluate.references_uri, work.id_column,
                                        manifest.evaluate.reference_column)
        commit.prepare_output(out_uri, manifest.output.mode, run_key(manifest))
        done_before = commit.committed_shards(out_uri) & {s.shard_id for s in shards}
        todo = [s for s in shards if s.shard_id not in done_before]
        commit.write_json(storage.join(out_uri, commit.MANIFEST_FILE), {
            "job_id": job_id, "manifest": manifest.model_dump(mode="json"),
            "manifest_hash": manifest.manifest_hash(), "run_key": run_key(manifest),
            "shards": [{"shard_id": s.shard_id, "file": s.file_uri, "rows": [s.row_start, s.row_end]} for s in shards],
            "created_at": started,
        })
        progress.shards_total, progress.shards_skipped = len(shards), len(done_before)
        if done_before:
            log.info("job.resume", skipped_shards=len(done_before), shard_ids=sorted(done_before), todo=len(todo))
        log.info("job.planned", shards=len(shards), todo=len(todo), output=out_uri)
        publish()

        outcome = None
        if todo:
            ray_cluster.connect(ray_address)
            res = manifest.resources
            pool = ActorPool(PoolConfig(
                workers=res.workers, num_cpus=res.cpus_per_worker, num_gpus=res.gpus_per_worker,
                actor_args=(manifest.model,),
                actor_kwargs=dict(engine=manifest.engine, batch_size=res.batch_size,
                                  max_batch_tokens=res.max_batch_tokens, threads=max(1, int(res.cpus_per_worker)),
                                  **_baseline_kwargs(manifest, out_uri)),
                max_attempts=manifest.max_shard_attempts, stop_on_failure=manifest.on_shard_failure == "fail",
            ), job_id)
            progress.phase = "running"
            publish()

            def on_report(r: ShardReport) -> None:
                progress.shards_done += 1
                progress.rows += r.rows
                progress.error_rows += r.error_rows
                progress.completion_tokens += r.completion_tokens
                publish()

            outcome = pool.run(todo, work, on_report, cancel)
            progress.shards_failed = len(outcome.failed)
            publish()
            if outcome.cancelled:
                return _finish(JobResult("cancelled", out_uri, "cancelled by request"), progress, job_id, started)
            if outcome.failed and manifest.on_shard_failure == "fail":
                sid, reason = next(iter(outcome.failed.items()))
                return _finish(JobResult("failed", out_uri, f"shard {sid} failed after "
                                         f"{outcome.attempts[sid]} attempt(s): {reason}"), progress, job_id, started)

        progress.phase = "finalizing"
        publish()
        committed = commit.committed_shards(out_uri) & {s.shard_id for s in shards}
        skipped = {sid: reason for sid, reason in (outcome.failed.items() if outcome else [])}
        missing = {s.shard_id for s in shards} - committed - set(skipped)
        if missing:
            return _finish(JobResult("failed", out_uri, f"{len(missing)} shard(s) not committed: "
                                     f"{sorted(missing)[:5]}"), progress, job_id, started)
        totals = commit.output_totals(out_uri, committed)
        wall = time.time() - started
        summary = {
            "job_id": job_id, "status": "succeeded", **totals, "output": out_uri,
            "shards_total": len(shards), "shards_committed": progress.shards_done,
            "shards_skipped": len(done_before), "shards_failed": len(skipped),
            "skipped_failed_shards": skipped, "wall_s": round(wall, 3),
            "run_completion_tokens": progress.completion_tokens,
            "tokens_per_s": round(progress.completion_tokens / wall, 2) if wall > 0 else 0.0,
            "model": manifest.model, "engine": manifest.engine, "manifest_hash": manifest.manifest_hash(),
            "finished_at": time.time(),
        }
        if manifest.evaluate:
            progress.phase = "evaluating"
            publish()
            summary["metrics"] = evaluation.evaluate_job(manifest, out_uri)
            log.info("job.metrics", **evaluation.headline(summary["metrics"]),
                     scored=summary["metrics"]["scored"], errors=summary["metrics"]["errors"])
        commit.write_json(storage.join(out_uri, commit.SUCCESS_FILE), summary)
        progress.phase = "done"
        publish()
        log.info("job.succeeded", **{k: summary[k] for k in ("rows", "error_rows", "completion_tokens", "wall_s")})
        return JobResult("succeeded", out_uri, None, summary)
    except (PoolError, commit.OutputExistsError, FileNotFoundError, ValueError) as exc:
        log.error("job.failed", error=str(exc))
        return _finish(JobResult("failed", out_uri, str(exc)), progress, job_id, started)
    finally:
        if display:
            display.__exit__(None, None, None)
        structlog.contextvars.unbind_contextvars("job_id")


def _baseline_kwargs(m: InferenceManifest, out_uri: str) -> dict:
    """engine: baseline + classify: fit the classifier once here; the actors load it."""
    if m.engine != "baseline" or m.task.kind != "classify":
        return {}
    from workers.inference.baseline import prepare_classifier

    return {"baseline_model_uri": prepare_classifier(out_uri, m.task.train_uri, m.input.text_column,
                                                     m.task.train_label_column, tuple(m.task.labels))}


def _finish(result: JobResult, progress: JobProgress, job_id: str, started: float) -> JobResult:
    wall = time.time() - started
    result.summary = {
        "job_id": job_id, "status": result.status, "rows": progress.rows, "error_rows": progress.error_rows,
        "completion_tokens": progress.completion_tokens, "shards_total": progress.shards_total,
        "shards_committed": progress.shards_done, "shards_skipped": progress.shards_skipped,
        "shards_failed": progress.shards_failed, "wall_s": round(wall, 3),
        "tokens_per_s": round(progress.completion_tokens / wall, 2) if wall > 0 else 0.0, "output": result.output_uri,
    }
    if result.status != "succeeded":
        log.warning("job.ended", status=result.status, error=result.error)
    return result
