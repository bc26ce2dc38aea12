"""Pushes to the live inbox over the channel layer. Call only after the rows are committed."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer

from apps.inbox.models import InboxMessage
from apps.inbox.selectors import inbox_counts, inbox_message_data

logger = logging.getLogger(__name__)


def subscriber_group(*, environment_id: int, subscriber_pk: int) -> str:
    return f"inbox.{environment_id}.{subscriber_pk}"


def _send_all(frames: list[tuple[str, dict[str, Any]]]) -> None:
    layer = get_channel_layer()
    if layer is None or not frames:
        return

    async def send() -> None:
        for group, frame in frames:
            await layer.group_send(group, {"type": "inbox.event", "frame": frame})

    try:
        async_to_sync(send)()
    except Exception:  # the inbox re-syncs over REST; a push failure must not fail the run
        logger.exception("inbox push failed for %d frame(s)", len(frames))


def _publish_messages(messages: Sequence[InboxMessage], event: str) -> None:
    if not messages:
        return
    counts = inbox_counts(subscriber_ids={m.subscriber_id for m in messages})
    _send_all(
        [
            (
                subscriber_group(environment_id=m.environment_id, subscriber_pk=m.subscriber_id),
                {"event": event, "message": inbox_message_data(m), "counts": counts[m.subscriber_id]},
            )
            for m in messages
        ]
    )


def publish_messages_created(messages: Sequence[InboxMessage]) -> None:
    """One ``message.created`` frame per message, carrying the subscriber's fresh counts."""
    _publish_messages(messages, "message.created")


def publish_messages_updated(messages: Sequence[InboxMessage]) -> None:
    _publish_messages(messages, "message.updated")


def publish_counts(*, environment_id: int, subscriber_pk: int) -> None:
    counts = inbox_counts(subscriber_ids=[subscriber_pk])[subscriber_pk]
    _send_all(
        [
            (
                subscriber_group(environment_id=environment_id, subscriber_pk=subscriber_pk),
                {"event": "counts.changed", "counts": counts},
            )
        ]
    )
