"""Local commands: `run` a manifest on the embedded default or a cluster, `validate`, `models`.

`validate --deep` and `run --dry-run` run the pre-flight (jobs.run.preflight) and print the plan;
exit codes: 0 no problem / succeeded, 2 refused (manifest or pre-flight), and for a job that ran
jobs.lifecycle.exit_code of its state (failed 1, partial 3, cancelled 130).
"""

from __future__ import annotations

import argparse
import sys
from datetime import datetime, timezone

from jobs.lifecycle import EXIT_REFUSED, exit_code
from workers.output.output_mode import OutputMode

# The manifest models, storage, Ray and the engines are imported by the commands that use them: every
# `llmbatch` command (and `--help`) registers these, and should not wait seconds for them.


def register(sub: argparse._SubParsersAction) -> None:
    run = sub.add_parser("run", help="run a job manifest now (local Ray unless --ray-address/RAY_ADDRESS)")
    run.add_argument("manifest", help="path of a YAML/JSON job manifest")
    run.add_argument("--ray-address", default=None, help="join this Ray cluster (default: $RAY_ADDRESS, else local)")
    run.add_argument("--job-id", default=None, help="job id for logs and _SUCCESS.json (default: generated)")
    run.add_argument("--output-mode", choices=[mode.value for mode in OutputMode], default=None,
                     help="override output.mode of the manifest (e.g. resume after a crash)")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    run.add_argument("--dry-run", action="store_true",
                     help="the pre-flight only (as validate --deep): print the plan and every problem; start nothing")
    run.set_defaults(func=cmd_run)

    val = sub.add_parser("validate", help="check a manifest; print every error with its field path")
    val.add_argument("manifest")
    val.add_argument("--deep", action="store_true",
                     help=("also the pre-flight: input files, columns and ids, model, output writable (a probe "
                           "object), prompt lengths on a sample; print the plan (exit 2 on any problem)"))
    val.set_defaults(func=cmd_validate)

    models = sub.add_parser("models", help="built-in models and the local model cache")
    msub = models.add_subparsers(dest="models_command", metavar="ACTION", required=True)
    pull = msub.add_parser("pull", help="fetch and convert a built-in model (or an s3:// folder) into the cache")
    pull.add_argument("name", help="e.g. smollm2-135m-instruct, builtin:smollm2-135m-instruct or s3://bucket/model")
    pull.set_defaults(func=cmd_models_pull)
    lst = msub.add_parser("list", help="list built-in models and whether each is cached")
    lst.set_defaults(func=cmd_models_list)


def _load(path: str):
    from jobs.manifest import ManifestError, load_manifest
    from jobs.manifest.uri_fields import check_models

    try:
        return check_models(load_manifest(path), path)  # a wrong model: refused before Ray starts
    except ManifestError as exc:
        print(f"error: {path}: manifest refused ({len(exc.errors)} error(s))", file=sys.stderr)
        for err in exc.errors:
            print(f"  {err}", file=sys.stderr)
        return None


def _describe(path: str, manifest) -> str:
    task = getattr(manifest.task, "kind", getattr(manifest, "task", ""))
    return f"{path}: {manifest.kind} job {manifest.name!r} ({task})"


def cmd_validate(args) -> int:
    manifest = _load(args.manifest)
    if manifest is None:
        return EXIT_REFUSED
    if getattr(args, "deep", False):
        return _print_plan(args.manifest, manifest)
    print(f"ok: {_describe(args.manifest, manifest)}")
    return 0


def _print_plan(path: str, manifest) -> int:
    """The pre-flight's plan on stdout; 0 when it found no problem, 2 otherwise."""
    # pyarrow and the tokenizer load only for a deep check, not for every command.
    from jobs.run.preflight import preflight
    from jobs.run.preflight.report import plan_lines

    plan = preflight(manifest, probe_output=True)
    model = manifest.model if manifest.kind == "inference" else manifest.model.uri  # training: None for a pretrain
    model_ref = model if model and getattr(manifest, "engine", "") != "baseline" else None
    id_column = manifest.input.id_column if manifest.kind == "inference" else None
    print("\n".join(plan_lines(plan, title=f"plan: {_describe(path, manifest)}", model_ref=model_ref,
                                id_column=id_column)))
    return 0 if plan.ok else EXIT_REFUSED


def cmd_run(args) -> int:
    manifest = _load(args.manifest)
    if manifest is None:
        return EXIT_REFUSED
    if args.output_mode:
        manifest = manifest.model_copy(update={"output": manifest.output.model_copy(update={"mode": args.output_mode})})
    if args.dry_run:  # the plan only: no Ray, nothing written but the probe object (deleted)
        return _print_plan(args.manifest, manifest)
    # Ray, pyarrow and the engines load only when a job runs, not for every command.
    from cluster import ray_cluster
    from cluster.ray_code import ClusterCodeMismatch
    from jobs.run.display import print_summary
    from jobs.run.registry import runner_for

    try:
        result = runner_for(manifest)(manifest, job_id=args.job_id, ray_address=args.ray_address,
                                      show_progress=not args.no_progress)
    except ClusterCodeMismatch as exc:  # the joined cluster cannot run this llmbatch: nothing ran
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    finally:  # also on Ctrl-C: a local Ray started for this run ends with it, all its processes
        ray_cluster.shutdown()
    if result.summary.get("refused"):  # the runner's pre-flight refused it: nothing ran, nothing to sum up
        print(f"error: job refused: {result.error}", file=sys.stderr)
        return EXIT_REFUSED
    print_summary(result)
    if not result.ok:
        print(f"error: job {result.status}: {result.error}", file=sys.stderr)
    return exit_code(result.status)


def cmd_models_pull(args) -> int:
    from workers.model_resolver import resolve_model

    ref = args.name if args.name.startswith(("builtin:", "s3://")) else f"builtin:{args.name}"
    print(resolve_model(ref))
    return 0


def cmd_models_list(args) -> int:
    from cluster.model_cache import cache_usage, models_dir
    from llm_core.weights.builtin import BUILTIN_MODELS

    for name, model in sorted(BUILTIN_MODELS.items()):
        cached = (models_dir() / name / "config.json").is_file()
        print(f"builtin:{name}\t{'cached' if cached else 'not cached'}\t{model.description}")
    usage = cache_usage()
    print(f"\nmodel cache {usage['root']}: {usage['total_bytes'] / 1e9:.2f} GB of "
          f"{usage['max_bytes'] / 1e9:g} GB (LLMBATCH_CACHE_MAX_GB); least recently used first:")
    for entry in usage["entries"]:
        used = datetime.fromtimestamp(entry["last_used"], timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        in_use = "\tin use" if entry["in_use"] else ""
        print(f"  {entry['ref'] or entry['key']}\t{entry['bytes'] / 1e6:.1f} MB\tlast used {used}{in_use}"
              f"\t{entry['key']}")
    return 0
