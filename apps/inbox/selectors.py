from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from django.db.models import Count, Q, QuerySet

from apps.inbox.models import InboxMessage


def inbox_message_data(message: InboxMessage) -> dict[str, Any]:
    """The one JSON shape of an inbox message: REST list, websocket frames and the widget."""
    return {
        "id": message.pk,
        "title": message.title,
        "body": message.body,
        "action_url": message.action_url,
        "avatar": message.avatar,
        "workflow": message.workflow_key,
        "category": message.category_key,
        "data": message.data,
        "created_at": message.created_at.isoformat() if message.created_at else None,
        "seen_at": message.seen_at.isoformat() if message.seen_at else None,
        "read_at": message.read_at.isoformat() if message.read_at else None,
        "archived_at": message.archived_at.isoformat() if message.archived_at else None,
        "is_read": message.read_at is not None,
        "is_seen": message.seen_at is not None,
        "is_archived": message.archived_at is not None,
    }


def inbox_counts(*, subscriber_ids: Iterable[int]) -> dict[int, dict[str, int]]:
    """Unread / unseen / total (non-archived) counts for many subscribers in one query."""
    subscriber_ids = list(subscriber_ids)
    counts = {pk: {"unread": 0, "unseen": 0, "total": 0} for pk in subscriber_ids}
    rows = (
        InboxMessage.objects.filter(subscriber_id__in=subscriber_ids, archived_at__isnull=True)
        .values("subscriber_id")
        .annotate(
            total=Count("id"),
            unread=Count("id", filter=Q(read_at__isnull=True)),
            unseen=Count("id", filter=Q(seen_at__isnull=True)),
        )
    )
    for row in rows:
        counts[row["subscriber_id"]] = {"unread": row["unread"], "unseen": row["unseen"], "total": row["total"]}
    return counts


def inbox_messages_for(
    *, subscriber: Any, read: bool | None = None, archived: bool = False, category: str | None = None
) -> QuerySet[InboxMessage]:
    """One subscriber's messages (``subscriber``: a Subscriber or an InboxPrincipal), unordered:
    the cursor paginator orders by ``-id``, which the (subscriber, -id) index serves."""
    qs = InboxMessage.objects.filter(
        subscriber_id=subscriber.pk, environment_id=subscriber.environment_id, archived_at__isnull=not archived
    )
    if read is not None:
        qs = qs.filter(read_at__isnull=not read)
    if category:
        qs = qs.filter(category_key=category)
    return qs
