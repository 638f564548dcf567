"""`llmbatch`: the command line. Each command group lives in its own module with `register()`."""

from __future__ import annotations

import argparse
import os
import sys

from cluster import logs
from jobs.cli import audit, compare, evaluate, local, remote, retry, schedules, serve, tokens

# Each adds its subcommands with register(subparsers) and sets args.func; in help order.
COMMAND_GROUPS = (
    local,  # run, validate, models
    retry,  # retry
    serve,  # serve
    tokens,  # tokens create | list | revoke
    audit,  # audit
    remote,  # submit, status, list, logs, cancel, wait
    schedules,  # schedules list | show | delete
    evaluate,  # eval, report
    compare,  # compare
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="llmbatch",
        description="Batch inference and training for language models on Ray.",
    )
    parser.add_argument("--log-level", default=None, help="DEBUG, INFO (default), WARNING, ERROR")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="also show the inference actors' log lines on the terminal (they always go to a log file)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for group in COMMAND_GROUPS:
        group.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.verbose:  # read by the actors' log set-up (cluster.logs), also in Ray's worker processes
        os.environ["LLMBATCH_VERBOSE"] = "1"
    logs.configure(level=args.log_level)
    try:
        code = args.func(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())
