from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from django.db import IntegrityError, transaction

from apps.core.errors import Conflict, NotFound, Unprocessable
from apps.core.tasks import enqueue_on_commit
from apps.events.models import Event
from apps.subscribers.models import Subscriber, Topic
from apps.subscribers.services import subscriber_bulk_upsert
from apps.tenancy.models import Environment
from apps.workflows.models import Workflow
from apps.workflows.payloads import payload_errors

PROCESS_TASK = "apps.workflows.tasks.process_event"


@dataclass(frozen=True)
class TriggerRequest:
    workflow: str
    to: list[Any]  # "id" | {"subscriber_id": ..., fields...} | {"topic": key}
    payload: dict[str, Any]
    actor: Any = None  # "id" | {"subscriber_id": ..., fields...} | None
    transaction_id: str | None = None
    cancellation_key: str = ""


def _normalize_recipients(to: list[Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[str]]:
    """→ (recipients as stored, inline subscriber objects to upsert, topic keys); deduplicated."""
    recipients: list[dict[str, Any]] = []
    inline: dict[str, dict[str, Any]] = {}
    topics: list[str] = []
    seen: set[tuple[str, str]] = set()
    for entry in to:
        if isinstance(entry, str):
            key = ("subscriber_id", entry)
        elif "topic" in entry:
            key = ("topic", entry["topic"])
        else:
            key = ("subscriber_id", entry["subscriber_id"])
            fields = {k: v for k, v in entry.items() if k != "subscriber_id"}
            if fields:
                inline[entry["subscriber_id"]] = {**inline.get(entry["subscriber_id"], {}), **entry}
        if key in seen:
            continue
        seen.add(key)
        recipients.append({key[0]: key[1]})
        if key[0] == "topic":
            topics.append(key[1])
    return recipients, list(inline.values()), topics


def _resolve_workflow(environment: Environment, key: str) -> Workflow:
    workflow = Workflow.objects.select_related("published_version").filter(environment=environment, key=key).first()
    if workflow is None or not workflow.active:
        raise NotFound(f"No active workflow with key '{key}' in this environment.", code="workflow_not_found")
    if workflow.published_version_id is None:
        raise Unprocessable(
            f"Workflow '{key}' has no published version; publish it first.", code="workflow_not_published"
        )
    return workflow


def _actor_data(actor: Any) -> dict[str, Any] | None:
    if actor is None:
        return None
    if isinstance(actor, str):
        return {"subscriber_id": actor}
    return dict(actor)


def _check_payload(workflow: Workflow, payload: dict[str, Any]) -> None:
    version = workflow.published_version
    schema = version.payload_schema if version is not None else None
    if not schema:
        return
    errors = payload_errors(schema=schema, payload=payload)
    if errors:
        raise Unprocessable(
            f"The payload does not match the schema of workflow '{workflow.key}'.",
            code="invalid_payload",
            details=errors,
        )


def _create_event(*, environment: Environment, request: TriggerRequest, workflow: Workflow) -> Event:
    _check_payload(workflow, request.payload)
    recipients, inline, topics = _normalize_recipients(request.to)
    if topics:
        known = set(Topic.objects.filter(environment=environment, key__in=topics).values_list("key", flat=True))
        missing = [t for t in topics if t not in known]
        if missing:
            raise Unprocessable(
                "Some recipients are topics that do not exist.", code="unknown_topic", details={"topics": missing}
            )
    actor = _actor_data(request.actor)
    if inline:
        subscriber_bulk_upsert(environment=environment, items=inline)
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
                recipients=recipients,
                cancellation_key=request.cancellation_key,
            )
    except IntegrityError as exc:
        raise Conflict(
            f"An event with transaction_id '{transaction_id}' was already accepted; it will not run twice.",
            code="duplicate_transaction",
            details={"transaction_id": transaction_id},
        ) from exc
    enqueue_on_commit(PROCESS_TASK, event.pk)
    return event


@transaction.atomic
def event_trigger(*, environment: Environment, request: TriggerRequest) -> Event:
    """Accept one trigger: write the event and wake the fan-out after commit. No per-recipient work
    beyond upserting inline subscriber objects; unknown subscriber ids are created by the fan-out."""
    workflow = _resolve_workflow(environment, request.workflow)
    return _create_event(environment=environment, request=request, workflow=workflow)


@dataclass(frozen=True)
class BulkItemResult:
    transaction_id: str | None
    status: str  # accepted | duplicate | error
    error: dict[str, Any] | None = None


@transaction.atomic
def event_trigger_bulk(*, environment: Environment, requests: list[TriggerRequest]) -> list[BulkItemResult]:
    """Accept many triggers in one transaction. Items that cannot be accepted (unknown workflow,
    duplicate transaction id…) are reported per item; the others are accepted."""
    from apps.core.errors import ApiError

    results: list[BulkItemResult] = []
    workflows: dict[str, Workflow | ApiError] = {}
    for request in requests:
        if request.workflow not in workflows:
            try:
                workflows[request.workflow] = _resolve_workflow(environment, request.workflow)
            except ApiError as exc:
                workflows[request.workflow] = exc
        workflow = workflows[request.workflow]
        if isinstance(workflow, ApiError):
            results.append(BulkItemResult(request.transaction_id, "error", _error_dict(workflow)))
            continue
        try:
            with transaction.atomic():
                event = _create_event(environment=environment, request=request, workflow=workflow)
        except Conflict as exc:
            results.append(BulkItemResult(request.transaction_id, "duplicate", _error_dict(exc)))
            continue
        except ApiError as exc:
            results.append(BulkItemResult(request.transaction_id, "error", _error_dict(exc)))
            continue
        results.append(BulkItemResult(event.transaction_id, "accepted"))
    return results


def _error_dict(exc: Any) -> dict[str, Any]:
    return {"code": exc.error_code, "message": str(exc.detail), "details": exc.details}


def events_mark_cancelled(*, event_ids: Iterable[int], only_pending: bool = False) -> int:
    """Mark events cancelled; returns how many changed. ``only_pending``: only those whose fan-out
    has not finished (it stops at its next chunk); otherwise every one not cancelled yet (some of
    its runs were stopped). Called by the engine's cancellation, in its transaction."""
    events = Event.objects.filter(pk__in=list(event_ids))
    if only_pending:
        return events.filter(status=Event.Status.PENDING).update(status=Event.Status.CANCELLED)
    return events.exclude(status=Event.Status.CANCELLED).update(status=Event.Status.CANCELLED)


def event_cancel(*, event: Event) -> int:
    from apps.workflows.engine import event_cancel_runs  # the engine imports this module

    if event.status == Event.Status.FAILED:
        raise Conflict("This event failed and has nothing left to cancel.", code="event_not_cancellable")
    return event_cancel_runs(event=event)


def events_cancel_by_key(
    *, environment: Environment, cancellation_key: str, workflow_key: str | None = None
) -> tuple[int, int]:
    """Cancel every event given ``cancellation_key`` at trigger time (optionally of one workflow).

    Returns (events matched, runs cancelled). Cancelling twice is harmless: the second call finds
    nothing left to stop.
    """
    from apps.workflows.engine import events_cancel_runs  # the engine imports this module

    events = Event.objects.filter(environment=environment, cancellation_key=cancellation_key).exclude(
        status=Event.Status.FAILED
    )
    if workflow_key:
        events = events.filter(workflow__key=workflow_key)
    matched = list(events.only("pk", "status"))
    cancelled = 0
    for start in range(0, len(matched), 500):
        cancelled += events_cancel_runs(events=matched[start : start + 500], reason="cancelled_by_key")
    return len(matched), cancelled
