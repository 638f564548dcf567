"""`llmbatch retry OUTPUT_OR_MANIFEST`: redo only the failed rows of a finished inference job.

The manifest comes from the output's published marker or `_manifest.json` (or the file named),
and runs with `output.mode: retry_errors`: the error rows of the published snapshot are redone (retriable ones;
`--all` takes permanent ones too) and a new snapshot is published with each id once, the new
results in place of the errors. Exit codes as `llmbatch run`: 0 succeeded, 1 failed, 2 refused,
3 partial, 130 cancelled.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from jobs.lifecycle import EXIT_REFUSED, exit_code

if TYPE_CHECKING:  # the manifest models load when retry runs, not for every command
    from jobs.manifest.inference import InferenceManifest

MANIFEST_SUFFIXES = (".yaml", ".yml", ".json")


def register(sub: argparse._SubParsersAction) -> None:
    retry = sub.add_parser("retry", help="redo only the error rows of a finished inference job (a new snapshot)")
    retry.add_argument("target", metavar="OUTPUT_OR_MANIFEST",
                       help="the job's output location (its _manifest.json names the job), or the manifest file")
    retry.add_argument("--all", action="store_true", dest="retry_all",
                       help="also redo permanent errors (input problems), not only retriable ones")
    retry.add_argument("--ray-address", default=None, help="join this Ray cluster (default: $RAY_ADDRESS, else local)")
    retry.add_argument("--job-id", default=None, help="job id for logs and the marker (default: generated)")
    retry.add_argument("--no-progress", action="store_true", help="no progress bar")
    retry.set_defaults(func=cmd_retry)


def manifest_of(target: str) -> InferenceManifest:
    """The inference manifest to retry: a manifest file, or the one an output's `_manifest.json`
    recorded. ManifestError / ValueError name what is wrong."""
    from jobs.manifest import load_manifest, parse_manifest

    if target.endswith(MANIFEST_SUFFIXES) and Path(target).is_file():
        manifest = load_manifest(target)
    else:
        from workers.output.location import OutputLocation

        # The published snapshot's own job first (a later run may have failed after planning),
        # else the plan of the latest run started there.
        output = OutputLocation.at(target)
        for name, recorded in (("the published marker", output.snapshot()), ("_manifest.json", output.read_manifest())):
            if recorded and "manifest" in recorded:
                manifest = parse_manifest(recorded["manifest"], f"{target}: {name}")
                break
        else:
            raise ValueError(f"{target}: no published marker or _manifest.json names the job (is this an llmbatch output?)")
    if manifest.kind != "inference":
        raise ValueError(f"{target}: retry redoes the error rows of an inference job, not a {manifest.kind} job")
    return manifest.model_copy(update={"output": manifest.output.model_copy(update={"mode": "retry_errors"})})


def cmd_retry(args) -> int:
    from cluster import ray_cluster
    from cluster.ray_code import ClusterCodeMismatch
    from jobs.manifest import ManifestError
    from jobs.run.display import print_summary
    from jobs.run.inference import run_job

    try:
        manifest = manifest_of(args.target)
    except ManifestError as exc:
        print(f"error: {args.target}: manifest refused ({len(exc.errors)} error(s))", file=sys.stderr)
        for err in exc.errors:
            print(f"  {err}", file=sys.stderr)
        return EXIT_REFUSED
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    try:
        result = run_job(manifest, job_id=args.job_id, ray_address=args.ray_address,
                         show_progress=not args.no_progress, retry_all=args.retry_all)
    except ClusterCodeMismatch as exc:  # the joined cluster cannot run this llmbatch: nothing ran
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    finally:  # also on Ctrl-C: a local Ray started for this run ends with it
        ray_cluster.shutdown()
    print_summary(result)
    if result.summary.get("refused"):
        print(f"error: job refused: {result.error}", file=sys.stderr)
        return EXIT_REFUSED
    if not result.ok:
        print(f"error: job {result.status}: {result.error}", file=sys.stderr)
    return exit_code(result.status)
