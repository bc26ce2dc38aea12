"""Structured logs: every log line (Clarion's, Django's, uvicorn's, django-q2's) goes through one
structlog formatter — JSON with ``LOG_FORMAT=json``, a readable line with time and level otherwise —
and carries the context bound for the work at hand: ``environment``, ``transaction_id``,
``run_id``/``run_ids``, ``message_id``.

Context lives in contextvars: bound at the trigger, in the engine's chunk and in delivery (one
``bind_log_context`` call each), cleared at the start of every HTTP request and every task, so
one ``grep`` of a transaction id follows it from the trigger to the provider.
"""

from __future__ import annotations

import logging
import re
from typing import Any

import structlog
from structlog.contextvars import bind_contextvars, clear_contextvars

PROBE_PATHS = ("/healthz", "/readyz", "/metrics")

_SHARED_PROCESSORS: list[Any] = [
    structlog.contextvars.merge_contextvars,
    structlog.stdlib.add_log_level,
    structlog.stdlib.add_logger_name,
    structlog.processors.TimeStamper(fmt="iso", utc=True),
]


def formatter(json: bool = False) -> logging.Formatter:
    """The logging formatter (named in ``settings.LOGGING``); also sets structlog up for its own loggers."""
    structlog.configure(
        processors=[*_SHARED_PROCESSORS, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    renderer: Any
    if json:
        renderer = structlog.processors.JSONRenderer()
        final = [
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            structlog.processors.EventRenamer("message"),
            renderer,
        ]
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=False, pad_event_to=0)
        final = [structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer]
    return structlog.stdlib.ProcessorFormatter(foreign_pre_chain=_SHARED_PROCESSORS, processors=final)


class ProbeFilter(logging.Filter):
    """Drops uvicorn's access lines for the health and metrics probes (every few seconds, from every
    load balancer and Prometheus): noise. A failing readiness check is logged by the view itself."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) >= 3 and isinstance(args[2], str):
            return not args[2].startswith(PROBE_PATHS)
        return True


class TaskChatterFilter(logging.Filter):
    """Drops django-q2's per-task INFO lines ("Enqueued [...]", "... processing ...", "Processed ...",
    "... created task ... from schedule"): two to four lines per task, and four a minute for the idle
    sweeper. Its start, stop, warnings and errors (a failed task) stay. Off with LOG_LEVEL=DEBUG."""

    CHATTER = re.compile(r"^Enqueued \[|^Processed '| processing \S+ '| created task \S+ from schedule ")

    def __init__(self, keep: bool = False) -> None:
        super().__init__()
        self.keep = keep

    def filter(self, record: logging.LogRecord) -> bool:
        if self.keep or record.levelno != logging.INFO:
            return True
        return not self.CHATTER.search(record.getMessage())


def bind_log_context(**values: Any) -> None:
    """Bind values to every log line of the current request or task (None values are skipped)."""
    bind_contextvars(**{key: value for key, value in values.items() if value is not None})


def clear_log_context() -> None:
    clear_contextvars()
