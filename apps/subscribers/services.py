"""Writes for subscribers and topics. Callers validate input (``SubscriberInputSerializer``)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from django.db import IntegrityError, transaction

from apps.core.errors import ApiError
from apps.subscribers.models import Device, Subscriber, Topic, TopicSubscription
from apps.tenancy.models import Environment

MAX_ID_LENGTH = Subscriber._meta.get_field("subscriber_id").max_length or 200

# The profile fields a caller may set; ``subscriber_id`` and ``environment`` identify the row.
SUBSCRIBER_FIELDS: tuple[str, ...] = (
    "email",
    "phone",
    "first_name",
    "last_name",
    "avatar",
    "locale",
    "timezone",
    "data",
)


def _check_fields(fields: Iterable[str]) -> None:
    unknown = sorted(set(fields) - set(SUBSCRIBER_FIELDS))
    if unknown:
        raise ApiError(
            f"Unknown subscriber field(s): {', '.join(unknown)}.",
            code="validation_error",
            details={"fields": unknown, "allowed": list(SUBSCRIBER_FIELDS)},
        )


def _clean_values(fields: dict[str, Any]) -> dict[str, Any]:
    """``None`` clears a field: blank for text, ``{}`` for data."""
    return {name: (({} if name == "data" else "") if value is None else value) for name, value in fields.items()}


def _dedupe_ids(subscriber_ids: Iterable[str]) -> list[str]:
    ids = list(dict.fromkeys(subscriber_ids))
    bad = [sid for sid in ids if not isinstance(sid, str) or not sid or len(sid) > MAX_ID_LENGTH]
    if bad:
        raise ApiError(
            f"Subscriber ids must be non-empty strings of at most {MAX_ID_LENGTH} characters.",
            code="validation_error",
            details={"subscriber_ids": [str(sid)[:50] for sid in bad[:10]]},
        )
    return ids


def subscriber_upsert(*, environment: Environment, subscriber_id: str, **fields: Any) -> tuple[Subscriber, bool]:
    """Create the subscriber or change only the fields given (``data`` is replaced, not merged).

    Returns ``(subscriber, created)``. Safe under concurrent upserts of the same id.
    """
    _check_fields(fields)
    fields = _clean_values(fields)
    subscriber = Subscriber.objects.filter(environment=environment, subscriber_id=subscriber_id).first()
    if subscriber is None:
        try:
            with transaction.atomic():
                return (
                    Subscriber.objects.create(environment=environment, subscriber_id=subscriber_id, **fields),
                    True,
                )
        except IntegrityError:
            # Someone else created it between our read and our insert: update theirs.
            subscriber = Subscriber.objects.get(environment=environment, subscriber_id=subscriber_id)
    changed = [name for name, value in fields.items() if getattr(subscriber, name) != value]
    if changed:
        for name in changed:
            setattr(subscriber, name, fields[name])
        subscriber.save(update_fields=[*changed, "updated_at"])
    return subscriber, False


def subscriber_bulk_upsert(*, environment: Environment, items: list[dict[str, Any]]) -> list[Subscriber]:
    """Upsert many subscribers in a few queries: one INSERT … ON CONFLICT per distinct field set.

    Each item is ``{"subscriber_id": ..., <fields>}``; only the fields present are written for
    that item. Items with the same ``subscriber_id`` are merged in order (a later value wins).
    Returns the subscribers in first-seen order, freshly read from the database.
    """
    merged: dict[str, dict[str, Any]] = {}
    for item in items:
        item = dict(item)
        subscriber_id = item.pop("subscriber_id", None)
        if not isinstance(subscriber_id, str) or not subscriber_id or len(subscriber_id) > MAX_ID_LENGTH:
            raise ApiError(
                f"Every item needs a subscriber_id of 1-{MAX_ID_LENGTH} characters.", code="validation_error"
            )
        _check_fields(item)
        merged.setdefault(subscriber_id, {}).update(_clean_values(item))
    if not merged:
        return []

    groups: dict[tuple[str, ...], list[Subscriber]] = {}
    for subscriber_id, fields in merged.items():
        key = tuple(sorted(fields))
        groups.setdefault(key, []).append(Subscriber(environment=environment, subscriber_id=subscriber_id, **fields))

    with transaction.atomic():
        for field_names, objs in groups.items():
            if field_names:
                Subscriber.objects.bulk_create(
                    objs,
                    update_conflicts=True,
                    unique_fields=["environment", "subscriber_id"],
                    update_fields=[*field_names, "updated_at"],
                )
            else:
                Subscriber.objects.bulk_create(objs, ignore_conflicts=True)
        by_id = {
            s.subscriber_id: s
            for s in Subscriber.objects.filter(environment=environment, subscriber_id__in=list(merged))
        }
    return [by_id[sid] for sid in merged if sid in by_id]


def subscribers_ensure(*, environment: Environment, subscriber_ids: list[str]) -> None:
    """Make sure a bare subscriber exists for every id (existing rows are left untouched).

    One SELECT when they all exist; otherwise one more bulk INSERT that ignores conflicts, so
    concurrent callers never fail.
    """
    ids = _dedupe_ids(subscriber_ids)
    if not ids:
        return
    existing = set(
        Subscriber.objects.filter(environment=environment, subscriber_id__in=ids).values_list(
            "subscriber_id", flat=True
        )
    )
    missing = [sid for sid in ids if sid not in existing]
    if missing:
        Subscriber.objects.bulk_create(
            [Subscriber(environment=environment, subscriber_id=sid) for sid in missing], ignore_conflicts=True
        )


def subscriber_delete(*, subscriber: Subscriber) -> None:
    """Delete the subscriber with its preferences, topic memberships, runs and messages. Its inbox
    sessions end with the row (apps.inbox.auth); its open sockets are closed after commit."""
    from apps.inbox.realtime import publish_sessions_revoked  # inbox builds on subscribers

    environment_id, subscriber_pk = subscriber.environment_id, subscriber.pk
    subscriber.delete()
    transaction.on_commit(
        lambda: publish_sessions_revoked(
            environment_id=environment_id, subscriber_pk=subscriber_pk, reason="subscriber_deleted"
        )
    )


def topic_upsert(*, environment: Environment, key: str, name: str | None = None) -> tuple[Topic, bool]:
    """Create the topic or rename it (``name=None`` leaves the name alone). Returns ``(topic, created)``."""
    topic = Topic.objects.filter(environment=environment, key=key).first()
    if topic is None:
        try:
            with transaction.atomic():
                return Topic.objects.create(environment=environment, key=key, name=name or ""), True
        except IntegrityError:
            topic = Topic.objects.get(environment=environment, key=key)
    if name is not None and topic.name != name:
        topic.name = name
        topic.save(update_fields=["name"])
    return topic, False


def topic_subscribers_add(*, topic: Topic, subscriber_ids: list[str]) -> list[str]:
    """Subscribe these ids to the topic, creating bare subscribers for unknown ids.

    Idempotent. Returns the ids that were not members before (in request order). A constant
    number of queries whatever the number of ids.
    """
    ids = _dedupe_ids(subscriber_ids)
    if not ids:
        return []
    with transaction.atomic():
        subscribers_ensure(environment=topic.environment, subscriber_ids=ids)
        pks = dict(
            Subscriber.objects.filter(environment_id=topic.environment_id, subscriber_id__in=ids).values_list(
                "subscriber_id", "pk"
            )
        )
        already = set(
            TopicSubscription.objects.filter(topic=topic, subscriber_id__in=pks.values()).values_list(
                "subscriber_id", flat=True
            )
        )
        added = [sid for sid in ids if pks[sid] not in already]
        TopicSubscription.objects.bulk_create(
            [TopicSubscription(topic=topic, subscriber_id=pks[sid]) for sid in added], ignore_conflicts=True
        )
    return added


def topic_subscribers_remove(*, topic: Topic, subscriber_ids: list[str]) -> int:
    """Unsubscribe these ids from the topic (unknown ids and non-members are ignored).

    Returns how many memberships were removed. One DELETE.
    """
    ids = _dedupe_ids(subscriber_ids)
    if not ids:
        return 0
    deleted, _ = TopicSubscription.objects.filter(
        topic=topic,
        subscriber__environment_id=topic.environment_id,
        subscriber__subscriber_id__in=ids,
    ).delete()
    return deleted


def topic_delete(*, topic: Topic) -> None:
    """Delete the topic and its memberships (the subscribers stay)."""
    topic.delete()


def device_register(
    *, subscriber: Subscriber, provider: str, token: str, keys: dict[str, Any] | None = None, name: str = ""
) -> tuple[Device, bool]:
    """Register a push token or chat webhook for the subscriber. Returns ``(device, created)``.

    Idempotent: the same token again updates its keys and name. A token registered to another
    subscriber of the environment moves to this one (a shared device whose user changed).
    """
    defaults = {"subscriber": subscriber, "keys": keys or {}, "name": name}
    with transaction.atomic():
        device, created = Device.objects.select_for_update().get_or_create(
            environment_id=subscriber.environment_id, provider=provider, token=token, defaults=defaults
        )
        if not created:
            changed = [field for field, value in defaults.items() if getattr(device, field) != value]
            if changed:
                for field in changed:
                    setattr(device, field, defaults[field])
                device.save(update_fields=[*changed, "updated_at"])
    return device, created


def device_delete(*, device: Device) -> None:
    device.delete()


def devices_remove(*, device_ids: Iterable[int]) -> int:
    """Delete devices the push service or chat service reported as gone. Returns how many."""
    ids = list(device_ids)
    if not ids:
        return 0
    deleted, _ = Device.objects.filter(pk__in=ids).delete()
    return deleted
