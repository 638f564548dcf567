"""`outcome_run_job`: a runner for the service's tests of outcomes and progress, where the runner
is not what is tested. It ends the way its manifest asks and reports whole-job progress figures
(rows done/total, errors, tokens, ETA, a shard latency histogram) as the inference runner does.

The outcome rides in the prompt template, a field it does not otherwise use:
`"{text} #outcome=partial"` (or succeeded, failed, hold: report progress, then wait for cancel).
"""

from __future__ import annotations

import time

from jobs.lifecycle import JobState
from jobs.run.results import JobResult

SHARDS, ROWS_PER_SHARD = 4, 5
ERROR_ROWS = 3  # of the partial outcome: its rows with an error instead of an output
REASONS = ["1 of 4 shards skipped (on_shard_failure: skip): shard 3: engine died (pid=4242, ip=10.1.2.3)",
           "error rows 3/20 = 15.0% above max_error_rate 0.0%"]
HISTOGRAM_KEYS = ("0.005", "0.01", "0.025", "0.05", "0.075", "0.1", "0.25", "0.5", "0.75", "1.0", "2.5", "5.0",
                  "7.5", "10.0", "+Inf")


def outcome_manifest(name: str, inputs, output: str, outcome: str) -> dict:
    return {"name": name, "task": {"kind": "generate", "prompt_template": f"{{text}} #outcome={outcome}"},
            "input": {"uri": str(inputs)}, "output": {"uri": output}, "resources": {"workers": 1, "cpus_per_worker": 1}}


def progress_after(shards: int) -> dict:
    """The progress after `shards` committed shards, each taking 0.3 s."""
    rows = shards * ROWS_PER_SHARD
    return {"shards_total": SHARDS, "shards_done": shards, "shards_failed": 0, "shards_skipped": 0,
            "rows_total": SHARDS * ROWS_PER_SHARD, "rows": rows, "error_rows": min(shards, ERROR_ROWS),
            "completion_tokens": rows * 4, "elapsed_s": shards * 0.3, "rows_per_s": 16.7,
            "eta_s": (SHARDS - shards) * 0.3 + 60.0, "tokens_per_s": 66.7, "phase": "running",
            "shard_seconds_sum": shards * 0.3, "shard_seconds_count": shards,
            "shard_seconds_buckets": {k: (shards if float(k) >= 0.5 else 0) for k in HISTOGRAM_KEYS}}


def summary_of(outcome: str) -> dict:
    """The summary a run that ended `outcome` hands back (the counts its marker would list)."""
    skipped = outcome == "partial"
    rows = (SHARDS - skipped) * ROWS_PER_SHARD
    summary = {"rows_total": SHARDS * ROWS_PER_SHARD, "rows": rows, "error_rows": ERROR_ROWS,
               "prompt_tokens": rows * 10, "completion_tokens": rows * 4, "shards_total": SHARDS,
               "shards_committed": SHARDS - skipped, "shards_skipped": int(skipped), "shards_failed": 0}
    return {**summary, "reasons": list(REASONS)} if skipped else summary


def outcome_run_job(manifest, *, job_id, ray_address=None, on_progress=None, cancel=None, show_progress=False):
    outcome = manifest.task.prompt_template.rsplit("#outcome=", 1)[1]
    out = manifest.output.uri
    shards = SHARDS - 1 if outcome in ("partial", "hold") else SHARDS
    for n in range(1, shards + 1):
        time.sleep(0.3)
        if on_progress:
            on_progress(progress_after(n))
    if outcome == "hold":  # a running job with an ETA, until it is cancelled
        while cancel is not None and not cancel.wait(0.2):
            pass
        return JobResult(JobState.CANCELLED, out, None, {})
    if outcome == "failed":
        return JobResult(JobState.FAILED, out, "planned failure", {})
    if outcome == "partial":
        return JobResult(JobState.PARTIAL, out, "; ".join(REASONS), summary_of("partial"))
    return JobResult(JobState.SUCCEEDED, out, None, summary_of("succeeded"))
