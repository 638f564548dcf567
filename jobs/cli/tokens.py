"""`llmbatch tokens create`: make an API token. It writes the store directly, so it runs where
the service's database is reachable, and prints the secret once, as its last word."""

from __future__ import annotations

import argparse
import sys

from jobs.service.auth import create_token
from jobs.service.store.job_store import Store


def register(sub: argparse._SubParsersAction) -> None:
    t = sub.add_parser("tokens", help="manage API tokens (writes the store directly)")
    tsub = t.add_subparsers(dest="tokens_command", required=True)
    tc = tsub.add_parser("create", help="create a token; prints it (once) as the last word")
    tc.add_argument("name")
    tc.add_argument("--input-prefix", action="append", default=[], help="allowed input URI prefix ('*': any)")
    tc.add_argument("--output-prefix", action="append", default=[], help="allowed output URI prefix ('*': any)")
    tc.add_argument("--admin", action="store_true", help="may cancel anyone's jobs")
    tc.add_argument("--db", default=None)
    tc.set_defaults(func=cmd_tokens_create)


def cmd_tokens_create(args) -> int:
    if not args.input_prefix or not args.output_prefix:
        print("give at least one --input-prefix and one --output-prefix ('*' allows any)", file=sys.stderr)
        return 2
    store = Store(args.db)
    secret = create_token(store, args.name, input_prefixes=args.input_prefix,
                          output_prefixes=args.output_prefix, admin=args.admin)
    print(f"token for {args.name} (shown once): {secret}")
    return 0
