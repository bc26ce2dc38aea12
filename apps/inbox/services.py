"""Inbox writes: opening a subscriber session and marking messages.

Every write runs in a transaction and pushes its realtime frame only after commit, so a
client never sees a frame for a change that was rolled back.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from urllib.parse import urlencode

from django.db import transaction
from django.db.models import DateTimeField, F, Value
from django.db.models.functions import Coalesce
from django.utils import timezone

from apps.core.errors import ApiError, NotFound
from apps.inbox import realtime
from apps.inbox.auth import (
    SubscriberRef,
    inbox_token_expires_at,
    inbox_token_issue,
    inbox_token_read,
    subscriber_hash_compute,
)
from apps.inbox.models import InboxMessage
from apps.subscribers.models import Subscriber
from apps.subscribers.services import subscriber_upsert
from apps.tenancy.models import ApiKey, Environment
from apps.tenancy.selectors import api_key_for_raw

__all__ = [
    "InboxAction",
    "InboxSession",
    "inbox_mark_all_read",
    "inbox_mark_all_seen",
    "inbox_message_mark",
    "inbox_session_open",
    "inbox_subscriber_hash",
    "inbox_token_issue",
    "inbox_token_read",
]

_MAX_ID = 2**63 - 1
WEBSOCKET_PATH = "/ws/inbox/"


class InboxAction(StrEnum):
    READ = "read"
    UNREAD = "unread"
    SEEN = "seen"
    ARCHIVE = "archive"
    UNARCHIVE = "unarchive"


@dataclass(frozen=True)
class InboxSession:
    environment: Environment
    subscriber: Subscriber
    token: str
    expires_at: datetime

    @property
    def websocket_url(self) -> str:
        return f"{WEBSOCKET_PATH}?{urlencode({'token': self.token})}"


def inbox_subscriber_hash(*, environment: Environment, subscriber_id: str) -> str:
    """The proof a customer's backend computes: hex HMAC-SHA256(inbox_hmac_secret, subscriber_id)."""
    return subscriber_hash_compute(secret=environment.inbox_hmac_secret, subscriber_id=subscriber_id)


def _unauthorized(message: str) -> ApiError:
    return ApiError(message, code="authentication_failed", status_code=401)


def inbox_session_open(*, publishable_key: str, subscriber_id: str, subscriber_hash: str) -> InboxSession:
    """Verify ``pk_`` key + HMAC proof and issue a short-lived inbox token.

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

    # TODO(origin check, later issue): compare the request Origin with environment.allowed_origins.
    subscriber, _ = subscriber_upsert(environment=environment, subscriber_id=subscriber_id)
    return InboxSession(
        environment=environment,
        subscriber=subscriber,
        token=inbox_token_issue(environment=environment, subscriber=subscriber),
        expires_at=inbox_token_expires_at(),
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
    return changed


def inbox_message_mark(*, subscriber: SubscriberRef, message_id: int, action: InboxAction | str) -> InboxMessage:
    """Mark one of ``subscriber``'s messages; another subscriber's (or environment's) id is NotFound.

    Two queries (select + update; one when nothing changes). After commit a ``message.updated``
    frame with fresh counts goes to the subscriber's group.
    """
    action = InboxAction(action)
    with transaction.atomic():
        message = (
            InboxMessage.objects.select_for_update()
            .filter(pk=message_id, subscriber_id=subscriber.pk, environment_id=subscriber.environment_id)
            .first()
            if 0 < message_id <= _MAX_ID
            else None
        )
        if message is None:
            raise NotFound("No such inbox message.")
        changed = _apply(message, action, timezone.now())
        if changed:
            message.save(update_fields=changed)
            transaction.on_commit(lambda: realtime.publish_messages_updated([message]))
    return message


def _mark_all(*, subscriber: SubscriberRef, field: str, also_seen: bool) -> int:
    now = timezone.now()
    values: dict = {field: now}
    if also_seen:
        values["seen_at"] = Coalesce(F("seen_at"), Value(now, output_field=DateTimeField()))
    with transaction.atomic():
        updated = InboxMessage.objects.filter(
            subscriber_id=subscriber.pk, environment_id=subscriber.environment_id, **{f"{field}__isnull": True}
        ).update(**values)
        if updated:
            environment_id, subscriber_pk = subscriber.environment_id, subscriber.pk
            transaction.on_commit(
                lambda: realtime.publish_counts(environment_id=environment_id, subscriber_pk=subscriber_pk)
            )
    return updated


def inbox_mark_all_read(*, subscriber: SubscriberRef) -> int:
    """Mark every unread message of ``subscriber`` read (and seen). One query; pushes ``counts.changed``."""
    return _mark_all(subscriber=subscriber, field="read_at", also_seen=True)


def inbox_mark_all_seen(*, subscriber: SubscriberRef) -> int:
    """Mark every unseen message of ``subscriber`` seen. One query; pushes ``counts.changed``."""
    return _mark_all(subscriber=subscriber, field="seen_at", also_seen=False)
