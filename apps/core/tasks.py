"""The one way Clarion enqueues background work.

Tasks are wake-ups, not state: the database holds the truth and every task is idempotent.
``enqueue_on_commit`` must be used from inside a write transaction so that a task never runs
against rows that were rolled back.

A broker that refuses a task (Redis down) never fails the caller once its rows are committed:
the task is kept as a ``DeferredTask`` row and the ticker enqueues it again within a second of
the broker coming back (``deferred_tasks_flush``).

One broker per process: django-q2's ``async_task`` without a ``broker`` builds a new one for
every task, and on Redis that is a new connection pool, a new TCP connection and its handshake
for each single RPUSH. The broker is built once, shared by the process's threads (redis-py's
pool is thread-safe; the ORM broker uses the calling thread's Django connection) and dropped in
a forked child (django-q2 forks its workers), which builds its own on first use.
``enqueue_many`` sends many tasks in one broker round trip (one RPUSH of N packages on Redis,
one INSERT on the ORM broker).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import DatabaseError, transaction
from django.utils import timezone
from django.utils.module_loading import import_string

logger = logging.getLogger(__name__)

_RETRY_MAX_SECONDS = 30

_broker: Any = None
_broker_pid = 0
_broker_lock = threading.Lock()
_fork_hook_registered = False


def _drop_shared_broker() -> None:
    """After a fork: forget the parent's broker (never close it: its socket is the parent's)."""
    global _broker, _broker_pid, _broker_lock
    _broker, _broker_pid = None, 0
    _broker_lock = threading.Lock()  # a lock held by another thread at fork time stays held


def shared_broker() -> Any:
    """This process's django-q2 broker, built on first use."""
    global _broker, _broker_pid, _fork_hook_registered
    broker = _broker
    if broker is not None and _broker_pid == os.getpid():
        return broker
    with _broker_lock:
        if _broker is None or _broker_pid != os.getpid():
            from django_q.brokers import get_broker

            if not _fork_hook_registered:
                os.register_at_fork(after_in_child=_drop_shared_broker)
                _fork_hook_registered = True
            _broker, _broker_pid = get_broker(), os.getpid()
        return _broker


class _Collector:
    """Stands in for the broker in ``async_task`` to collect signed packages without sending them,
    so that a batch is packaged exactly as django-q2 packages one task."""

    def __init__(self, list_key: str) -> None:
        self.list_key = list_key
        self.packages: list[str] = []

    def enqueue(self, package: str) -> int:
        self.packages.append(package)
        return len(self.packages)


def _broker_send(func_path: str, *args: Any) -> None:
    from django_q.tasks import async_task

    async_task(func_path, *args, broker=shared_broker())


def _broker_send_many(func_path: str, args_list: Sequence[Sequence[Any]]) -> None:
    """All the tasks in one broker operation: they are all queued, or (an exception) none is."""
    from django_q.brokers.orm import ORM
    from django_q.brokers.redis_broker import Redis
    from django_q.tasks import async_task

    broker = shared_broker()
    collector = _Collector(broker.list_key)
    for args in args_list:
        async_task(func_path, *args, broker=collector)
    if not collector.packages:
        return
    if isinstance(broker, Redis):
        broker.connection.rpush(broker.list_key, *collector.packages)  # one command, atomic
    elif isinstance(broker, ORM):
        from django_q.models import OrmQ

        now = timezone.now()
        OrmQ.objects.using(settings.Q_CLUSTER["orm"]).bulk_create(
            [OrmQ(key=broker.list_key, payload=package, lock=now) for package in collector.packages]
        )
    else:  # another broker class: one call per task
        for package in collector.packages:
            broker.enqueue(package)


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
        _defer(func_path, [list(args)], exc)


def enqueue_many(func_path: str, args_list: Iterable[Sequence[Any]]) -> None:
    """``enqueue(func_path, *args)`` for each ``args``, in one broker round trip."""
    batch = [tuple(args) for args in args_list]
    if not batch:
        return
    if settings.CLARION_TASKS_EAGER:
        func = import_string(func_path)
        for args in batch:
            func(*args)
        return
    if _orm_broker_in_this_transaction():
        _broker_send_many(func_path, batch)
        return
    try:
        _broker_send_many(func_path, batch)
    except Exception as exc:  # as in enqueue: keep them for the ticker
        _defer(func_path, [list(args) for args in batch], exc)


def _defer(func_path: str, args_list: list[list[Any]], exc: Exception) -> None:
    from apps.core.models import DeferredTask

    error = f"{type(exc).__name__}: {exc}"
    now = timezone.now()
    try:
        DeferredTask.objects.bulk_create(
            [DeferredTask(func=func_path, args=args, next_try_at=now, last_error=error[:2000]) for args in args_list]
        )
    except DatabaseError:
        logger.exception(
            "%d task(s) %s%r lost: the broker refused them (%s) and they could not be kept; "
            "the sweeper re-drives their rows",
            len(args_list),
            func_path,
            tuple(args_list[0]) if len(args_list) == 1 else args_list[:3],
            error,
        )
        return
    logger.warning(
        "broker refused %d task(s) %s (%s); kept for the ticker to enqueue again", len(args_list), func_path, error
    )


def enqueue_is_transactional() -> bool:
    """Whether ``enqueue_on_commit`` writes its queue row in the caller's transaction (the ORM
    broker's outbox): then a write that must not exist without its task needs an atomic block
    even when it is a single statement."""
    return bool(settings.Q_CLUSTER.get("orm")) and not settings.CLARION_TASKS_EAGER


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


def enqueue_many_on_commit(func_path: str, args_list: Iterable[Sequence[Any]]) -> None:
    """``enqueue_on_commit`` for many tasks of one function, sent in one broker round trip."""
    batch = [tuple(args) for args in args_list]
    if not batch:
        return
    if not settings.CLARION_TASKS_EAGER and _orm_broker_in_this_transaction():
        enqueue_many(func_path, batch)
        return
    transaction.on_commit(lambda: enqueue_many(func_path, batch))


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
