"""Reads for the console's Activity (the Event list and the event page's timeline).

The timeline is ``run_data`` — the trace ``GET /api/v1/events/{transaction_id}`` answers with —
read with the same queries, plus what only the console shows (each attempt's response code, each
message's provider callbacks, the ids to link to). The list's filters are ``EXISTS`` subqueries
that follow indexed foreign keys (run.event_id, message.run_id), so they never scan the trace
tables. Outcomes are defined in docs/console.md ("Activity").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.db.models import Exists, OuterRef, Prefetch, Q, QuerySet

from apps.delivery.models import Message, MessageEvent
from apps.events.models import Event
from apps.workflows.models import Run
from apps.workflows.reasons import reason_in_words
from apps.workflows.selectors import _with_trace, run_data

# A message the provider accepted (in-app: put in the inbox), whatever happened to it next.
REACHED_STATUSES = (
    Message.Status.SENT,
    Message.Status.DELIVERED,
    Message.Status.OPENED,
    Message.Status.CLICKED,
    Message.Status.READ,
)
FAILED_STATUSES = (Message.Status.FAILED, Message.Status.BOUNCED)

OUTCOMES: dict[str, str] = {
    "delivered": "delivered (a message reached someone)",
    "failed": "failed (a message, run or the event failed)",
    "skipped": "skipped only (every run completed, no message)",
    "waiting": "waiting (a run waits)",
}


def _messages_of_event() -> QuerySet[Message]:
    return Message.objects.filter(run__event_id=OuterRef("pk"))


def _runs_of_event() -> QuerySet[Run]:
    return Run.objects.filter(event_id=OuterRef("pk"))


def events_with_outcome(events: QuerySet[Event], outcome: str) -> QuerySet[Event]:
    """The events whose trace shows ``outcome`` (a key of ``OUTCOMES``); an unknown one filters nothing."""
    if outcome == "delivered":
        return events.filter(Exists(_messages_of_event().filter(status__in=REACHED_STATUSES)))
    if outcome == "failed":
        return events.filter(
            Q(status=Event.Status.FAILED)
            | Exists(_runs_of_event().filter(status=Run.Status.FAILED))
            | Exists(_messages_of_event().filter(status__in=FAILED_STATUSES))
        )
    if outcome == "skipped":
        return events.filter(
            Exists(_runs_of_event()),
            ~Exists(_runs_of_event().exclude(status=Run.Status.COMPLETED)),
            ~Exists(_messages_of_event()),
        )
    if outcome == "waiting":
        return events.filter(Exists(_runs_of_event().filter(status=Run.Status.WAITING)))
    return events


def events_with_channel(events: QuerySet[Event], channel: str) -> QuerySet[Event]:
    """The events that produced a message on ``channel``."""
    return events.filter(Exists(_messages_of_event().filter(channel=channel)))


@dataclass
class EventTimeline:
    runs: list[dict[str, Any]]  # run_data(run) + the console's extras, the first ``limit`` runs
    more: bool  # the event has more runs than shown
    has_waiting: bool  # a run of the event is still pending, running or waiting (cancellable)


def event_timeline(*, event: Event, limit: int) -> EventTimeline:
    """The first ``limit`` runs of the event, each with its decisions (and their reasons in plain
    words), its messages, their attempts and provider callbacks. Six queries, whatever the number of runs."""
    runs = list(
        _with_trace(Run.objects.filter(event=event).select_related("subscriber"))
        .prefetch_related(Prefetch("messages__events", queryset=MessageEvent.objects.order_by("id")))
        .order_by("id")[: limit + 1]
    )
    has_waiting = Run.objects.filter(event=event, status__in=Run.ACTIVE_STATUSES).exists()
    return EventTimeline(
        runs=[_timeline_run(run) for run in runs[:limit]], more=len(runs) > limit, has_waiting=has_waiting
    )


def _timeline_run(run: Run) -> dict[str, Any]:
    data = run_data(run)
    data["id"] = run.pk
    data["subscriber_pk"] = run.subscriber_id
    for step in data["steps"]:
        step["words"] = reason_in_words(step["reason"], step["detail"])
    for entry, message in zip(data["messages"], run.messages.all(), strict=True):
        for attempt_entry, attempt in zip(entry["attempts"], message.attempts_log.all(), strict=True):
            attempt_entry["response_code"] = attempt.response_code
            attempt_entry["error_kind"] = attempt.error_kind
            attempt_entry["retryable"] = attempt.retryable
        entry["callbacks"] = [
            {
                "provider": callback.provider,
                "event_type": callback.event_type,
                "status": callback.status,
                "applied": callback.applied,
                "description": callback.description,
                "payload": callback.payload,
                "occurred_at": callback.occurred_at,
                "received_at": callback.received_at,
            }
            for callback in message.events.all()
        ]
        entry["resendable"] = message_resendable(message)
    return data


def message_resendable(message: Message) -> bool:
    """A failed outbound message may be sent again (as a new message); in-app ones live in the inbox."""
    return message.status == Message.Status.FAILED and message.channel != "in_app"


def event_message(*, event: Event, message_id: int) -> Message | None:
    """One message of one of the event's runs, or None."""
    return Message.objects.filter(pk=message_id, run__event=event).first()
