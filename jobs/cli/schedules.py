"""`llmbatch schedules list | show ID | delete ID`: the cron schedules made by `submit --schedule`.

Through the service's API, so a token sees and stops only its own schedules (an admin: all).
`show` lists the periods that did not run, and why (the previous run still going, or missed
while the service was down with `on_missed: skip`).
"""

from __future__ import annotations

import argparse

from jobs.cli.remote import add_server, client, fmt_time, run_call


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("schedules", help="list, show or stop cron schedules (made by `submit --schedule`)")
    ssub = p.add_subparsers(dest="schedules_command", metavar="ACTION", required=True)
    ls = ssub.add_parser("list", help="your schedules (an admin token: everyone's)")
    ls.add_argument("--owner", default=None, help="only this owner's (admin tokens)")
    ls.set_defaults(func=cmd_list)
    show = ssub.add_parser("show", help="one schedule, with its recently skipped runs")
    show.add_argument("schedule_id", metavar="ID")
    show.set_defaults(func=cmd_show)
    delete = ssub.add_parser("delete", help="stop a schedule (runs already started go on)")
    delete.add_argument("schedule_id", metavar="ID")
    delete.set_defaults(func=cmd_delete)
    for parser in (ls, show, delete):
        add_server(parser)


def cmd_list(args) -> int:
    def go() -> int:
        rows = client(args).schedules(owner=args.owner)
        print(f"{'ID':22} {'CRON':16} {'ENABLED':7}  {'NEXT RUN':19}  {'OWNER':16} NAME")
        for s in rows:
            print(f"{s['id']:22} {s['cron']:16} {'yes' if s['enabled'] else 'no':7}  "
                  f"{fmt_time(s['next_run_at']):19}  {s['owner']:16} {s['name']}")
        return 0

    return run_call(go)


def cmd_show(args) -> int:
    def go() -> int:
        s = client(args).schedule(args.schedule_id)
        for key in ("id", "name", "owner", "cron", "on_missed"):
            print(f"{key:12} {s[key]}")
        print(f"{'enabled':12} {'yes' if s['enabled'] else 'no'}")
        for key in ("next_run_at", "last_run_at", "created_at"):
            print(f"{key:12} {fmt_time(s.get(key))}")
        skipped = s.get("skipped") or []
        print(f"skipped runs ({len(skipped)} recent):" if skipped else "skipped runs: none")
        for run in skipped:
            print(f"  {fmt_time(run['at'])}  {run.get('reason') or '-':8} {run.get('message') or ''}")
        return 0

    return run_call(go)


def cmd_delete(args) -> int:
    def go() -> int:
        s = client(args).delete_schedule(args.schedule_id)
        print(f"{s['id']} {'enabled' if s['enabled'] else 'stopped'}")
        return 0

    return run_call(go)
