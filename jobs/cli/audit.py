"""`llmbatch audit`: read the audit log, newest first, from the store (`--db`) or through the
service as an admin (`--server`, with $LLMBATCH_TOKEN). One line per entry:
time, actor, action, job, detail."""

from __future__ import annotations

import argparse
import json
import sys

from jobs.cli.client import Client, ClientError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("audit", help="the audit log, newest first (admin)")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--server", default=None, help="the service URL (default $LLMBATCH_SERVER); needs an admin token")
    where.add_argument("--db", default=None, help="read the store directly instead")
    p.add_argument("--token", default=None, help="default $LLMBATCH_TOKEN")
    p.add_argument("--actor", default=None, help="only this actor's lines")
    p.add_argument("--limit", type=int, default=50)
    p.add_argument("--before", type=int, default=None, help="only lines older than this seq (paging)")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.set_defaults(func=cmd_audit)


def _fetch(args) -> list[dict]:
    if args.db is not None:
        from jobs.service.store.job_store import Store  # SQLAlchemy: only for --db

        return Store(args.db).audit_lines(args.limit, before=args.before, actor=args.actor)
    client = Client(args.server, args.token)
    try:
        params = {k: v for k, v in (("limit", args.limit), ("before", args.before), ("actor", args.actor)) if v}
        return client.audit(**params)["lines"]
    finally:
        client.close()


def cmd_audit(args) -> int:
    try:
        lines = _fetch(args)
    except ClientError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for line in lines:
        if args.json:
            print(json.dumps(line, default=str))
            continue
        at = str(line["at"])[:19].replace("T", " ")
        detail = json.dumps(line.get("detail") or {}, sort_keys=True, default=str)
        print(f"{line['seq']}\t{at}\t{line['actor']}\t{line['action']}\t{line.get('job_id') or '-'}\t{detail}")
    return 0
