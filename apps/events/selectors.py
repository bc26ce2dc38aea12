from __future__ import annotations

from typing import Any

from apps.core.errors import NotFound
from apps.events.models import Event
from apps.tenancy.models import Environment
from apps.workflows.selectors import event_runs_data

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
    runs = event_runs_data(event=event, subscriber_id=subscriber_id, limit=limit)
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
        "runs_shown": len(runs),
        "runs": runs,
    }
