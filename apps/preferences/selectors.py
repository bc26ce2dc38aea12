"""Preference resolution: one function used by the engine, the API and (later) the hosted page."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from django.db.models import Q, QuerySet

from apps.core.errors import NotFound
from apps.preferences.models import SUBSCRIBER_CHANNELS, Category, Preference
from apps.subscribers.models import Subscriber
from apps.tenancy.models import Environment


@dataclass(frozen=True)
class Resolution:
    allowed: bool
    reason: str  # machine-readable: critical, default, category_default, subscriber_category, subscriber_channel
    detail: dict[str, Any] = field(default_factory=dict)


def resolve_preferences(
    *,
    environment: Environment | int,
    subscriber_ids: Iterable[int],
    category: Category | None,
    channels: Iterable[str],
) -> dict[int, dict[str, Resolution]]:
    """For each subscriber pk and channel: may a message of ``category`` be sent?

    Order: a critical category always sends; a global per-channel opt-out wins next; then the
    subscriber's choice for that category and channel; then the category's default; else on.
    One query for any number of subscribers.
    """
    subscriber_ids = list(subscriber_ids)
    channels = list(channels)
    choices: dict[int, dict[tuple[int | None, str], bool]] = {pk: {} for pk in subscriber_ids}
    if category is None or not category.critical:
        rows = Preference.objects.filter(
            environment=environment, subscriber_id__in=subscriber_ids, channel__in=channels
        ).values_list("subscriber_id", "category_id", "channel", "enabled")
        if category is None:
            rows = rows.filter(category__isnull=True)
        else:
            rows = rows.filter(Q(category__isnull=True) | Q(category=category))
        for subscriber_pk, category_pk, channel, enabled in rows:
            choices[subscriber_pk][(category_pk, channel)] = enabled

    result: dict[int, dict[str, Resolution]] = {}
    for pk in subscriber_ids:
        per_channel: dict[str, Resolution] = {}
        for channel in channels:
            per_channel[channel] = _resolve_one(category, channel, choices.get(pk, {}))
        result[pk] = per_channel
    return result


def _resolve_one(category: Category | None, channel: str, choices: dict[tuple[int | None, str], bool]) -> Resolution:
    category_key = category.key if category else None
    detail: dict[str, Any] = {"channel": channel, "category": category_key}
    if category is not None and category.critical:
        return Resolution(True, "critical", detail)
    global_choice = choices.get((None, channel))
    if global_choice is False:
        return Resolution(False, "subscriber_channel", detail)
    if category is not None:
        category_choice = choices.get((category.pk, channel))
        if category_choice is not None:
            return Resolution(category_choice, "subscriber_category", detail)
        if not category.default_for(channel):
            return Resolution(False, "category_default", detail)
        return Resolution(True, "category_default", detail)
    return Resolution(True, "default", detail)


def subscriber_preferences(*, subscriber: Subscriber) -> dict[str, Any]:
    """The full picture for one subscriber: global channels and every category × channel."""
    rows = list(Preference.objects.filter(subscriber=subscriber).values_list("category_id", "channel", "enabled"))
    global_choices = {channel: enabled for category_pk, channel, enabled in rows if category_pk is None}
    by_category: dict[int, dict[str, bool]] = {}
    for category_pk, channel, enabled in rows:
        if category_pk is not None:
            by_category.setdefault(category_pk, {})[channel] = enabled
    categories = []
    for category in Category.objects.filter(environment_id=subscriber.environment_id).order_by("order", "key"):
        channels = {}
        for channel in SUBSCRIBER_CHANNELS:
            choice = by_category.get(category.pk, {})
            resolution = _resolve_one(
                category,
                channel,
                {(None, c): e for c, e in global_choices.items()} | {(category.pk, c): e for c, e in choice.items()},
            )
            channels[channel] = resolution.allowed
        categories.append(
            {
                "key": category.key,
                "name": category.name,
                "description": category.description,
                "critical": category.critical,
                "channels": channels,
            }
        )
    return {
        "channels": {channel: global_choices.get(channel, True) for channel in SUBSCRIBER_CHANNELS},
        "categories": categories,
    }


def category_get(*, environment: Environment, key: str) -> Category:
    """The category with this key in this environment, or ``NotFound`` (404)."""
    category = Category.objects.filter(environment=environment, key=key).first()
    if category is None:
        raise NotFound(f"Category '{key}' was not found.", details={"category": key})
    return category


def category_list(*, environment: Environment) -> QuerySet[Category]:
    return Category.objects.filter(environment=environment)
