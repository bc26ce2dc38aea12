"""Workflows' part of retention (``apps.core.retention``): the trace of finished runs.

Pruned once the environment's ``retention_trace_days`` are over:

* digest buckets that are closed (sent or empty), with their entries: open and closing buckets
  (waiting digests) are never touched;
* runs that finished (completed, cancelled, failed) that long ago and have no message left
  (delivery prunes settled messages first; a run keeps its trace while any message of it is kept),
  none of whose digest entries sits in an open or closing bucket (a message held back for a
  category digest), with their step runs and digest entries. Pending, running and waiting runs
  are never touched.
"""

from __future__ import annotations

from typing import Any

from django.db.models import Exists, OuterRef

from apps.core.retention import PruneRun, RetentionPolicy, clear_all, delete_all, prune_batches
from apps.delivery.models import Message
from apps.workflows.models import DigestBucket, DigestEntry, Run, StepRun

FINISHED_RUN_STATUSES = (Run.Status.COMPLETED, Run.Status.CANCELLED, Run.Status.FAILED)
CLOSED_BUCKET_STATUSES = (DigestBucket.Status.SENT, DigestBucket.Status.EMPTY)
LIVE_BUCKET_STATUSES = (DigestBucket.Status.OPEN, DigestBucket.Status.CLOSING)


def _delete_run_children(run: PruneRun, run_ids: list[Any]) -> None:
    clear_all(run, DigestBucket.objects.filter(leader_run_id__in=run_ids), "leader_run")
    delete_all(run, DigestEntry.objects.filter(run_id__in=run_ids))
    delete_all(run, StepRun.objects.filter(run_id__in=run_ids))


def prune(policy: RetentionPolicy, run: PruneRun) -> None:
    cutoff = policy.cutoff(policy.trace_days, run.now)
    if cutoff is None:
        return
    prune_batches(
        run,
        DigestBucket.objects.filter(
            environment_id=policy.environment_id, status__in=CLOSED_BUCKET_STATUSES, closed_at__lt=cutoff
        ),
        lambda ids: delete_all(run, DigestEntry.objects.filter(bucket_id__in=ids)),
        written_before=("opened_at", cutoff),
    )
    held = DigestEntry.objects.filter(run_id=OuterRef("pk"), bucket__status__in=LIVE_BUCKET_STATUSES)
    leads = DigestBucket.objects.filter(leader_run_id=OuterRef("pk"), status__in=LIVE_BUCKET_STATUSES)
    runs = Run.objects.filter(
        ~Exists(Message.objects.filter(run_id=OuterRef("pk"))),
        ~Exists(held),
        ~Exists(leads),
        environment_id=policy.environment_id,
        status__in=FINISHED_RUN_STATUSES,
        updated_at__lt=cutoff,
    )
    prune_batches(run, runs, lambda ids: _delete_run_children(run, ids), written_before=("created_at", cutoff))
