"""The one way Clarion enqueues background work.

Tasks are wake-ups, not state: the database holds the truth and every task is idempotent.
``enqueue_on_commit`` must be used from inside a write transaction so that a task never runs
against rows that were rolled back.
"""

from __future__ import annotations

import logging
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils.module_loading import import_string

logger = logging.getLogger(__name__)


def enqueue(func_path: str, *args: Any) -> None:
    if settings.CLARION_TASKS_EAGER:
        import_string(func_path)(*args)
        return
    from django_q.tasks import async_task

    async_task(func_path, *args)


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
