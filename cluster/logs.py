"""structlog setup: readable lines on a terminal, JSON lines otherwise (files, CI, Ray workers)."""

from __future__ import annotations

import logging
import os
import sys

import structlog

_configured = False


def configure(level: str | None = None, json: bool | None = None) -> None:
    global _configured
    level_name = (level or os.environ.get("LLMBATCH_LOG_LEVEL", "INFO")).upper()
    if json is None:
        json = os.environ.get("LLMBATCH_LOG_FORMAT") == "json" or not sys.stderr.isatty()
    renderer = structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer(colors=False)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, level_name, logging.INFO)),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
    _configured = True


def ensure_configured() -> None:
    if not _configured:
        configure()
