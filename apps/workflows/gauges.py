"""Read-only figures about the engine's backlog for the metrics endpoint (apps.observability).

Each is one aggregate over an index, computed when Prometheus scrapes, never on the hot path.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from django.db.models import Count, Min

from apps.workflows.models import Run


@dataclass(frozen=True)
class RunBacklog:
    waiting: int  # runs waiting for a delay, a digest window or a retry
    due_oldest_seconds: float  # how long the oldest waiting run whose time came has been due (0: none)
    pending: int  # runs ready to advance, waiting for a worker


def run_backlog(*, now: datetime) -> RunBacklog:
    """Two queries: one over ``run_status_resume_idx``, one over ``run_pending_updated_idx``."""
    waiting = Run.objects.filter(status=Run.Status.WAITING).aggregate(n=Count("*"), oldest=Min("resume_at"))
    pending = Run.objects.filter(status=Run.Status.PENDING).aggregate(n=Count("*"))
    oldest = waiting["oldest"]
    due_seconds = max(0.0, (now - oldest).total_seconds()) if oldest is not None else 0.0
    return RunBacklog(waiting=waiting["n"] or 0, due_oldest_seconds=due_seconds, pending=pending["n"] or 0)
