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

logger = logging.getLogger(__name__)


def enqueue(func_path: str, *args: Any) -> None:
    if settings.CLARION_TASKS_EAGER:
        from django.utils.module_loading import import_string

        import_string(func_path)(*args)
        return
    from django_q.tasks import async_task

    async_task(func_path, *args)


def enqueue_on_commit(func_path: str, *args: Any) -> None:
    transaction.on_commit(lambda: enqueue(func_path, *args))
