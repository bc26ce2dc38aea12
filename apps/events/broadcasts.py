"""Broadcast: one trigger to every subscriber of the environment.

The event stores its recipients as ``[{"broadcast": true}]``; the fan-out
(``workflows.engine.fanout._recipient_pk_chunks``) streams the environment's subscribers by keyset
chunks, exactly as it streams a topic, so a broadcast costs what a topic trigger of the same size
costs per recipient. Idempotent by ``transaction_id`` (a repeat is a 409 ``duplicate_transaction``)
and by the ``Idempotency-Key`` header; cancellable like any event (``DELETE /events/<transaction_id>``
or ``POST /events/cancel`` with its ``cancellation_key``).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from django.db import IntegrityError, transaction

from apps.core.errors import Conflict
from apps.core.tasks import enqueue_on_commit
from apps.events.models import Event
from apps.events.services import PROCESS_TASK, _actor_data, _check_payload, _resolve_workflow, triggered_count
from apps.observability.metrics import events_committed
from apps.subscribers.models import Subscriber
from apps.subscribers.services import subscriber_bulk_upsert
from apps.tenancy.models import Environment

BROADCAST_RECIPIENTS: list[dict[str, Any]] = [{"broadcast": True}]


@dataclass(frozen=True)
class BroadcastRequest:
    workflow: str
    payload: dict[str, Any]
    actor: Any = None  # "id" | {"subscriber_id": ..., fields...} | None
    transaction_id: str | None = None
    cancellation_key: str = ""


def is_broadcast(recipients: Any) -> bool:
    return isinstance(recipients, list) and any(isinstance(r, dict) and r.get("broadcast") for r in recipients)


@transaction.atomic
def event_broadcast(*, environment: Environment, request: BroadcastRequest) -> Event:
    """Accept a broadcast: write the event and wake the fan-out after commit. No per-recipient
    work here: the fan-out walks the environment's subscribers chunk by chunk."""
    workflow = _resolve_workflow(environment, request.workflow)
    _check_payload(workflow, request.payload)
    actor = _actor_data(request.actor)
    if actor and len(actor) > 1:
        subscriber_bulk_upsert(environment=environment, items=[actor])
    if actor and not isinstance(request.actor, dict):
        existing = Subscriber.objects.filter(environment=environment, subscriber_id=actor["subscriber_id"]).first()
        if existing is not None:
            actor = existing.as_context()
    transaction_id = request.transaction_id or uuid.uuid4().hex
    assert workflow.published_version_id is not None  # _resolve_workflow refuses unpublished workflows
    try:
        with transaction.atomic():
            event = Event.objects.create(
                environment=environment,
                transaction_id=transaction_id,
                workflow=workflow,
                workflow_version_id=workflow.published_version_id,
                payload=request.payload,
                actor=actor,
                recipients=BROADCAST_RECIPIENTS,
                cancellation_key=request.cancellation_key,
            )
    except IntegrityError as exc:
        raise Conflict(
            f"An event with transaction_id '{transaction_id}' was already accepted; it will not run twice.",
            code="duplicate_transaction",
            details={"transaction_id": transaction_id},
        ) from exc
    triggered_count(environment_id=environment.pk, workflows=[workflow])
    enqueue_on_commit(PROCESS_TASK, event.pk)
    events_committed(environment.pk, [(workflow.key, event.transaction_id)])  # metrics + log, on commit
    return event
