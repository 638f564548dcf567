"""`preflight(manifest)`: everything a job needs, checked before any worker is placed and before
anything is deleted; every problem collected, none stopping the others.

Inference: the input (files, columns, id rules, shards), the model (resolvable, its identity), the
adapter (an adapter folder trained on that model),
the output (not overlapping the input, writable, free under `error_if_exists`), prompt lengths
on a sample, and the evaluation references. Training: the model references, the data
(readable Parquet) and the output and checkpoint locations (writable).
"""

from __future__ import annotations

import structlog

from cluster import storage
from jobs.manifest import InferenceManifest, TrainingManifest
from jobs.manifest.uri_fields import manifest_uris, model_refs
from jobs.run.preflight.adapter import check_adapter
from jobs.run.preflight.engine import check_engine
from jobs.run.preflight.inputs import check_input, check_readable
from jobs.run.preflight.model import check_model, model_dir_on_node
from jobs.run.preflight.output import check_output, overlap_problems, probe_problem
from jobs.run.preflight.plan import Plan
from jobs.run.preflight.prompts import check_examples, check_prompts
from workers.uri_field import READ, WRITE

log = structlog.get_logger()

# Inference fields that have their own check: the input and the references (Parquet), the adapter (a folder).
OWN_CHECKS = ("input.uri", "evaluate.references_uri", "adapter", "task.examples.uri")


def preflight(manifest: InferenceManifest | TrainingManifest, scope: storage.Scope | None = None, *,
              probe_output: bool = True, sample_rows: int = 64) -> Plan:
    """The job's plan with every problem (fatal) and warning found. `scope`: the job's (default:
    this process's); probe_output False skips the probe object (nothing is written)."""
    with storage.scoped(scope) as scope:
        if isinstance(manifest, TrainingManifest):
            plan = _training(manifest, scope, probe_output)
        else:
            plan = _inference(manifest, scope, probe_output, sample_rows)
    log.info("preflight.done", problems=len(plan.problems), warnings=len(plan.warnings), rows=plan.rows)
    return plan


def _inference(m: InferenceManifest, scope: storage.Scope, probe: bool, sample_rows: int) -> Plan:
    plan = Plan()
    check_input(m, plan, scope)
    overlap = overlap_problems(m.input.uri, plan.files, m.output.uri)
    plan.problems += overlap
    check_engine(m.engine, plan)
    identity = None
    if m.engine != "baseline":  # the model-free baselines never load `model:`
        identity = check_model(m.model, plan, scope)
    if m.adapter:
        check_adapter(m, identity, plan, scope)
    _other_reads(m, plan, scope)
    check_examples(m, plan, scope)
    if m.evaluate and m.evaluate.references_uri:
        # scikit-learn and the metrics load only for a job that names references (seconds)
        from jobs.evaluation.scoring import check_references

        try:
            check_references(m.evaluate.references_uri, m.input.id_column, m.evaluate.reference_column)
        except (FileNotFoundError, OSError, ValueError, storage.ScopeError) as exc:
            plan.problems.append(f"evaluate.references_uri: {exc}")
    check_output(m.output.uri, m.output.mode, plan, scope, probe and not overlap)  # never a probe in the input
    if identity is not None and plan.files:
        check_prompts(m, plan, model_dir_on_node(identity), sample_rows, scope)
    return plan


def _other_reads(manifest, plan: Plan, scope: storage.Scope) -> None:
    """Every other Parquet location an inference manifest reads (a baseline classifier's training rows)."""
    for use in manifest_uris(manifest):
        if use.mark.model_ref or use.mark.in_keys or use.mark.access != (READ,):
            continue
        if use.path.split("[")[0] in OWN_CHECKS:
            continue
        check_readable(use.path, use.uri, plan, scope)


def _training(m: TrainingManifest, scope: storage.Scope, probe: bool) -> Plan:
    plan = Plan()
    for use in model_refs(m):
        check_model(use.uri, plan, scope, need=use.mark.need or "weights", field=use.path)
    data = [u for u in manifest_uris(m) if u.mark.access == (READ,) and not u.mark.model_ref and not u.mark.in_keys]
    for use in data:
        plan.rows += check_readable(use.path, use.uri, plan, scope)
        try:
            plan.files += storage.list_files(use.uri, scope=scope)
        except (FileNotFoundError, OSError, ValueError):
            pass  # check_readable reported it
    for use in manifest_uris(m):
        if WRITE not in use.mark.access or use.mark.in_keys:
            continue
        if data:
            plan.problems += overlap_problems([u.uri for u in data], plan.files, use.uri, "the training data",
                                              use.path)
        if use.path == "output.uri":
            check_output(use.uri, m.output.mode, plan, scope, probe)
        elif probe:
            problem = probe_problem(use.uri, scope, use.path)
            if problem:
                plan.problems.append(problem)
            else:
                plan.checked.append(f"{use.path}: {use.uri} writable (a probe object put and deleted)")
    return plan
