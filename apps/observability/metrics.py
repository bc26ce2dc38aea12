"""Clarion's Prometheus metrics, and the small API the hot paths call to count their work.

Every call here costs a few microseconds (a dict lookup and an add, or an mmap write in
multiprocess mode): callers count per batch — one call per chunk or per request with aggregated
numbers — never per row. Gauges that come from the database are not here: they are computed at
scrape time (``apps.observability.collectors``).

Multiprocess: with ``PROMETHEUS_MULTIPROC_DIR`` set before the process starts, prometheus-client
keeps every value in a per-process file in that directory and ``/metrics`` adds them up across the
host's uvicorn and django-q2 worker processes (docs/operations.md).
"""

from __future__ import annotations

import collections
import functools
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from operator import attrgetter
from typing import Any, ParamSpec

from django.db import transaction
from prometheus_client import Counter, Gauge, Histogram

from apps.observability.logs import bind_log_context, log_events_accepted, log_message_settled, log_messages_settled

P = ParamSpec("P")
logger = logging.getLogger(__name__)

EVENTS = Counter("clarion_events", "Events accepted by the trigger, bulk and broadcast API", ["workflow"])
MESSAGES = Counter(
    "clarion_messages",
    "Messages that reached a status through delivery (sent, failed, deferred, in_doubt) or a provider callback",
    ["channel", "status", "provider"],
)
STEP_DECISIONS = Counter(
    "clarion_step_decisions",
    "What the engine decided at a step, per run: type, decision (e.g. sent, skipped, waited) and reason",
    ["type", "decision", "reason"],
)
DELIVERY_SECONDS = Histogram(
    "clarion_delivery_seconds",
    "Provider call duration per send attempt",
    ["provider"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)
HTTP_SECONDS = Histogram(
    "clarion_http_request_duration_seconds",
    "HTTP request duration by route pattern (Django's resolver route, never the raw path)",
    ["method", "route", "status"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
WEBSOCKETS = Gauge(
    "clarion_websocket_connections",
    "Open inbox websocket connections (summed over the live web processes)",
    multiprocess_mode="livesum",
)


def _never_raises(func: Callable[P, None]) -> Callable[P, None]:
    """A hook called from the hot paths: a bug in counting or logging must never fail the work."""

    @functools.wraps(func)
    def hook(*args: P.args, **kwargs: P.kwargs) -> None:
        try:
            func(*args, **kwargs)
        except Exception:
            logger.warning("observability hook %s failed", func.__name__, exc_info=True)

    return hook


def events_accepted(workflow: str, n: int = 1) -> None:
    """``n`` events of ``workflow`` were accepted (call after the commit, once per request or batch)."""
    if n:
        EVENTS.labels(workflow).inc(n)


def events_accepted_counts(counts: Mapping[str, int]) -> None:
    """Per-workflow counts of one batch, e.g. ``Counter(event.workflow_key for event in accepted)``."""
    for workflow, n in counts.items():
        events_accepted(workflow, n)


@_never_raises
def events_accepted_batch(*, environment_id: int, workflow: str, transaction_ids: Sequence[str]) -> None:
    """A trigger request (or a bulk batch of one workflow) committed: count it and log one line."""
    events_accepted(workflow, len(transaction_ids))
    log_events_accepted(environment_id=environment_id, workflow=workflow, transaction_ids=transaction_ids)


def messages_finished(channel: str, status: str, provider: str = "", n: int = 1) -> None:
    """``n`` messages on ``channel`` reached ``status`` through ``provider`` (empty: none was called)."""
    if n:
        MESSAGES.labels(channel, status, provider or "none").inc(n)


@_never_raises
def messages_finished_counts(counts: Mapping[tuple[str, str, str], int]) -> None:
    """Aggregated ``{(channel, status, provider): n}`` of one batch."""
    for (channel, status, provider), n in counts.items():
        messages_finished(channel, status, provider, n)


@_never_raises
def message_settled(message: Any, *, status: str, provider: str = "") -> None:
    """Delivery settled one message (sent, failed, deferred, in doubt): count it and log one line
    carrying the message's context (bind it first with ``logs.bind_message_log_context``)."""
    messages_finished(message.channel, status, provider)
    log_message_settled(message, status=status, provider=provider)


_SETTLED_AS = {"queued": "deferred"}  # back in the queue after a delivery: a retry waits


@_never_raises
def messages_settled(messages: Sequence[Any]) -> None:
    """A delivery batch is over: count its messages by (channel, status, provider) from the objects in
    memory (no query) and log one line for the batch (for one message: that message's line)."""
    if not messages:
        return
    counts = collections.Counter((m.channel, _SETTLED_AS.get(m.status, m.status), m.provider) for m in messages)
    messages_finished_counts(counts)
    if len(messages) == 1:
        message = messages[0]
        log_message_settled(message, status=_SETTLED_AS.get(message.status, message.status), provider=message.provider)
    else:
        log_messages_settled(messages, counts)


def delivery_observed(provider: str, seconds: float) -> None:
    """One provider call took ``seconds`` (whatever its outcome)."""
    DELIVERY_SECONDS.labels(provider or "none").observe(seconds)


@_never_raises
def delivery_observed_many(provider: str, seconds: Iterable[float]) -> None:
    """The calls of one window through ``provider``."""
    histogram = DELIVERY_SECONDS.labels(provider or "none")
    for value in seconds:
        histogram.observe(value)


def step_decisions(counts: Mapping[tuple[str, str, str], int] | Iterable[tuple[tuple[str, str, str], int]]) -> None:
    """Aggregated ``{(step type, decision, reason): n}`` of one chunk (reason "" when there is none)."""
    items = counts.items() if isinstance(counts, Mapping) else counts
    for (step_type, decision, reason), n in items:
        if n:
            STEP_DECISIONS.labels(step_type, decision, reason or "none").inc(n)


_DECISION = attrgetter("step_type", "decision", "reason")


@_never_raises
def step_decisions_of(entries: Iterable[Any]) -> None:
    """A committed chunk's trace entries (``step_type``, ``decision``, ``reason``), counted in memory."""
    step_decisions(collections.Counter(map(_DECISION, entries)))


def http_request_observed(method: str, route: str, status: int, seconds: float) -> None:
    HTTP_SECONDS.labels(method, route, str(status)).observe(seconds)


_COUNTED = "_clarion_websocket_counted"


@_never_raises
def websocket_opened(consumer: object | None = None) -> None:
    """A socket was accepted. With ``consumer``, ``websocket_closed(consumer)`` counts it down exactly once."""
    if consumer is not None:
        if getattr(consumer, _COUNTED, False):
            return
        setattr(consumer, _COUNTED, True)
    WEBSOCKETS.inc()


@_never_raises
def websocket_closed(consumer: object | None = None) -> None:
    """A socket closed: counted down only if ``websocket_opened(consumer)`` counted it (a rejected
    handshake, or a second disconnect, counts nothing)."""
    if consumer is not None:
        if not getattr(consumer, _COUNTED, False):
            return
        setattr(consumer, _COUNTED, False)
    WEBSOCKETS.dec()


@_never_raises
def events_committed(environment_id: int, accepted: Iterable[tuple[str, str]]) -> None:
    """The trigger accepted these ``(workflow key, transaction id)``: counted and logged once the
    transaction commits (at once in autocommit), one line per request, grouped by workflow."""
    by_workflow: dict[str, list[str]] = {}
    for workflow, transaction_id in accepted:
        by_workflow.setdefault(workflow, []).append(transaction_id)
    if not by_workflow:
        return
    if len(by_workflow) == 1:
        [(workflow, transaction_ids)] = by_workflow.items()
        if len(transaction_ids) == 1:
            bind_log_context(environment=environment_id, transaction_id=transaction_ids[0])

    def committed() -> None:
        for workflow, transaction_ids in by_workflow.items():
            events_accepted_batch(environment_id=environment_id, workflow=workflow, transaction_ids=transaction_ids)

    transaction.on_commit(committed)
