"""`llmbatch serve`: run the job service, its HTTP API and (unless --no-scheduler) the job scheduler.

`--tls-cert/--tls-key` serve HTTPS directly (uvicorn's ssl options); then every answer also
carries Strict-Transport-Security. Without them, put a TLS-terminating proxy in front."""

from __future__ import annotations

import argparse
import os
import pkgutil
import sys


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
    p.add_argument("--tls-cert", default=None, metavar="FILE", help="serve HTTPS with this certificate (PEM)")
    p.add_argument("--tls-key", default=None, metavar="FILE", help="the certificate's private key (PEM)")
    p.add_argument("--docs", action="store_true", help="serve /docs and /openapi.json (off by default)")
    p.add_argument("--auth-failures-per-minute", type=int, default=20,
                   help="failed authentications per client address before 429 (default 20)")
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

    if bool(args.tls_cert) != bool(args.tls_key):
        print("give both --tls-cert and --tls-key (or neither)", file=sys.stderr)
        return 2
    for flag, path in (("--tls-cert", args.tls_cert), ("--tls-key", args.tls_key)):
        if path and not os.path.isfile(path):
            print(f"{flag}: no file {path}", file=sys.stderr)
            return 2
    store = Store(args.db)  # migrates to the newest schema
    scheduler = None
    if not args.no_scheduler:
        cfg = SchedulerConfig(ray_address=args.ray_address, lease_s=args.lease_s, tick_s=args.tick_s,
                              admission=Admission(parse_limits(args.queue_limit), args.default_queue_limit))
        if args.runner:  # a test's runner, named "module:function"; sent to the job runner actors
            cfg.runner = pkgutil.resolve_name(args.runner)
        scheduler = Scheduler(store, cfg)
    app = create_app(store, scheduler, max_body_bytes=args.max_body_bytes, docs=args.docs,
                     auth_failures_per_minute=args.auth_failures_per_minute)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning",
                ssl_certfile=args.tls_cert, ssl_keyfile=args.tls_key)
    return 0
