"""A watchdog for the django-q2 cluster: restart it when tasks wait and no worker takes any.

A worker process killed at the wrong moment (SIGKILL, the OOM killer) while it holds the lock of
the cluster's internal task queue leaves that lock taken for ever: every other worker blocks on it,
the pusher fills the queue and stops, and the broker's queue only grows. django-q2's sentinel
replaces the dead worker but cannot see the wedge. The fault suite hit it once in fifteen kills of
a single worker child.

Workers stamp a shared clock when they start and finish a task (django-q2's ``pre_execute`` and
``post_execute_in_worker`` signals, in the worker processes, which inherit the shared value through
the fork). ``clarion_worker`` asks ``is_wedged`` every few seconds: tasks are waiting in the broker
and no task started or finished for longer than the longest a task may run (django-q2's timeout)
plus a margin. Then it kills the cluster's processes and starts a new cluster; what the dead
cluster had taken from the broker comes back through the ticker (lost wake-ups) and the leases.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import time
from pathlib import Path
from typing import Any

from django.conf import settings
from django.dispatch import receiver
from django_q.signals import post_execute_in_worker, pre_execute

logger = logging.getLogger(__name__)

# Created at import, in the parent of every cluster process: shared with all of them by the fork.
_last_activity = multiprocessing.get_context("fork").Value("d", time.time(), lock=False)


def mark_activity(now: float | None = None) -> None:
    _last_activity.value = time.time() if now is None else now


@receiver(pre_execute, dispatch_uid="clarion-watchdog-start")
def _task_started(sender: Any, **kwargs: Any) -> None:
    mark_activity()


@receiver(post_execute_in_worker, dispatch_uid="clarion-watchdog-finish")
def _task_finished(sender: Any, **kwargs: Any) -> None:
    mark_activity()


def wedge_seconds() -> float:
    """No task may run longer than django-q2's timeout; a minute more and the silence means a wedge."""
    return float(settings.CLARION.get("WORKER_WEDGE_SECONDS") or (settings.Q_CLUSTER.get("timeout", 300) + 60))


def is_wedged(*, waiting: int, now: float, limit: float) -> bool:
    """Tasks are waiting and no worker started or finished one for ``limit`` seconds."""
    return waiting > 0 and now - _last_activity.value > limit


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (Linux /proc), deepest first."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found: list[int] = []
    stack = list(children.get(pid, []))
    while stack:
        child = stack.pop()
        found.append(child)
        stack.extend(children.get(child, []))
    return list(reversed(found))


def kill_tree(pid: int) -> None:
    for target in [*descendants(pid), pid]:
        try:
            os.kill(target, signal.SIGKILL)
        except ProcessLookupError:
            continue
