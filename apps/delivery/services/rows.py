"""Messages for the engine's hot path: plain rows instead of model instances, inserted in one COPY.

``message_row_build`` follows the one rule of ``message_build`` (the recipient is the subscriber's
address on the channel; an in-app message starts ``sent`` through ``inbox``, every other channel
``queued``) without building a ``Message`` instance; ``messages_insert`` writes a chunk's rows in
one statement (``apps.core.bulk.rows_insert``) and sets their primary keys.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from django.utils import timezone

from apps.core.bulk import rows_insert
from apps.delivery.addresses import subscriber_recipient
from apps.delivery.models import Message

if TYPE_CHECKING:
    from apps.subscribers.models import Subscriber


@dataclass(slots=True, eq=False)
class MessageRow:
    """A Message not saved yet; ``pk`` is set by ``messages_insert``."""

    environment_id: int
    run_id: int | None
    step_id: str
    channel: str
    subscriber_id: int | None
    template_version_id: int | None
    locale: str
    recipient: str
    subject: str
    body: str
    data: dict[str, Any]
    status: str
    provider: str
    sent_at: datetime | None
    pk: int | None = None


def message_row_build(
    *,
    environment_id: int,
    channel: str,
    subscriber: Subscriber,
    run_id: int | None,
    step_id: str,
    template_version_id: int | None,
    locale: str = "",
    subject: str = "",
    body: str = "",
    data: dict[str, Any] | None = None,
    now: datetime | None = None,
) -> MessageRow:
    in_app = channel == "in_app"
    return MessageRow(
        environment_id=environment_id,
        run_id=run_id,
        step_id=step_id,
        channel=channel,
        subscriber_id=subscriber.pk,
        template_version_id=template_version_id,
        locale=locale,
        recipient=subscriber_recipient(subscriber=subscriber, channel=channel),
        subject=subject,
        body=body,
        data=data if data is not None else {},
        status=Message.Status.SENT if in_app else Message.Status.QUEUED,
        provider="inbox" if in_app else "",
        sent_at=(now or timezone.now()) if in_app else None,
    )


def messages_insert(*, messages: Sequence[MessageRow]) -> None:
    """Insert the rows in one statement (in the caller's transaction) and set their ``pk``."""
    pks = rows_insert(
        Message,
        [
            {
                "environment_id": m.environment_id,
                "run_id": m.run_id,
                "step_id": m.step_id,
                "channel": m.channel,
                "subscriber_id": m.subscriber_id,
                "template_version_id": m.template_version_id,
                "locale": m.locale,
                "recipient": m.recipient,
                "subject": m.subject,
                "body": m.body,
                "data": m.data,
                "status": m.status,
                "provider": m.provider,
                "sent_at": m.sent_at,
            }
            for m in messages
        ],
    )
    for message, pk in zip(messages, pks, strict=True):
        message.pk = pk
