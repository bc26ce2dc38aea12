"""Thin django-q2 entry points for analytics (docs/analytics.md).

The worker's ticker folds every few seconds by itself (``services.counters_fold_if_due``); this task
is for an operator or a schedule that wants a fold now, e.g. ``async_task("apps.analytics.tasks.counters_fold_task")``.
"""

from __future__ import annotations

from apps.analytics.services import counters_fold


def counters_fold_task() -> int:
    """Fold every delta not folded yet; returns how many."""
    return counters_fold(batches=1000)
