"""Local commands: `run` a manifest on the embedded default or a cluster, `validate`, `models`."""

from __future__ import annotations

import argparse
import sys

from cluster.model_cache import models_dir
from jobs.lifecycle import JobState
from jobs.manifest import ManifestError, load_manifest
from jobs.manifest.uri_fields import check_models
from llm_core.weights.builtin import BUILTIN_MODELS
from workers.model_resolver import resolve_model
from workers.output.location import OutputMode


def register(sub: argparse._SubParsersAction) -> None:
    run = sub.add_parser("run", help="run a job manifest now (local Ray unless --ray-address/RAY_ADDRESS)")
    run.add_argument("manifest", help="path of a YAML/JSON job manifest")
    run.add_argument("--ray-address", default=None, help="join this Ray cluster (default: $RAY_ADDRESS, else local)")
    run.add_argument("--job-id", default=None, help="job id for logs and _SUCCESS.json (default: generated)")
    run.add_argument("--output-mode", choices=[mode.value for mode in OutputMode], default=None,
                     help="override output.mode of the manifest (e.g. resume after a crash)")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    run.set_defaults(func=cmd_run)

    val = sub.add_parser("validate", help="check a manifest; print every error with its field path")
    val.add_argument("manifest")
    val.set_defaults(func=cmd_validate)

    models = sub.add_parser("models", help="built-in models and the local model cache")
    msub = models.add_subparsers(dest="models_command", metavar="ACTION", required=True)
    pull = msub.add_parser("pull", help="fetch and convert a built-in model (or an s3:// folder) into the cache")
    pull.add_argument("name", help="e.g. smollm2-135m-instruct, builtin:smollm2-135m-instruct or s3://bucket/model")
    pull.set_defaults(func=cmd_models_pull)
    lst = msub.add_parser("list", help="list built-in models and whether each is cached")
    lst.set_defaults(func=cmd_models_list)


def _load(path: str):
    try:
        return check_models(load_manifest(path), path)  # a wrong model: refused before Ray starts
    except ManifestError as exc:
        print(f"error: {path}: manifest refused ({len(exc.errors)} error(s))", file=sys.stderr)
        for err in exc.errors:
            print(f"  {err}", file=sys.stderr)
        return None


def cmd_validate(args) -> int:
    manifest = _load(args.manifest)
    if manifest is None:
        return 2
    task = getattr(manifest.task, "kind", getattr(manifest, "task", ""))
    print(f"ok: {args.manifest}: {manifest.kind} job {manifest.name!r} ({task})")
    return 0


def cmd_run(args) -> int:
    # Ray, pyarrow and the engines load only when a job runs, not for every command.
    from cluster import ray_cluster
    from jobs.run.display import print_summary
    from jobs.run.registry import runner_for

    manifest = _load(args.manifest)
    if manifest is None:
        return 2
    if args.output_mode:
        manifest = manifest.model_copy(update={"output": manifest.output.model_copy(update={"mode": args.output_mode})})
    try:
        result = runner_for(manifest)(manifest, job_id=args.job_id, ray_address=args.ray_address,
                                      show_progress=not args.no_progress)
    finally:  # also on Ctrl-C: a local Ray started for this run ends with it, all its processes
        ray_cluster.shutdown()
    print_summary(result)
    if not result.ok:
        print(f"error: job {result.status}: {result.error}", file=sys.stderr)
    return 0 if result.ok else (130 if result.status is JobState.CANCELLED else 1)


def cmd_models_pull(args) -> int:
    ref = args.name if args.name.startswith(("builtin:", "s3://")) else f"builtin:{args.name}"
    print(resolve_model(ref))
    return 0


def cmd_models_list(args) -> int:
    for name, model in sorted(BUILTIN_MODELS.items()):
        cached = (models_dir() / name / "config.json").is_file()
        print(f"builtin:{name}\t{'cached' if cached else 'not cached'}\t{model.description}")
    return 0
