"""Statuses from provider callbacks: stored once each, applied forward only."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.db import IntegrityError, transaction
from django.utils import timezone

from apps.analytics.counters import Tally
from apps.delivery.counting import count_status_change, message_dims
from apps.delivery.models import Integration, Message, MessageEvent
from apps.delivery.services.suppressions import address_suppress
from apps.delivery.status import FAILURES, statuses_that_may_move_to
from apps.observability.metrics import messages_finished_counts

logger = logging.getLogger(__name__)


@dataclass
class StatusEvent:
    """A provider callback, normalized. ``status`` is the Message status it means ("" for none)."""

    provider: str
    provider_message_id: str
    event_type: str
    status: str
    dedupe_key: str
    payload: dict[str, Any]
    recipient: str = ""
    description: str = ""
    occurred_at: datetime | None = None
    suppress_reason: str = ""  # set: the recipient address becomes inactive
    clarion_message_id: str = ""  # from metadata the message was sent with (a fallback match)


def _timestamp_field(status: str) -> str | None:
    fields: dict[str, str] = {
        Message.Status.DELIVERED: "delivered_at",
        Message.Status.OPENED: "opened_at",
        Message.Status.READ: "opened_at",
        Message.Status.CLICKED: "clicked_at",
    }
    return fields.get(status)


def message_status_apply(
    *, message_id: int, status: str, at: datetime | None = None, error: str = "", message: Message | None = None
) -> bool:
    """Move a message to ``status`` if that is forward (one conditional UPDATE: race-free).

    Engagement timestamps are set the first time even when the status does not move (an "opened"
    that arrives after "clicked"). Returns whether the status changed. A move is counted for
    analytics (``apps.delivery.counting``) in the same transaction, exactly once: the UPDATE is
    conditional on the status it moves from. ``message``: the row if the caller just loaded it (its
    status is tried first, saving a read); otherwise, or if it is stale, the status is read.
    """
    at = at or timezone.now()
    stamp = _timestamp_field(status)
    targets = statuses_that_may_move_to(status)
    with transaction.atomic():
        if stamp:
            Message.objects.filter(pk=message_id, **{f"{stamp}__isnull": True}).update(**{stamp: at})
        updates: dict[str, Any] = {"status": status, "updated_at": timezone.now()}
        if status in FAILURES and error:
            updates["error"] = error[:5000]
        known = (
            (message.status, message.environment_id, message.channel, message.data, message.sent_at)
            if message is not None and message.pk == message_id
            else None
        )
        for _ in range(len(targets) + 1):  # each retry sees the status move forward: bounded
            row = known or (
                Message.objects.filter(pk=message_id)
                .values_list("status", "environment_id", "channel", "data", "sent_at")
                .first()
            )
            known = None
            if row is None or row[0] not in targets:
                return False
            old, environment_id, channel, data, sent_at = row
            if Message.objects.filter(pk=message_id, status=old).update(**updates):
                tally = Tally()
                count_status_change(
                    tally,
                    dims=message_dims(environment_id=environment_id, channel=channel, data=data),
                    old=old,
                    new=status,
                    at=at,
                    sent_at=sent_at,
                )
                tally.write()
                return True
        return False


def _find_message(environment_id: int, event: StatusEvent) -> Message | None:
    if event.provider_message_id:
        message = (
            Message.objects.filter(environment_id=environment_id, provider_message_id=event.provider_message_id)
            .order_by("-id")
            .first()
        )
        if message is not None:
            return message
    if event.clarion_message_id.isdigit():
        return Message.objects.filter(environment_id=environment_id, pk=int(event.clarion_message_id)).first()
    return None


def message_events_record(*, integration: Integration, events: Sequence[StatusEvent]) -> list[MessageEvent]:
    """Store provider callbacks (raw payload kept) and move their messages forward.

    A duplicate (same dedupe key) is dropped; an out-of-order one is stored but moves nothing.
    A hard bounce, complaint or invalid number marks the address inactive. An event for a
    message whose send has not been recorded yet is kept and applied when it is.
    """
    stored: list[MessageEvent] = []
    for event in events:
        message = _find_message(integration.environment_id, event)
        try:
            with transaction.atomic():
                row = MessageEvent.objects.create(
                    environment_id=integration.environment_id,
                    integration=integration,
                    message=message,
                    provider=event.provider,
                    provider_message_id=event.provider_message_id[:255],
                    event_type=event.event_type[:40],
                    status=event.status,
                    dedupe_key=event.dedupe_key[:255],
                    recipient=event.recipient[:320],
                    description=event.description[:5000],
                    payload=event.payload,
                    occurred_at=event.occurred_at,
                )
        except IntegrityError:
            logger.info("duplicate %s event %s ignored", event.provider, event.dedupe_key)
            continue
        if message is not None and event.provider_message_id and not message.provider_message_id:
            # Matched by Clarion's id: the send's answer was never recorded (in doubt, or not yet).
            Message.objects.filter(pk=message.pk, provider_message_id="").update(
                provider_message_id=event.provider_message_id[:255]
            )
            message.provider_message_id = event.provider_message_id[:255]
        if message is not None and event.status:
            row.applied = message_status_apply(
                message_id=message.pk,
                status=event.status,
                at=event.occurred_at,
                error=event.description,
                message=message,
            )
            if row.applied:
                MessageEvent.objects.filter(pk=row.pk).update(applied=True)
        if event.suppress_reason:
            channel = message.channel if message is not None else integration.channel
            address_suppress(
                environment_id=integration.environment_id,
                channel=channel,
                address=event.recipient or (message.recipient if message is not None else ""),
                reason=event.suppress_reason,
                detail=event.description,
                message=message,
            )
        stored.append(row)
    messages_finished_counts(Counter((integration.channel, r.status, r.provider) for r in stored if r.applied))
    return stored


def _apply_early_events(message: Message) -> None:
    """Callbacks that arrived before the send was recorded (fast providers): apply them now, in order."""
    early = list(
        MessageEvent.objects.filter(
            environment_id=message.environment_id,
            provider_message_id=message.provider_message_id,
            message__isnull=True,
        ).order_by("id")
    )
    for event in early:
        applied = bool(event.status) and message_status_apply(
            message_id=message.pk, status=event.status, at=event.occurred_at, error=event.description
        )
        MessageEvent.objects.filter(pk=event.pk).update(message=message, applied=applied)
