"""`llmbatch submit | status | list | logs | cancel | wait`: the commands that talk to a running
service over HTTP (`--server`, or $LLMBATCH_SERVER) with the token in $LLMBATCH_TOKEN.

`submit` prints what it made as its last word; `wait` exits with the job's outcome
(jobs.lifecycle.exit_code: 0 succeeded, 1 failed, 3 partial, 130 cancelled).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from datetime import datetime

from jobs.cli.client import Client, ClientError
from jobs.cli.job_text import duration_text, rows_text, short_rows
from jobs.cli.remote_progress import remote_progress
from jobs.lifecycle import exit_code, shards_finished


def add_server(parser: argparse.ArgumentParser) -> None:
    """--server, for every command that talks to the service."""
    parser.add_argument("--server", default=None, help="service URL (default $LLMBATCH_SERVER or http://127.0.0.1:8080)")


def register(sub: argparse._SubParsersAction) -> None:
    def remote(name: str, help: str, func, *, job_id: bool = True):
        r = sub.add_parser(name, help=help)
        add_server(r)
        if job_id:
            r.add_argument("job_id", metavar="ID")
        r.set_defaults(func=func)
        return r

    s = remote("submit", "submit a manifest to the service; prints the job id last", cmd_submit, job_id=False)
    s.add_argument("file", metavar="FILE")
    s.add_argument("--queue", default=None)
    s.add_argument("--priority", type=int, default=None)
    s.add_argument("--idempotency-key", default=None)
    s.add_argument("--max-attempts", type=int, default=None)
    s.add_argument("--retry-backoff", type=float, default=None, dest="retry_backoff_s")
    s.add_argument("--timeout", type=float, default=None, dest="timeout_s")
    s.add_argument("--schedule", default=None, metavar="CRON", help="run every period instead of once")
    s.add_argument("--on-missed", choices=["run_once", "skip"], default="run_once")
    remote("status", "show one job", cmd_status)
    ls = remote("list", "list jobs", cmd_list, job_id=False)
    ls.add_argument("--state", default=None)
    ls.add_argument("--limit", type=int, default=50)
    lg = remote("logs", "show a job's event log", cmd_logs)
    lg.add_argument("-f", "--follow", action="store_true", help="keep printing until the job ends")
    remote("cancel", "cancel a queued or running job", cmd_cancel)
    remote("wait", "wait for a job with a progress bar; exit 0 succeeded, 1 failed, 3 partial, 130 cancelled",
           cmd_wait)


def client(args) -> Client:
    return Client(args.server)


_client = client


def _absolute_local(manifest: dict) -> dict:
    """Relative local paths mean the caller's directory, not the service's."""
    def fix(uri):
        if isinstance(uri, str) and "://" not in uri and not uri.startswith("/"):
            return os.path.abspath(uri)
        return uri

    out = dict(manifest)
    if isinstance(out.get("input"), dict):
        uri = out["input"].get("uri")
        out["input"] = {**out["input"], "uri": [fix(u) for u in uri] if isinstance(uri, list) else fix(uri)}
    if isinstance(out.get("output"), dict):
        out["output"] = {**out["output"], "uri": fix(out["output"].get("uri"))}
    return out


def run_call(fn: Callable[[], int]) -> int:
    """Run a command's body; a refusal from the service is one line on stderr and exit code 1."""
    try:
        return fn()
    except ClientError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


_run = run_call


def cmd_submit(args) -> int:
    # Imported here: the manifest models (pydantic, boto3 through the storage checks) cost about a
    # second, which `status`, `list` or `wait` should not pay.
    from jobs.manifest.errors import ManifestError
    from jobs.manifest.load import read_manifest_file

    try:  # the same safe reading as `validate` (no aliases, duplicate keys or huge numbers)
        manifest = read_manifest_file(args.file)
    except ManifestError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not isinstance(manifest, dict):
        print(f"error: {args.file} is not a mapping of manifest fields", file=sys.stderr)
        return 2
    opts = {k: getattr(args, k) for k in ("queue", "priority", "idempotency_key", "max_attempts",
                                          "retry_backoff_s", "timeout_s")}
    if args.schedule:
        opts["schedule"] = {"cron": args.schedule, "on_missed": args.on_missed}

    def go() -> int:
        out = _client(args).submit(_absolute_local(manifest), **opts)
        if out.get("schedule"):
            sch = out["schedule"]
            print(f"schedule {sch['cron']} next run {sch['next_run_at']}: {sch['id']}")
        else:
            job = out["job"]
            print(f"{'submitted' if out['created'] else 'already submitted'} {job['name']}: {job['id']}")
        return 0

    return _run(go)


def fmt_time(value) -> str:
    return datetime.fromisoformat(value).strftime("%Y-%m-%d %H:%M:%S") if value else "-"


_fmt_time = fmt_time


def cmd_status(args) -> int:
    def go() -> int:
        job = _client(args).get(args.job_id)
        for key in ("id", "name", "owner", "state", "queue", "priority", "attempts", "max_attempts", "error",
                    "output_uri"):
            if job.get(key) is not None:
                print(f"{key:13} {job[key]}")
        for key in ("created_at", "started_at", "finished_at"):
            print(f"{key:13} {_fmt_time(job.get(key))}")
        if job.get("rows") is not None or job.get("rows_total") is not None:
            print(f"{'rows':13} {rows_text(job)}")
        if job.get("completion_tokens") is not None:
            print(f"{'tokens':13} {job['completion_tokens']:,}")
        if job.get("eta_s") is not None:
            print(f"{'eta':13} {duration_text(job['eta_s'])}")
        for n, reason in enumerate(job.get("reasons") or []):
            print(f"{'reasons' if n == 0 else '':13} - {reason}")
        if job.get("progress"):
            print(f"{'progress':13} {json.dumps(job['progress'])}")
        return 0

    return _run(go)


def cmd_list(args) -> int:
    def go() -> int:
        jobs = _client(args).list(state=args.state, limit=args.limit)
        print(f"{'ID':22} {'STATE':10} {'QUEUE':10} {'PRI':>4} {'SHARDS':>9} {'ROWS':>15} {'ETA':>6}  "
              f"{'CREATED':19}  NAME")
        for j in jobs:
            p = j.get("progress") or {}
            shards = f"{shards_finished(p)}/{p.get('shards_total', 0)}" if p else "-"
            eta = duration_text(j.get("eta_s")) if j.get("eta_s") is not None else "-"
            print(f"{j['id']:22} {j['state']:10} {j['queue']:10} {j['priority']:>4} {shards:>9} "
                  f"{short_rows(j):>15} {eta:>6}  {_fmt_time(j['created_at']):19}  {j['name']}")
        return 0

    return _run(go)


def cmd_logs(args) -> int:
    def go() -> int:
        c = _client(args)
        events = c.follow(args.job_id) if args.follow else c.events(args.job_id)["events"]
        for ev in events:
            state = f" [{ev['state']}]" if ev.get("state") else ""
            print(f"{_fmt_time(ev['at'])} {ev['kind']}{state} {ev.get('message') or ''}", flush=True)
        return 0

    return _run(go)


def cmd_cancel(args) -> int:
    def go() -> int:
        job = _client(args).cancel(args.job_id)
        print(f"{job['id']} {job['state']}")
        return 0

    return _run(go)


def cmd_wait(args) -> int:
    def go() -> int:
        with remote_progress() as show:
            job = _client(args).wait(args.job_id, on_update=show)
        if job.get("rows") is not None:
            print(f"{job['id']} {rows_text(job)}")
        for reason in job.get("reasons") or []:
            print(f"{job['id']} partial: {reason}")
        error = "" if job.get("reasons") or not job.get("error") else f": {job['error']}"
        print(f"{job['id']} {job['state']}{error}")  # the state stays the last word
        return exit_code(job["state"])

    return _run(go)
