"""Inbox writes: new in-app messages, sessions and minted tokens, marking, snoozing, deleting,
action buttons, bulk writes.

Every write runs in a transaction, stamps a new change cursor (``seq``, apps.inbox.sequence) on
the rows it changes and pushes its realtime frame only after commit, so a client never sees a
frame for a change that was rolled back, and a client that missed frames can replay them.
"""

from __future__ import annotations

import hmac
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any
from urllib.parse import urlencode

from django.conf import settings
from django.db import connection, transaction
from django.db.models import DateTimeField, F, Value
from django.db.models.fields.json import KeyTextTransform
from django.db.models.functions import Coalesce
from django.utils import timezone

from apps.analytics import counters
from apps.analytics.counters import Dims, Tally
from apps.core.bulk import rows_insert
from apps.core.errors import ApiError, NotFound, Unprocessable
from apps.delivery.models import Message
from apps.inbox import realtime
from apps.inbox.auth import (
    SubscriberRef,
    inbox_token_expires_at,
    inbox_token_issue,
    inbox_token_read,
    subscriber_hash_compute,
)
from apps.inbox.models import InboxMessage
from apps.inbox.origins import origin_allowed
from apps.inbox.selectors import InboxFilter
from apps.inbox.sequence import inbox_seq_next
from apps.subscribers.models import Subscriber
from apps.subscribers.services import subscriber_upsert
from apps.tenancy.models import ApiKey, Environment
from apps.tenancy.selectors import api_key_for_raw

__all__ = [
    "InboxAction",
    "InboxItem",
    "InboxSession",
    "inbox_archive_all",
    "inbox_mark_all_read",
    "inbox_mark_all_seen",
    "inbox_message_action_complete",
    "inbox_message_delete",
    "inbox_message_mark",
    "inbox_message_snooze",
    "inbox_messages_create",
    "inbox_session_open",
    "inbox_snooze_wake",
    "inbox_subscriber_hash",
    "inbox_token_issue",
    "inbox_token_mint",
    "inbox_token_read",
]

_MAX_ID = 2**63 - 1
WEBSOCKET_PATH = "/ws/inbox/"
MAX_SNOOZE = timedelta(days=365)
SNOOZE_WAKE_TASK = "apps.inbox.tasks.inbox_snooze_wake_task"


class InboxAction(StrEnum):
    READ = "read"
    UNREAD = "unread"
    SEEN = "seen"
    ARCHIVE = "archive"
    UNARCHIVE = "unarchive"
    UNSNOOZE = "unsnooze"


@dataclass(frozen=True)
class InboxSession:
    environment: Environment
    subscriber: Subscriber
    token: str
    expires_at: datetime

    @property
    def websocket_url(self) -> str:
        return f"{WEBSOCKET_PATH}?{urlencode({'token': self.token})}"


@dataclass(frozen=True)
class InboxItem:
    """The content of one in-app notification, before its inbox row exists."""

    environment_id: int
    subscriber_id: int
    title: str = ""
    body: str = ""
    action_url: str = ""
    avatar: str = ""
    workflow_key: str = ""
    category_key: str = ""
    data: dict[str, Any] = field(default_factory=dict)
    actions: list[dict[str, Any]] = field(default_factory=list)


def inbox_messages_create(*, items: Sequence[tuple[InboxItem, Any]]) -> list[int]:
    """Put in-app messages in their subscribers' inboxes: each item with the (saved) delivery
    Message it belongs to (anything with its ``pk``). One insert for all of them
    (``apps.core.bulk.rows_insert``: a COPY on PostgreSQL), in the caller's transaction, no model
    instance per row; after it commits, one ``message.created`` frame per row goes to its
    subscriber's open inboxes. Returns the new rows' primary keys."""
    if not items:
        return []
    now = timezone.now()
    rows = [
        {
            "environment_id": item.environment_id,
            "subscriber_id": item.subscriber_id,
            "message_id": message.pk,
            "workflow_key": item.workflow_key,
            "category_key": item.category_key,
            "title": item.title,
            "body": item.body,
            "action_url": item.action_url,
            "avatar": item.avatar,
            "data": item.data,
            "actions": item.actions,
            "seq": inbox_seq_next(),
            "created_at": now,
        }
        for item, message in items
    ]
    pks = rows_insert(InboxMessage, rows)
    tally = Tally()  # in-app messages are sent and delivered by this insert (docs/analytics.md)
    for item, message in items:
        data = getattr(message, "data", None)
        template_key = str(data.get("template") or "")[:100] if isinstance(data, dict) else ""
        for metric in (counters.SENT, counters.DELIVERED):
            tally.add(
                environment_id=item.environment_id,
                at=now,
                metric=metric,
                workflow_key=item.workflow_key,
                category_key=item.category_key,
                channel="in_app",
                template_key=template_key,
            )
    tally.write()
    # Frames only once the rows are committed, and model instances only for those that get one.
    transaction.on_commit(lambda: realtime.publish_rows_created(rows, pks))
    return pks


def inbox_subscriber_hash(*, environment: Environment, subscriber_id: str) -> str:
    """The proof a customer's backend computes: hex HMAC-SHA256(inbox_hmac_secret, subscriber_id)."""
    return subscriber_hash_compute(secret=environment.inbox_hmac_secret, subscriber_id=subscriber_id)


def _unauthorized(message: str) -> ApiError:
    return ApiError(message, code="authentication_failed", status_code=401)


def _forbidden_origin(origin: str) -> ApiError:
    return ApiError(
        "This origin is not in the environment's allowed origins.",
        code="origin_not_allowed",
        status_code=403,
        details={"origin": origin},
    )


def inbox_session_open(
    *,
    publishable_key: str,
    subscriber_id: str,
    subscriber_hash: str,
    origin: str | None = None,
    host: str | None = None,
) -> InboxSession:
    """Verify ``pk_`` key + HMAC proof (and the browser's ``origin`` against the environment's
    allowed origins) and issue a short-lived inbox token.

    A subscriber id the environment has never seen is created bare (as Novu does): the HMAC
    proves the customer's backend vouches for the id, and the widget can then render an empty
    inbox before the first notification instead of failing.
    """
    api_key = api_key_for_raw(raw_key=publishable_key, kind=ApiKey.Kind.PUBLISHABLE)
    if api_key is None:
        raise _unauthorized("The publishable key is invalid or has been revoked.")
    environment = api_key.environment

    expected = inbox_subscriber_hash(environment=environment, subscriber_id=subscriber_id).encode()
    if not hmac.compare_digest(expected, subscriber_hash.strip().lower().encode()):
        raise _unauthorized("The subscriber hash does not match this subscriber id.")

    if not origin_allowed(environment_id=environment.pk, origin=origin, host=host):
        raise _forbidden_origin(origin or "")
    subscriber, _ = subscriber_upsert(environment=environment, subscriber_id=subscriber_id)
    return InboxSession(
        environment=environment,
        subscriber=subscriber,
        token=inbox_token_issue(environment=environment, subscriber=subscriber),
        expires_at=inbox_token_expires_at(),
    )


def inbox_token_mint(*, environment: Environment, subscriber_id: str, ttl_seconds: int) -> InboxSession:
    """A short-lived inbox token minted with the secret key (``POST /api/v1/inbox/tokens``): the
    customer's backend hands it to the widget instead of the HMAC. Unknown ids are created bare."""
    subscriber, _ = subscriber_upsert(environment=environment, subscriber_id=subscriber_id)
    return InboxSession(
        environment=environment,
        subscriber=subscriber,
        token=inbox_token_issue(environment=environment, subscriber=subscriber, ttl_seconds=ttl_seconds),
        expires_at=inbox_token_expires_at(ttl_seconds=ttl_seconds),
    )


def _apply(message: InboxMessage, action: InboxAction, now: datetime) -> list[str]:
    """Set the timestamps ``action`` implies; return the fields that changed."""
    changed: list[str] = []

    def put(field: str, value: datetime | None) -> None:
        if (getattr(message, field) is None) != (value is None):
            setattr(message, field, value)
            changed.append(field)

    if action is InboxAction.READ:
        put("read_at", message.read_at or now)
        put("seen_at", message.seen_at or now)  # reading implies seeing
    elif action is InboxAction.UNREAD:
        put("read_at", None)
    elif action is InboxAction.SEEN:
        put("seen_at", message.seen_at or now)
    elif action is InboxAction.ARCHIVE:
        put("archived_at", message.archived_at or now)
    elif action is InboxAction.UNARCHIVE:
        put("archived_at", None)
    elif action is InboxAction.UNSNOOZE:
        put("snoozed_until", None)
    return changed


def _locked_message(subscriber: SubscriberRef, message_id: int) -> InboxMessage:
    """The subscriber's live (not deleted) message, row-locked; anything else is NotFound."""
    message = (
        InboxMessage.objects.select_for_update(of=("self",))
        .annotate(analytics_template=KeyTextTransform("template", "message__data"))
        .filter(
            pk=message_id,
            subscriber_id=subscriber.pk,
            environment_id=subscriber.environment_id,
            deleted_at__isnull=True,
        )
        .first()
        if isinstance(message_id, int) and 0 < message_id <= _MAX_ID
        else None
    )
    if message is None:
        raise NotFound("No such inbox message.")
    return message


def _save_changed(message: InboxMessage, changed: list[str]) -> None:
    """Stamp a new cursor, save the changed fields and push ``message.updated`` after commit."""
    message.seq = inbox_seq_next()
    message.save(update_fields=[*changed, "seq"])
    transaction.on_commit(lambda: realtime.publish_messages_updated([message]))


def _count_changes(message: InboxMessage, before: dict[str, Any], now: datetime, *, action_completed: bool) -> None:
    """Count what one message's change did (docs/analytics.md): seen and action_completed the first
    time (their timestamps are never cleared); read and archived net: an unread (unarchive) takes its
    count back from the hour the read (archive) was counted in, so toggling changes nothing."""
    tally = Tally()
    dims = Dims(
        environment_id=message.environment_id,
        workflow_key=message.workflow_key,
        category_key=message.category_key,
        channel="in_app",
        template_key=(getattr(message, "analytics_template", None) or "")[:100],
    )
    for name, metric in (("seen_at", counters.SEEN), ("read_at", counters.READ), ("archived_at", counters.ARCHIVED)):
        old, new = before[name], getattr(message, name)
        if old == new:
            continue
        if old is not None:
            tally.add_dims(dims, at=old, metric=metric, value=-1)
        if new is not None:
            tally.add_dims(dims, at=new, metric=metric)
        if metric == counters.READ:
            for at, sign in ((old, -1), (new, 1)):
                if at is not None:
                    seconds = (at - message.created_at).total_seconds()
                    tally.add_dims(
                        dims, at=at, metric=counters.latency_metric(counters.LATENCY_READ, seconds), value=sign
                    )
    if action_completed:
        tally.add_dims(dims, at=now, metric=counters.ACTION_COMPLETED)
    tally.write()


_COUNTED_FIELDS = ("seen_at", "read_at", "archived_at")


def inbox_message_mark(*, subscriber: SubscriberRef, message_id: int, action: InboxAction | str) -> InboxMessage:
    """Mark one of ``subscriber``'s messages; another subscriber's (or environment's) id is NotFound.

    Two queries (select + update; one when nothing changes). After commit a ``message.updated``
    frame with fresh counts goes to the subscriber's group.
    """
    action = InboxAction(action)
    with transaction.atomic():
        message = _locked_message(subscriber, message_id)
        before = {f: getattr(message, f) for f in _COUNTED_FIELDS}
        now = timezone.now()
        changed = _apply(message, action, now)
        if changed:
            _save_changed(message, changed)
            _count_changes(message, before, now, action_completed=False)
    return message


def inbox_message_snooze(*, subscriber: SubscriberRef, message_id: int, until: datetime) -> InboxMessage:
    """Hide a message until ``until`` (in the future, at most a year ahead). It leaves the inbox
    and its counts now; a task scheduled for ``until`` pushes it back to open widgets."""
    now = timezone.now()
    if until <= now:
        raise Unprocessable("Snooze until a time in the future.", code="snooze_in_past", details={"until": until})
    if until - now > MAX_SNOOZE:
        raise Unprocessable("Snooze for at most a year.", code="snooze_too_long", details={"until": until})
    with transaction.atomic():
        message = _locked_message(subscriber, message_id)
        message.snoozed_until = until
        _save_changed(message, ["snoozed_until"])
        message_pk, seq = message.pk, message.seq
        transaction.on_commit(lambda: _schedule_snooze_wake(message_pk, seq, until))
    return message


def _schedule_snooze_wake(message_pk: int, seq: int, until: datetime) -> None:
    if settings.CLARION_TASKS_EAGER:
        return  # inline task runs cannot wait; the list and counts already honour snoozed_until
    from django_q.models import Schedule
    from django_q.tasks import schedule

    schedule(
        SNOOZE_WAKE_TASK,
        message_pk,
        seq,
        name=f"inbox-snooze-{message_pk}-{seq}",
        schedule_type=Schedule.ONCE,
        next_run=until,
        repeats=-1,
    )


def inbox_snooze_wake(*, message_id: int, seq: int) -> bool:
    """The snooze of a message is over: stamp a new cursor and push it back (``message.updated``).
    Does nothing if the message changed since it was snoozed (``seq`` differs). Idempotent."""
    with transaction.atomic():
        message = InboxMessage.objects.select_for_update().filter(pk=message_id, seq=seq).first()
        if message is None or message.snoozed_until is None or message.snoozed_until > timezone.now():
            return False
        message.snoozed_until = None
        _save_changed(message, ["snoozed_until"])
    return True


def inbox_message_action_complete(*, subscriber: SubscriberRef, message_id: int, action_id: str) -> InboxMessage:
    """Mark one action button of a message completed (and the message read). Idempotent: a
    second call keeps the first ``completed_at``. An unknown action id is NotFound."""
    with transaction.atomic():
        message = _locked_message(subscriber, message_id)
        actions: list[dict[str, Any]] = [dict(a) for a in message.actions or [] if isinstance(a, dict)]
        target = next((a for a in actions if a.get("id") == action_id), None)
        if target is None:
            raise NotFound("No such action on this message.", details={"action_id": action_id})
        now = timezone.now()
        before = {f: getattr(message, f) for f in _COUNTED_FIELDS}
        changed = _apply(message, InboxAction.READ, now)
        # The message's first completed action counts (once per message, whichever action it was).
        first_action = not any(a.get("completed_at") for a in actions)
        if not target.get("completed_at"):
            target["completed_at"] = now.isoformat()
            message.actions = actions
            changed.append("actions")
        if changed:
            _save_changed(message, changed)
            _count_changes(message, before, now, action_completed=first_action)
    return message


def inbox_message_delete(*, subscriber: SubscriberRef, message_id: int) -> InboxMessage:
    """Delete a message for good: its content is erased and a tombstone kept (``deleted_at``) so
    open widgets and the change feed learn about it. A second delete is NotFound."""
    with transaction.atomic():
        message = _locked_message(subscriber, message_id)
        message.deleted_at = timezone.now()
        message.title = message.body = message.action_url = message.avatar = ""
        message.data, message.actions, message.tags = {}, [], []
        _save_changed(message, ["deleted_at", "title", "body", "action_url", "avatar", "data", "actions", "tags"])
    return message


def _mark_all(
    *, subscriber: SubscriberRef, field: str, also_seen: bool, action: str, filter: InboxFilter | None = None
) -> int:
    """One UPDATE over the subscriber's matching messages that lack ``field``; every row gets the
    same new cursor, and one ``counts.changed`` frame carries it."""
    now = timezone.now()
    seq = inbox_seq_next()
    values: dict[str, Any] = {field: now, "seq": seq}
    if also_seen:
        values["seen_at"] = Coalesce(F("seen_at"), Value(now, output_field=DateTimeField()))
    scope = filter or InboxFilter()
    with transaction.atomic():
        changed = _update_counting(
            InboxMessage.objects.filter(
                scope.q(now),
                subscriber_id=subscriber.pk,
                environment_id=subscriber.environment_id,
                **{f"{field}__isnull": True},
            ),
            values,
            field=field,
            also_seen=also_seen,
            now=now,
        )
        updated = len(changed)
        if updated:
            environment_id, subscriber_pk = subscriber.environment_id, subscriber.pk
            change = {"action": action, **scope.describe()}
            transaction.on_commit(
                lambda: realtime.publish_counts(
                    environment_id=environment_id, subscriber_pk=subscriber_pk, cursor=seq, change=change
                )
            )
    return updated


_METRIC_OF = {"read_at": counters.READ, "seen_at": counters.SEEN, "archived_at": counters.ARCHIVED}


def _update_counting(
    queryset: Any, values: dict[str, Any], *, field: str, also_seen: bool, now: datetime
) -> list[tuple[Any, ...]]:
    """The bulk UPDATE of ``_mark_all`` as one ``UPDATE … RETURNING`` of what analytics counts each
    changed row by (its template key read from its delivery message in the same statement), then
    one INSERT of the counts. Returns the changed rows."""
    table = connection.ops.quote_name(InboxMessage._meta.db_table)
    messages = connection.ops.quote_name(Message._meta.db_table)
    # Our own UPDATE of the rows the filter selects (the ORM's update has no RETURNING).
    selected = queryset.values("pk").query
    select_sql, select_params = selected.get_compiler(connection=connection).as_sql()
    assignments: list[str] = []
    params: list[Any] = []
    for column, value in values.items():
        if column == "seen_at" and not isinstance(value, datetime):
            assignments.append("seen_at = COALESCE(seen_at, %s)")
            params.append(connection.ops.adapt_datetimefield_value(now))
        else:
            assignments.append(f"{column} = %s")
            params.append(connection.ops.adapt_datetimefield_value(value) if isinstance(value, datetime) else value)
    template = "d.data ->> 'template'" if connection.vendor == "postgresql" else "json_extract(d.data, '$.template')"
    sql = (
        f"UPDATE {table} SET {', '.join(assignments)} WHERE id IN ({select_sql}) AND {field} IS NULL "
        f"RETURNING environment_id, workflow_key, category_key, created_at, seen_at, "
        f"(SELECT {template} FROM {messages} d WHERE d.id = {table}.message_id)"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, [*params, *select_params])
        rows = cursor.fetchall()
    tally = Tally()
    for environment_id, workflow_key, category_key, created_at, seen_at, template_key in rows:
        dims = Dims(
            environment_id=environment_id,
            workflow_key=workflow_key,
            category_key=category_key,
            channel="in_app",
            template_key=str(template_key or "")[:100],
        )
        tally.add_dims(dims, at=now, metric=_METRIC_OF[field])
        if field == "read_at":
            created = _as_datetime(created_at)
            seconds = (now - created).total_seconds() if created is not None else 0.0
            tally.add_dims(dims, at=now, metric=counters.latency_metric(counters.LATENCY_READ, seconds))
        if also_seen and _as_datetime(seen_at) == now:  # it was unseen: this statement set it
            tally.add_dims(dims, at=now, metric=counters.SEEN)
    tally.write()
    return rows


def _as_datetime(value: Any) -> datetime | None:
    """A timestamp as a raw cursor returns it (a string on SQLite), aware in UTC."""
    if value is None:
        return None
    if isinstance(value, datetime):
        return value if timezone.is_aware(value) else value.replace(tzinfo=UTC)
    parsed = datetime.fromisoformat(str(value))
    return parsed if timezone.is_aware(parsed) else parsed.replace(tzinfo=UTC)


def inbox_mark_all_read(*, subscriber: SubscriberRef, filter: InboxFilter | None = None) -> int:
    """Mark every unread message of ``subscriber`` (in the inbox, optionally narrowed by category /
    tags) read and seen. One query; pushes ``counts.changed``."""
    return _mark_all(subscriber=subscriber, field="read_at", also_seen=True, action="read-all", filter=filter)


def inbox_mark_all_seen(*, subscriber: SubscriberRef, filter: InboxFilter | None = None) -> int:
    """Mark every unseen message of ``subscriber`` seen. One query; pushes ``counts.changed``."""
    return _mark_all(subscriber=subscriber, field="seen_at", also_seen=False, action="seen-all", filter=filter)


def inbox_archive_all(*, subscriber: SubscriberRef, filter: InboxFilter | None = None) -> int:
    """Archive every message of the inbox (optionally only read ones, or one category / tags).
    One query; pushes ``counts.changed``."""
    return _mark_all(subscriber=subscriber, field="archived_at", also_seen=False, action="archive-all", filter=filter)
