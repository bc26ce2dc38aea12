"""Reads for subscribers and topics, always scoped to one environment."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from django.db.models import QuerySet

from apps.core.errors import NotFound
from apps.subscribers.models import Device, Subscriber, Topic, TopicSubscription
from apps.tenancy.models import Environment


def subscriber_get(*, environment: Environment, subscriber_id: str) -> Subscriber:
    """The subscriber with this id in this environment, or ``NotFound`` (404)."""
    subscriber = Subscriber.objects.filter(environment=environment, subscriber_id=subscriber_id).first()
    if subscriber is None:
        raise NotFound(f"Subscriber '{subscriber_id}' was not found.", details={"subscriber_id": subscriber_id})
    return subscriber


def subscriber_list(*, environment: Environment, filters: Mapping[str, Any] | None = None) -> QuerySet[Subscriber]:
    """Subscribers of the environment. Filters: ``email`` (case-insensitive exact match)."""
    filters = filters or {}
    queryset = Subscriber.objects.filter(environment=environment)
    email = filters.get("email")
    if email:
        queryset = queryset.filter(email__iexact=email)
    return queryset


def topic_get(*, environment: Environment, key: str) -> Topic:
    """The topic with this key in this environment, or ``NotFound`` (404)."""
    topic = Topic.objects.filter(environment=environment, key=key).first()
    if topic is None:
        raise NotFound(f"Topic '{key}' was not found.", details={"topic": key})
    return topic


def topic_list(*, environment: Environment) -> QuerySet[Topic]:
    return Topic.objects.filter(environment=environment)


def topic_subscribers(*, topic: Topic) -> QuerySet[Subscriber]:
    """The members of a topic, as a queryset (paginate it; never evaluate it whole)."""
    return Subscriber.objects.filter(environment_id=topic.environment_id, topic_subscriptions__topic=topic)


def topic_subscriber_ids_page(*, topic: Topic, after_pk: int, limit: int) -> list[int]:
    """Keyset page of member subscriber pks, ascending: the next ``limit`` pks greater than ``after_pk``.

    Start with ``after_pk=0`` and pass the last pk of each page to get the next; an empty or
    short page means the end. Walks the (topic, subscriber) unique index, so each page costs the
    same however large the topic is.
    """
    return list(
        TopicSubscription.objects.filter(topic=topic, subscriber_id__gt=after_pk)
        .order_by("subscriber_id")
        .values_list("subscriber_id", flat=True)[:limit]
    )


def devices_for(*, subscriber_id: int, providers: Sequence[str]) -> list[Device]:
    """The subscriber's devices (push tokens, chat webhooks) of these providers, oldest first."""
    return list(Device.objects.filter(subscriber_id=subscriber_id, provider__in=list(providers)).order_by("id"))


def devices_for_subscribers(*, subscriber_ids: Sequence[int], providers: Sequence[str]) -> dict[int, list[Device]]:
    """``devices_for`` for many subscribers in one query: {subscriber id: devices, oldest first}."""
    found: dict[int, list[Device]] = {}
    for device in Device.objects.filter(subscriber_id__in=list(subscriber_ids), provider__in=list(providers)).order_by(
        "id"
    ):
        found.setdefault(device.subscriber_id, []).append(device)
    return found


def device_list(*, subscriber: Subscriber) -> QuerySet[Device]:
    return Device.objects.filter(subscriber=subscriber).order_by("id")


def device_get(*, subscriber: Subscriber, device_id: int) -> Device:
    device = Device.objects.filter(subscriber=subscriber, pk=device_id).first()
    if device is None:
        raise NotFound(f"Device {device_id} was not found.", details={"device_id": device_id})
    return device
