"""`llmbatch tokens create | list | revoke`: manage API tokens. These write the store directly, so
they run where the service's database is reachable; `create` prints the secret once, as its last
word. Creation and revocation are audited (actor `cli:<user>`); `list` never shows a secret."""

from __future__ import annotations

import argparse
import getpass
import sys

# The store and token modules (SQLAlchemy, about a second) are imported by these commands only, not by
# every `llmbatch` command that registers them.


def _actor() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):  # no user name for this uid (containers)
        return "cli"


def _duration(text: str) -> str:
    from jobs.service.tokens import parse_duration

    try:
        parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def register(sub: argparse._SubParsersAction) -> None:
    t = sub.add_parser("tokens", help="manage API tokens (writes the store directly)")
    tsub = t.add_subparsers(dest="tokens_command", required=True)
    tc = tsub.add_parser("create", help="create a token; prints it (once) as the last word")
    tc.add_argument("name")
    tc.add_argument("--input-prefix", action="append", default=[], help="allowed input URI prefix ('*': any)")
    tc.add_argument("--output-prefix", action="append", default=[], help="allowed output URI prefix ('*': any)")
    tc.add_argument("--admin", action="store_true", help="sees and may cancel anyone's jobs; manages tokens")
    tc.add_argument("--expires-in", type=_duration, default=None, metavar="DURATION",
                    help="e.g. 30d, 12h, 2w (default: never)")
    tc.add_argument("--db", default=None)
    tc.set_defaults(func=cmd_tokens_create)
    tl = tsub.add_parser("list", help="every token: scopes, admin, created, expires, last used, revoked")
    tl.add_argument("--db", default=None)
    tl.set_defaults(func=cmd_tokens_list)
    tr = tsub.add_parser("revoke", help="revoke a token now (its calls get 401 from then on)")
    tr.add_argument("name")
    tr.add_argument("--db", default=None)
    tr.set_defaults(func=cmd_tokens_revoke)


def cmd_tokens_create(args) -> int:
    if not args.input_prefix or not args.output_prefix:
        print("give at least one --input-prefix and one --output-prefix ('*' allows any)", file=sys.stderr)
        return 2
    from jobs.service.auth import create_token
    from jobs.service.store.job_store import Store
    from jobs.service.tokens import expires_at, list_tokens

    store = Store(args.db)
    if any(t["name"] == args.name for t in list_tokens(store)):
        print(f"a token named '{args.name}' exists already (names are unique; revoked ones too)", file=sys.stderr)
        return 2
    secret = create_token(store, args.name, input_prefixes=args.input_prefix, output_prefixes=args.output_prefix,
                          admin=args.admin, expires_at=expires_at(args.expires_in), actor=_actor())
    print(f"token for {args.name} (shown once): {secret}")
    return 0


def cmd_tokens_list(args) -> int:
    from jobs.service.store.job_store import Store
    from jobs.service.tokens import describe, list_tokens

    for token in list_tokens(Store(args.db)):
        print(describe(token))
    return 0


def cmd_tokens_revoke(args) -> int:
    from jobs.service.store.job_store import Store
    from jobs.service.tokens import UnknownToken, revoke_token

    try:
        _token, changed = revoke_token(Store(args.db), args.name, actor=_actor())
    except UnknownToken as exc:
        print(str(exc), file=sys.stderr)
        return 1
    print(f"token '{args.name}' {'revoked' if changed else 'was already revoked'}")
    return 0
