"""The one way Clarion enqueues background work.

Tasks are wake-ups, not state: the database holds the truth and every task is idempotent.
``enqueue_on_commit`` must be used from inside a write transaction so that a task never runs
against rows that were rolled back.

A broker that refuses a task (Redis down) never fails the caller once its rows are committed:
the task is kept as a ``DeferredTask`` row and the ticker enqueues it again within a second of
the broker coming back (``deferred_tasks_flush``).
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import DatabaseError, transaction
from django.utils import timezone
from django.utils.module_loading import import_string

logger = logging.getLogger(__name__)

_RETRY_MAX_SECONDS = 30


def _broker_send(func_path: str, *args: Any) -> None:
    from django_q.tasks import async_task

    async_task(func_path, *args)


def enqueue(func_path: str, *args: Any) -> None:
    if settings.CLARION_TASKS_EAGER:
        import_string(func_path)(*args)
        return
    if _orm_broker_in_this_transaction():
        _broker_send(func_path, *args)  # part of the caller's transaction: a failure fails it
        return
    try:
        _broker_send(func_path, *args)
    except Exception as exc:  # any broker or network error: the committed work must not wait for the sweeper
        _defer(func_path, list(args), exc)


def _defer(func_path: str, args: list[Any], exc: Exception) -> None:
    from apps.core.models import DeferredTask

    error = f"{type(exc).__name__}: {exc}"
    try:
        DeferredTask.objects.create(func=func_path, args=args, next_try_at=timezone.now(), last_error=error[:2000])
    except DatabaseError:
        logger.exception(
            "task %s%r lost: the broker refused it (%s) and it could not be kept; the sweeper re-drives its rows",
            func_path,
            tuple(args),
            error,
        )
        return
    logger.warning("broker refused task %s (%s); kept for the ticker to enqueue again", func_path, error)


def _orm_broker_in_this_transaction() -> bool:
    broker_alias = settings.Q_CLUSTER.get("orm")
    return bool(broker_alias) and transaction.get_connection(broker_alias).in_atomic_block


def enqueue_on_commit(func_path: str, *args: Any) -> None:
    """Enqueue so that the task exists if and only if the current transaction commits.

    On the ORM broker the queue row is written inside the transaction itself (a transactional
    outbox: no window where the rows are committed but their wake-up is not, and no extra
    connection cycle). On Redis, and when tasks run inline, it is sent after commit.
    """
    if not settings.CLARION_TASKS_EAGER and _orm_broker_in_this_transaction():
        enqueue(func_path, *args)
        return
    transaction.on_commit(lambda: enqueue(func_path, *args))


def deferred_tasks_flush(*, now: datetime | None = None, limit: int = 500) -> int:
    """Enqueue the tasks the broker refused earlier. Returns how many went through.

    Safe to run from several processes at once (rows are locked, skipping those another holds).
    Stops at the first refusal: the broker is still away, the rest wait for the next tick.
    """
    from apps.core.models import DeferredTask

    now = now or timezone.now()
    if not DeferredTask.objects.filter(next_try_at__lte=now).exists():
        return 0  # the common case, without taking a write lock
    sent: list[int] = []
    with transaction.atomic():
        rows = list(
            DeferredTask.objects.select_for_update(skip_locked=True).filter(next_try_at__lte=now).order_by("pk")[:limit]
        )
        for index, row in enumerate(rows):
            try:
                _broker_send(row.func, *row.args)
            except Exception as exc:
                DeferredTask.objects.filter(pk__in=[r.pk for r in rows[index:]]).update(
                    attempts=row.attempts + 1,
                    next_try_at=now + timedelta(seconds=min(_RETRY_MAX_SECONDS, 2**row.attempts)),
                    last_error=f"{type(exc).__name__}: {exc}"[:2000],
                )
                break
            sent.append(row.pk)
        DeferredTask.objects.filter(pk__in=sent).delete()
    if sent:
        logger.info("enqueued %d task(s) the broker had refused", len(sent))
    return len(sent)
