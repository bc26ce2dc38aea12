"""The ticker: every second, start the work that has come due.

Tasks are wake-ups; the database says what should be moving. The minute sweeper
(``engine.sweep``) re-drives whatever was lost. The ticker makes the common cases prompt: a delay
or digest window that ends, a retry whose backoff is over, a run or fan-out whose worker died (its
lease ran out), a task the broker refused. Every step moves rows out of the state it selects them
by in one statement (``update_returning_ids``), so tickers on many hosts never enqueue the same
thing twice, and a tick with nothing due costs a handful of indexed queries.

``manage.py clarion_worker`` runs one ticker thread beside the django-q2 cluster.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import close_old_connections
from django.utils import timezone

from apps.analytics.services import counters_fold_if_due
from apps.core.db import update_returning_ids
from apps.core.tasks import deferred_tasks_flush, enqueue
from apps.delivery.services import messages_redrive
from apps.events.fanout import events_take_orphaned, events_take_unstarted
from apps.observability.health import ticker_heartbeat
from apps.workflows.engine import ADVANCE_TASK, DELIVER_TASK
from apps.workflows.models import Run

logger = logging.getLogger(__name__)

PROCESS_TASK = "apps.workflows.tasks.process_event"
WAKE_LIMIT = 5000


def take_run_ids(*, assignments: dict[str, Any], where: str, params: list[Any], order_by: str, limit: int) -> list[int]:
    """``update_returning_ids`` on the runs (the batch picked once on PostgreSQL, see there)."""
    return update_returning_ids(
        table=Run._meta.db_table,
        assignments=assignments,
        where=where,
        params=params,
        order_by=order_by,
        limit=limit,
    )


def runs_take_due(*, now: datetime, limit: int = WAKE_LIMIT) -> tuple[list[int], list[int], list[int]]:
    """(runs whose wait is over, runs whose worker died, pending runs whose wake-up was lost).

    Each is taken by one caller only. The first two become pending again; a stalled pending run
    gets its ``updated_at`` bumped, so it is enqueued again at most once per ``STALL_SECONDS`` even
    while a deep backlog keeps it waiting in the queue.
    """
    released = {"status": Run.Status.PENDING, "claim_token": None, "lease_until": None, "updated_at": now}
    due = take_run_ids(
        assignments=released,
        where="status = %s AND resume_at <= %s",
        params=[Run.Status.WAITING, now],
        order_by="resume_at",
        limit=limit,
    )
    orphaned = take_run_ids(
        assignments=released,
        where="status = %s AND lease_until < %s",
        params=[Run.Status.RUNNING, now],
        order_by="lease_until",
        limit=limit,
    )
    stalled = take_run_ids(
        assignments={"updated_at": now},
        where="status = %s AND updated_at < %s",
        params=[Run.Status.PENDING, now - timedelta(seconds=settings.CLARION["STALL_SECONDS"])],
        order_by="updated_at",
        limit=limit,
    )
    return due, orphaned, stalled


def _enqueue_chunks(func_path: str, ids: list[int]) -> None:
    size = int(settings.CLARION["FANOUT_CHUNK_SIZE"])
    for start in range(0, len(ids), size):
        enqueue(func_path, ids[start : start + size])


def tick(*, now: datetime | None = None) -> dict[str, int]:
    """One pass: enqueue what came due. Returns counts by kind (all zero when idle)."""
    now = now or timezone.now()
    counts = {"tasks": deferred_tasks_flush(now=now)}

    events = events_take_orphaned(now=now)
    unstarted = events_take_unstarted(
        now=now, stalled_before=now - timedelta(seconds=settings.CLARION["STALL_SECONDS"])
    )
    for event_id in events + unstarted:
        enqueue(PROCESS_TASK, event_id)
    counts["events_orphaned"], counts["events_stalled"] = len(events), len(unstarted)

    due, orphaned, stalled = runs_take_due(now=now, limit=WAKE_LIMIT)
    _enqueue_chunks(ADVANCE_TASK, sorted(due + orphaned + stalled))
    counts["runs_due"], counts["runs_orphaned"], counts["runs_stalled"] = len(due), len(orphaned), len(stalled)

    messages = messages_redrive(now=now)
    _enqueue_chunks(DELIVER_TASK, messages)
    counts["messages"] = len(messages)

    if events or unstarted or orphaned or stalled:
        logger.info(
            "ticker resumed lost work: %d fan-out(s) and %d run(s) of a dead worker; "
            "%d event(s) and %d run(s) whose wake-up was lost",
            len(events),
            len(orphaned),
            len(unstarted),
            len(stalled),
        )
    return counts


MAX_PASSES = 20


def backlog_left(counts: dict[str, int]) -> bool:
    """A kind of run work took a full batch: more may be due at once (10,000 digest windows that
    end together), so the next pass should not wait for the next tick."""
    return any(counts.get(kind, 0) >= WAKE_LIMIT for kind in ("runs_due", "runs_orphaned", "runs_stalled"))


def tick_until_caught_up(*, max_passes: int = MAX_PASSES) -> list[dict[str, int]]:
    """``tick`` again at once while a pass took a full batch of runs (at most ``max_passes``): the
    workers get every due chunk within one tick instead of ``WAKE_LIMIT`` runs a second."""
    passes = [tick()]
    while backlog_left(passes[-1]) and len(passes) < max_passes:
        passes.append(tick())
    return passes


class Ticker(threading.Thread):
    """Calls ``tick`` every ``interval`` seconds until ``stop``; survives database and broker outages."""

    def __init__(self, *, interval: float) -> None:
        super().__init__(name="clarion-ticker", daemon=True)
        self.interval = interval
        self._stopping = threading.Event()
        self.ticks = 0
        self._last_error_log = 0.0

    def stop(self, timeout: float = 10.0) -> None:
        self._stopping.set()
        if self.is_alive():
            self.join(timeout)

    def run(self) -> None:
        while not self._stopping.wait(self.interval):
            try:
                tick_until_caught_up()
                counters_fold_if_due()  # analytics deltas into rollups, every few seconds
                self.ticks += 1
                ticker_heartbeat()  # for manage.py clarion_health (a file touched at most every 5 s)
            except Exception:  # the database or the broker is away: try again next tick
                if time.monotonic() - self._last_error_log > 60:
                    logger.warning("ticker: a tick failed; trying again every %s s", self.interval, exc_info=True)
                    self._last_error_log = time.monotonic()
            finally:
                close_old_connections()
