"""Cancellation: stop the unfinished runs of events, wherever they wait."""

from __future__ import annotations

from collections.abc import Sequence

from django.db import transaction
from django.utils import timezone

from apps.analytics.counters import Tally
from apps.core.tasks import enqueue_on_commit
from apps.events.models import Event
from apps.events.services import events_mark_cancelled
from apps.workflows import accounting, digests
from apps.workflows.definitions import program_for
from apps.workflows.engine.fanout import ADVANCE_TASK
from apps.workflows.models import Run, StepRun


def event_cancel_runs(*, event: Event) -> int:
    """Stop every run of the event that has not finished. Returns how many were cancelled."""
    return events_cancel_runs(events=[event], reason="cancelled_by_api")


def events_cancel_runs(*, events: Sequence[Event], reason: str) -> int:
    """Stop the unfinished runs of these events, wherever they wait (delay, digest, escalation).

    A run waiting in a digest leaves its bucket; if it was the bucket's leader, the next run in
    the bucket takes over, so the other events are still sent.
    """
    now = timezone.now()
    event_pks = [event.pk for event in events]
    wake: list[int] = []
    with transaction.atomic():
        events_mark_cancelled(event_ids=event_pks, only_pending=True)
        runs = list(
            Run.objects.select_for_update()
            .filter(event_id__in=event_pks, status__in=[Run.Status.PENDING, Run.Status.WAITING, Run.Status.RUNNING])
            .select_related("workflow_version__workflow")
            .order_by("pk")
        )
        tally = Tally()
        for run in runs:
            if run.status == Run.Status.PENDING and run.step_index == 0 and not run.step_results:
                accounting.count_recipient(tally, run, now)  # never walked: counted here, once

            run.status = Run.Status.CANCELLED
            run.resume_at = None
            run.claim_token = None
            run.lease_until = None
            run.completed_at = now
        Run.objects.bulk_update(runs, ["status", "resume_at", "claim_token", "lease_until", "completed_at"])
        for run in runs:
            accounting.count_finished(tally, run, now)
        tally.write()
        StepRun.objects.bulk_create(
            [
                StepRun(
                    run=run,
                    step_id=_next_step_id(run),
                    step_type="cancel",
                    decision=StepRun.Decision.CANCELLED,
                    reason=reason,
                )
                for run in runs
            ]
        )
        if runs:
            wake = digests.digests_release_cancelled(run_pks=[run.pk for run in runs], now=now)
            events_mark_cancelled(event_ids={run.event_id for run in runs})
        if wake:
            enqueue_on_commit(ADVANCE_TASK, wake)
    return len(runs)


def _next_step_id(run: Run) -> str:
    if not run.workflow_version_id:
        return "-"
    program = program_for(run.workflow_version)
    if run.step_index < len(program) and "step" in program[run.step_index]:
        return str(program[run.step_index]["step"]["id"])
    return "-"
