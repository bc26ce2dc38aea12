"""Events' part of retention (``apps.core.retention``).

An event goes once it is finished (processed, cancelled or failed), older than the environment's
``retention_trace_days``, and has no run left (the workflows pruner, which runs first, deletes
finished runs; an event with a live run stays). Idempotency records go after the same period: a
request repeated with the same ``Idempotency-Key`` later than that is a new request.
"""

from __future__ import annotations

from django.db.models import Exists, OuterRef

from apps.core.retention import PruneRun, RetentionPolicy, prune_batches
from apps.events.models import Event, IdempotencyRecord
from apps.workflows.models import Run

FINISHED_EVENT_STATUSES = (Event.Status.PROCESSED, Event.Status.CANCELLED, Event.Status.FAILED)


def prune(policy: RetentionPolicy, run: PruneRun) -> None:
    cutoff = policy.cutoff(policy.trace_days, run.now)
    if cutoff is None:
        return
    prune_batches(
        run,
        Event.objects.filter(
            ~Exists(Run.objects.filter(event_id=OuterRef("pk"))),
            environment_id=policy.environment_id,
            status__in=FINISHED_EVENT_STATUSES,
            created_at__lt=cutoff,
        ),
        written_before=("created_at", cutoff),
    )
    prune_batches(
        run,
        IdempotencyRecord.objects.filter(environment_id=policy.environment_id, created_at__lt=cutoff),
        written_before=("created_at", cutoff),
    )
