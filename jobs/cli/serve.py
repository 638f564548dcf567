"""`llmbatch serve`: run the job service, its HTTP API and (unless --no-scheduler) the job scheduler."""

from __future__ import annotations

import argparse
import pkgutil


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="run the job service (HTTP API + scheduler)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--db", default=None, help="store URL (default $LLMBATCH_DB, else an SQLite file)")
    p.add_argument("--ray-address", default=None, help="the cluster (default $RAY_ADDRESS, else a local Ray)")
    p.add_argument("--queue-limit", action="append", default=[], metavar="QUEUE=N",
                   help="most running jobs in a queue (repeatable)")
    p.add_argument("--default-queue-limit", type=int, default=4)
    p.add_argument("--lease-s", type=float, default=30.0, help="adopt a dead scheduler's jobs after this")
    p.add_argument("--tick-s", type=float, default=1.0)
    p.add_argument("--no-scheduler", action="store_true", help="API only: record jobs, start none")
    p.add_argument("--max-body-bytes", type=int, default=1 << 20)
    p.add_argument("--runner", default=None, help=argparse.SUPPRESS)  # module:function, for tests
    p.set_defaults(func=cmd_serve)


def cmd_serve(args) -> int:
    # Imported here, not above: every `llmbatch` command loads this module, and Ray and the
    # web stack take seconds to import that only `serve` needs.
    import uvicorn

    from jobs.api.app import create_app
    from jobs.service.queue import Admission, parse_limits
    from jobs.service.scheduler import Scheduler, SchedulerConfig
    from jobs.service.store.job_store import Store

    store = Store(args.db)  # migrates to the newest schema
    scheduler = None
    if not args.no_scheduler:
        cfg = SchedulerConfig(ray_address=args.ray_address, lease_s=args.lease_s, tick_s=args.tick_s,
                              admission=Admission(parse_limits(args.queue_limit), args.default_queue_limit))
        if args.runner:  # a test's runner, named "module:function"; sent to the job runner actors
            cfg.runner = pkgutil.resolve_name(args.runner)
        scheduler = Scheduler(store, cfg)
    app = create_app(store, scheduler, max_body_bytes=args.max_body_bytes)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0
