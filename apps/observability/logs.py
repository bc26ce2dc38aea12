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
import sys
import traceback
from collections.abc import Mapping, Sequence
from typing import Any

import structlog
from structlog.contextvars import bind_contextvars, clear_contextvars, unbind_contextvars

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
        processors=[
            structlog.stdlib.filter_by_level,  # a disabled level costs a level check, nothing more
            *_SHARED_PROCESSORS,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
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
            _head_first,
            renderer,
        ]
    else:
        final = [structlog.stdlib.ProcessorFormatter.remove_processors_meta, render_line]
    return structlog.stdlib.ProcessorFormatter(foreign_pre_chain=_SHARED_PROCESSORS, processors=final)


_HEAD = ("timestamp", "level", "logger", "message")


def _head_first(_logger: Any, _name: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    """JSON lines start with time, level, logger and message; the context follows."""
    head = {key: event_dict.pop(key) for key in _HEAD if key in event_dict}
    head.update(event_dict)
    return head


def render_line(_logger: Any, _name: str, event_dict: dict[str, Any]) -> str:
    """``2026-11-30T09:07:10.954Z [warning ] message [logger] key=value …`` (and the traceback).

    A plain f-string: structlog's ConsoleRenderer costs several times more per line."""
    exc_info = event_dict.pop("exc_info", None)
    event_dict.pop("stack_info", None)
    head = (
        f"{event_dict.pop('timestamp', '')} [{event_dict.pop('level', ''):<8}] {event_dict.pop('event', '')} "
        f"[{event_dict.pop('logger', '')}]"
    )
    line = " ".join([head, *(f"{key}={value}" for key, value in event_dict.items())]) if event_dict else head
    if exc_info:
        if exc_info is True:
            exc_info = sys.exc_info()
        if isinstance(exc_info, BaseException):
            exc_info = (type(exc_info), exc_info, exc_info.__traceback__)
        line += "\n" + "".join(traceback.format_exception(*exc_info)).rstrip("\n")
    return line


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
    """Bind values to every later log line of the current request or task; a None value unbinds its key."""
    unbind_contextvars(*[key for key, value in values.items() if value is None])
    bind_contextvars(**{key: value for key, value in values.items() if value is not None})


def clear_log_context() -> None:
    clear_contextvars()


def bind_message_log_context(message: Any) -> None:
    """Delivery, for each message it sends: the message, its run, its environment and transaction id."""
    bind_log_context(
        environment=message.environment_id,
        transaction_id=(message.data or {}).get("transaction_id"),
        run_id=message.run_id,
        message_id=message.pk,
    )


def _loaded_event(run: Any) -> Any:
    """The run's event if it is already loaded (never a query on the hot path), else None."""
    state = getattr(run, "_state", None)
    if state is None:  # not a model instance
        return getattr(run, "event", None)
    return state.fields_cache.get("event")


def bind_chunk_log_context(runs: Sequence[Any]) -> None:
    """The engine, for the chunk of runs it advances (their events are loaded with the claim): the
    transaction id when they share one event (the usual case), else the chunk's transaction ids."""
    if not runs:
        return
    events = {run.event_id: event for run in runs if (event := _loaded_event(run)) is not None}
    if not events:
        return
    transaction_ids = sorted(str(event.transaction_id) for event in events.values())
    environments = {event.environment_id for event in events.values()}
    bind_log_context(
        environment=next(iter(environments)) if len(environments) == 1 else None,
        transaction_id=transaction_ids[0] if len(transaction_ids) == 1 else None,
        transaction_ids=transaction_ids[:100] if len(transaction_ids) > 1 else None,
        run_id=runs[0].pk if len(runs) == 1 else None,
        run_ids=f"{runs[0].pk}..{runs[-1].pk} ({len(runs)})" if len(runs) > 1 else None,
        message_id=None,
    )


# --- activity: one line per accepted trigger request and per settled message ------------------------
# "clarion.activity" at INFO: what lets one grep follow a transaction id from the trigger to the
# provider. Its level can be raised on its own (LOG_ACTIVITY_LEVEL=WARNING) to drop them.

activity = structlog.get_logger("clarion.activity")


def log_events_accepted(*, environment_id: int, workflow: str, transaction_ids: Sequence[str]) -> None:
    """One line per request or batch, whatever its size."""
    if len(transaction_ids) == 1:
        activity.info(
            "event accepted", environment=environment_id, workflow=workflow, transaction_id=transaction_ids[0]
        )
    elif transaction_ids:
        activity.info(
            "events accepted",
            environment=environment_id,
            workflow=workflow,
            count=len(transaction_ids),
            transaction_ids=list(transaction_ids),
        )


def log_message_settled(message: Any, *, status: str, provider: str) -> None:
    """What became of one send, with the message's context."""
    bind_message_log_context(message)
    activity.info(f"message {status}", channel=message.channel, provider=provider or "none")


def log_messages_settled(messages: Sequence[Any], counts: Mapping[tuple[str, str, str], int]) -> None:
    """One line for a delivery batch: its counts, and the message and transaction ids it settled."""
    bind_log_context(message_id=None, run_id=None, transaction_id=None)
    activity.info(
        "messages settled",
        count=len(messages),
        outcomes={f"{channel}/{status}/{provider or 'none'}": n for (channel, status, provider), n in counts.items()},
        message_ids=[m.pk for m in messages],
        transaction_ids=sorted({str((m.data or {}).get("transaction_id") or "") for m in messages} - {""}),
    )
