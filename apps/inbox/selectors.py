from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.db import connection
from django.db.models import BooleanField, Count, Q, QuerySet
from django.db.models.expressions import RawSQL
from django.utils import timezone

from apps.core.errors import NotFound
from apps.delivery.tracking import action_click_url
from apps.inbox.models import InboxMessage
from apps.subscribers.models import Subscriber

MAX_COUNT_FILTERS = 10


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def _action_data(message_id: int | None, action: Any) -> Any:
    """An action button as stored, plus ``tracking_url`` (its URL through the click redirect) when
    the click can be counted."""
    if not isinstance(action, dict):
        return action
    tracking_url = action_click_url(message_id, str(action.get("url") or ""))
    return {**action, "tracking_url": tracking_url} if tracking_url else action


def inbox_message_data(message: InboxMessage) -> dict[str, Any]:
    """The one JSON shape of an inbox message: REST list, websocket frames and the widget."""
    return {
        "id": message.pk,
        "seq": message.seq,
        "title": message.title,
        "body": message.body,
        "action_url": message.action_url,
        # The same URL through Clarion's click redirect (counts the click on the delivery message);
        # "" when it cannot go through it (not an absolute http(s) URL). Widgets open this one.
        "action_tracking_url": action_click_url(message.message_id, message.action_url),
        "avatar": message.avatar,
        "workflow": message.workflow_key,
        "category": message.category_key,
        "tags": list(message.tags or []),
        "actions": [_action_data(message.message_id, action) for action in message.actions or []],
        "data": message.data,
        "created_at": _iso(message.created_at),
        "seen_at": _iso(message.seen_at),
        "read_at": _iso(message.read_at),
        "archived_at": _iso(message.archived_at),
        "snoozed_until": _iso(message.snoozed_until),
        "deleted_at": _iso(message.deleted_at),
        "is_read": message.read_at is not None,
        "is_seen": message.seen_at is not None,
        "is_archived": message.archived_at is not None,
        "is_snoozed": message.snoozed_until is not None and message.snoozed_until > timezone.now(),
        "is_deleted": message.deleted_at is not None,
    }


def _has_any_tag(tags: Sequence[str]) -> Q:
    """Rows whose ``tags`` JSON list holds at least one of ``tags`` (PostgreSQL ``?|``, SQLite ``json_each``)."""
    table = InboxMessage._meta.db_table
    if connection.vendor == "postgresql":
        sql = f'"{table}"."tags" ?| %s'
        params: list[Any] = [list(tags)]
    else:
        placeholders = ", ".join(["%s"] * len(tags))
        sql = f'EXISTS (SELECT 1 FROM json_each("{table}"."tags") WHERE json_each.value IN ({placeholders}))'
        params = list(tags)
    return Q(RawSQL(sql, params, output_field=BooleanField()))


@dataclass(frozen=True)
class InboxFilter:
    """What the list, the counts and the bulk writes can narrow on.

    ``archived``: False (the inbox, default), True (the archive) or None (both).
    ``snoozed``: False (default: hide messages snoozed until later), True (only those) or None.
    ``read`` / ``seen``: None (either) or the state wanted. ``categories`` / ``tags``: any of.
    """

    read: bool | None = None
    seen: bool | None = None
    archived: bool | None = False
    snoozed: bool | None = False
    categories: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()

    def q(self, now: datetime) -> Q:
        q = Q(deleted_at__isnull=True)
        if self.archived is not None:
            q &= Q(archived_at__isnull=not self.archived)
        if self.snoozed is True:
            q &= Q(snoozed_until__gt=now)
        elif self.snoozed is False:
            q &= Q(snoozed_until__isnull=True) | Q(snoozed_until__lte=now)
        if self.read is not None:
            q &= Q(read_at__isnull=not self.read)
        if self.seen is not None:
            q &= Q(seen_at__isnull=not self.seen)
        if self.categories:
            q &= Q(category_key__in=list(self.categories))
        if self.tags:
            q &= _has_any_tag(self.tags)
        return q

    def describe(self) -> dict[str, Any]:
        """The filter as the API echoes it back (only what was set)."""
        out: dict[str, Any] = {}
        for name in ("read", "seen", "archived", "snoozed"):
            value = getattr(self, name)
            if value is not None and not (name in ("archived", "snoozed") and value is False):
                out[name] = value
        if self.categories:
            out["categories"] = list(self.categories)
        if self.tags:
            out["tags"] = list(self.tags)
        return out


def _scope(subscriber: Any) -> QuerySet[InboxMessage]:
    return InboxMessage.objects.filter(subscriber_id=subscriber.pk, environment_id=subscriber.environment_id)


def inbox_counts(*, subscriber_ids: Iterable[int]) -> dict[int, dict[str, int]]:
    """Unread / unseen / total counts of the inbox (not archived, not snoozed, not deleted) for
    many subscribers in one query."""
    subscriber_ids = list(subscriber_ids)
    counts = {pk: {"unread": 0, "unseen": 0, "total": 0} for pk in subscriber_ids}
    rows = (
        InboxMessage.objects.filter(InboxFilter().q(timezone.now()), subscriber_id__in=subscriber_ids)
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


def inbox_counts_for_filters(*, subscriber: Any, filters: Sequence[InboxFilter]) -> list[int]:
    """One count per filter, for one subscriber, in one query (conditional aggregates)."""
    if not filters:
        return []
    now = timezone.now()
    aggregates = {f"c{i}": Count("id", filter=f.q(now)) for i, f in enumerate(filters)}
    result = _scope(subscriber).aggregate(**aggregates)
    return [int(result[f"c{i}"] or 0) for i in range(len(filters))]


def inbox_messages_for(*, subscriber: Any, filter: InboxFilter | None = None) -> QuerySet[InboxMessage]:
    """One subscriber's messages (``subscriber``: a Subscriber or an InboxPrincipal), unordered:
    the cursor paginator orders by ``-id``, which the (subscriber, -id) index serves."""
    return _scope(subscriber).filter((filter or InboxFilter()).q(timezone.now()))


@dataclass(frozen=True)
class InboxChanges:
    messages: list[InboxMessage]
    cursor: int
    has_more: bool


def inbox_changes_after(*, subscriber: Any, after: int, limit: int = 100) -> InboxChanges:
    """Every message of the subscriber created or changed after ``after`` (a ``seq``), oldest
    change first, deleted and archived ones included, so a client can replay what it missed.
    ``cursor`` is where to continue (the last ``seq`` returned, or ``after``)."""
    rows = list(_scope(subscriber).filter(seq__gt=after).order_by("seq", "id")[: limit + 1])
    has_more = len(rows) > limit
    rows = rows[:limit]
    return InboxChanges(messages=rows, cursor=rows[-1].seq if rows else after, has_more=has_more)


def inbox_subscriber(*, principal: Any) -> Subscriber:
    """The Subscriber row behind an inbox token (scoped to its environment), or NotFound."""
    subscriber = Subscriber.objects.filter(pk=principal.pk, environment_id=principal.environment_id).first()
    if subscriber is None:
        raise NotFound("The subscriber of this inbox session no longer exists.")
    return subscriber
