"""The output location, checked before anything is written or deleted there: it does not overlap
the input (a run that publishes or garbage-collects there must never touch the input, and parts
written under an input folder would be read as input next time), and it is writable (a probe
object put, then deleted)."""

from __future__ import annotations

import os
import uuid

from botocore.exceptions import BotoCoreError, ClientError

from cluster import storage
from cluster.storage.uri import glob_base, glob_regex, has_glob, local_path
from jobs.run.preflight.plan import Plan

PROBE_PREFIX = "_probe-"


def canonical(uri: str) -> str:
    """One spelling per location: S3 without a trailing slash, local paths absolute with symlinks
    resolved (so `out/../in` and a symlink to the input are the input)."""
    return storage.normalize(uri) if storage.is_s3(uri) else os.path.realpath(local_path(uri))


def _under(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip("/") + "/")


def _glob_reaches(pattern: str, folder: str) -> bool:
    """Could files the output will hold (parts in subfolders, files beside them) match `pattern`?"""
    spelled = pattern if storage.is_s3(pattern) else local_path(pattern)
    if not _under(folder, canonical(glob_base(spelled)) if glob_base(spelled) else folder):
        return False
    regex = glob_regex(spelled)
    samples = (f"{folder}/x.parquet", f"{folder}/data/run/part-x.parquet")
    return any(regex.fullmatch(s) for s in samples) or "**" in pattern


def overlap_problems(input_uri: str | list[str], files: list[storage.FileRef], output_uri: str,
                     field: str = "input.uri", out_field: str = "output.uri") -> list[str]:
    """Problems when an input file lies under the output, or the output under an input folder."""
    out = canonical(output_uri)
    problems = []
    inside = [f.uri for f in files if _under(canonical(f.uri), out)]
    if inside:
        more = f" and {len(inside) - 3} more" if len(inside) > 3 else ""
        problems.append(f"{out_field} {output_uri} holds input files ({', '.join(inside[:3])}{more}): "
                        "overwrite and clean-up there would touch the input; write the output elsewhere")
    for entry in [input_uri] if isinstance(input_uri, str) else input_uri:
        reaches = _glob_reaches(entry, out) if has_glob(entry) else _under(out, canonical(entry))
        if reaches and not inside:
            problems.append(f"{out_field} {output_uri} is inside {field} {entry}: the output's parts would be "
                            "read as input by the next run; write the output elsewhere")
    return problems


def probe_problem(output_uri: str, scope: storage.Scope | None, field: str = "output.uri") -> str | None:
    """Put then delete `_probe-<uuid>` at the output; why that failed, or None."""
    probe = storage.join(output_uri, f"{PROBE_PREFIX}{uuid.uuid4().hex}")
    created = [] if storage.is_s3(output_uri) else _missing_folders(local_path(output_uri))
    try:
        storage.write_bytes(probe, b"llmbatch pre-flight probe\n", scope)
        storage.delete(probe, scope)
    except storage.ScopeError as exc:
        return f"{field}: {exc}"
    except ClientError as exc:  # the error code only: a client error's message can name the endpoint
        return f"{field}: {output_uri} is not writable ({exc.response.get('Error', {}).get('Code', 'error')})"
    except (BotoCoreError, OSError, ValueError) as exc:
        return f"{field}: {output_uri} is not writable ({type(exc).__name__}: {exc})"
    finally:
        for folder in created:  # a dry run leaves no empty folders behind
            try:
                os.rmdir(folder)
            except OSError:
                break
    return None


def _missing_folders(path: str) -> list[str]:
    """The folders a write at `path`/name would create, deepest first."""
    missing = []
    while path and not os.path.exists(path):
        missing.append(path)
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    return missing


def exists_problem(output_uri: str, mode: str, scope: storage.Scope | None) -> str | None:
    """`error_if_exists` refuses an output location that already holds anything."""
    if mode != "error_if_exists":
        return None
    try:
        names = storage.list_names(output_uri, scope)
    except (ClientError, BotoCoreError, OSError, ValueError):
        return None  # the probe reports a location it cannot reach
    if names:
        return (f"output.uri: {output_uri} already holds {len(names)} object(s) and output.mode is "
                "error_if_exists (use overwrite or resume, or another location)")
    return None


def check_output(output_uri: str, mode: str, plan: Plan, scope: storage.Scope | None, probe: bool) -> None:
    problem = exists_problem(output_uri, mode, scope)
    if problem:
        plan.problems.append(problem)
    if probe:
        problem = probe_problem(output_uri, scope)
        if problem:
            plan.problems.append(problem)
        else:
            plan.checked.append(f"output: {output_uri} writable (a probe object put and deleted)")
