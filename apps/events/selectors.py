from __future__ import annotations

from typing import Any

from django.db.models import Prefetch

from apps.core.errors import NotFound
from apps.delivery.models import DeliveryAttempt, Message
from apps.events.models import Event
from apps.tenancy.models import Environment
from apps.workflows.models import Run, StepRun

TRACE_RUN_LIMIT = 100


def event_get(*, environment: Environment, transaction_id: str) -> Event:
    event = (
        Event.objects.select_related("workflow", "workflow_version")
        .filter(environment=environment, transaction_id=transaction_id)
        .first()
    )
    if event is None:
        raise NotFound(f"No event with transaction_id '{transaction_id}'.", code="event_not_found")
    return event


def event_trace(*, event: Event, subscriber_id: str | None = None, limit: int = TRACE_RUN_LIMIT) -> dict[str, Any]:
    """Every run, every step decision with its reason, every message with its attempts.

    A fixed number of queries whatever the number of runs shown.
    """
    runs = (
        Run.objects.filter(event=event)
        .select_related("subscriber")
        .prefetch_related(
            Prefetch("step_runs", queryset=StepRun.objects.order_by("id")),
            Prefetch(
                "messages",
                queryset=Message.objects.order_by("id").prefetch_related(
                    Prefetch("attempts_log", queryset=DeliveryAttempt.objects.order_by("id"))
                ),
            ),
        )
        .order_by("id")
    )
    if subscriber_id:
        runs = runs.filter(subscriber__subscriber_id=subscriber_id)
    runs_list = list(runs[:limit])
    return {
        "transaction_id": event.transaction_id,
        "workflow": event.workflow.key,
        "workflow_version": event.workflow_version.number,
        "status": event.status,
        "payload": event.payload,
        "actor": event.actor,
        "recipients": event.recipients,
        "recipient_count": event.recipient_count,
        "created_at": event.created_at,
        "processed_at": event.processed_at,
        "runs_shown": len(runs_list),
        "runs": [run_data(run) for run in runs_list],
    }


def run_data(run: Run) -> dict[str, Any]:
    return {
        "subscriber_id": run.subscriber.subscriber_id,
        "status": run.status,
        "step_index": run.step_index,
        "resume_at": run.resume_at,
        "completed_at": run.completed_at,
        "steps": [
            {
                "step": s.step_id,
                "type": s.step_type,
                "decision": s.decision,
                "reason": s.reason,
                "detail": s.detail,
                "at": s.created_at,
            }
            for s in run.step_runs.all()
        ],
        "messages": [
            {
                "id": m.pk,
                "step": m.step_id,
                "channel": m.channel,
                "status": m.status,
                "recipient": m.recipient,
                "subject": m.subject,
                "locale": m.locale,
                "provider": m.provider,
                "provider_message_id": m.provider_message_id,
                "error": m.error,
                "created_at": m.created_at,
                "sent_at": m.sent_at,
                "attempts": [
                    {
                        "provider": a.provider,
                        "status": a.status,
                        "error": a.error,
                        "duration_ms": a.duration_ms,
                        "response": a.response,
                        "at": a.created_at,
                    }
                    for a in m.attempts_log.all()
                ],
            }
            for m in run.messages.all()
        ],
    }
