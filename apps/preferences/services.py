"""Writes for categories and subscriber preferences."""

from __future__ import annotations

from datetime import time
from typing import Any

from django.db import IntegrityError, transaction
from django.utils import timezone

from apps.core.errors import ApiError, Unprocessable
from apps.core.schedule import DAY_NAMES, is_valid_zone
from apps.preferences.models import SUBSCRIBER_CHANNELS, Category, Preference, QuietHours
from apps.subscribers.models import Subscriber
from apps.tenancy.models import Environment


def _check_channels(channels: Any, *, where: str) -> None:
    if not isinstance(channels, dict):
        raise ApiError(f"{where} must be an object of channel -> true/false.", code="validation_error")
    unknown = sorted(set(channels) - set(SUBSCRIBER_CHANNELS))
    if unknown:
        raise ApiError(
            f"Unknown channel(s) in {where}: {', '.join(unknown)}. Channels are: {', '.join(SUBSCRIBER_CHANNELS)}.",
            code="unknown_channel",
            details={"unknown": unknown, "channels": SUBSCRIBER_CHANNELS},
        )
    not_bool = sorted(channel for channel, value in channels.items() if not isinstance(value, bool))
    if not_bool:
        raise ApiError(
            f"Channel values in {where} must be true or false: {', '.join(not_bool)}.", code="validation_error"
        )


def category_upsert(
    *,
    environment: Environment,
    key: str,
    name: str,
    description: str = "",
    critical: bool = False,
    default_channels: dict[str, bool] | None = None,
    order: int = 0,
) -> tuple[Category, bool]:
    """Create the category or replace all its attributes. Returns ``(category, created)``."""
    default_channels = dict(default_channels or {})
    _check_channels(default_channels, where="default_channels")
    values = {
        "name": name,
        "description": description,
        "critical": critical,
        "default_channels": default_channels,
        "order": order,
    }
    category = Category.objects.filter(environment=environment, key=key).first()
    if category is None:
        try:
            with transaction.atomic():
                return Category.objects.create(environment=environment, key=key, **values), True
        except IntegrityError:
            category = Category.objects.get(environment=environment, key=key)
    changed = [field for field, value in values.items() if getattr(category, field) != value]
    if changed:
        for field in changed:
            setattr(category, field, values[field])
        category.save(update_fields=changed)
    return category, False


def category_delete(*, category: Category) -> None:
    """Delete the category and the preferences stored for it. Workflows that used it lose their category."""
    category.delete()


def preferences_update(
    *,
    subscriber: Subscriber,
    channels: dict[str, bool] | None = None,
    categories: dict[str, dict[str, bool]] | None = None,
) -> None:
    """Store a subscriber's choices: global per-channel switches and per-category channel switches.

    Only the channels named are written; others keep their current value. Raises ``ApiError``
    (400, ``unknown_channel``) for a channel Clarion doesn't know, ``Unprocessable`` (422,
    ``unknown_category``) for a category key this environment doesn't have, and ``Unprocessable`` (422,
    ``critical_category``) when turning off a channel of a critical category.
    """
    channels = channels or {}
    categories = categories or {}
    _check_channels(channels, where="channels")
    if not isinstance(categories, dict):
        raise ApiError("categories must be an object of category key -> channels.", code="validation_error")
    for key, choices in categories.items():
        _check_channels(choices, where=f"categories.{key}")

    by_key: dict[str, Category] = {}
    if categories:
        found = Category.objects.filter(environment_id=subscriber.environment_id, key__in=list(categories))
        by_key = {category.key: category for category in found}
        missing = sorted(set(categories) - set(by_key))
        if missing:
            raise Unprocessable(
                f"Unknown category key(s): {', '.join(missing)}. Create them with PUT /categories/{{key}}.",
                code="unknown_category",
                details={"categories": missing},
            )
        for key, choices in categories.items():
            turned_off = sorted(channel for channel, enabled in choices.items() if not enabled)
            if by_key[key].critical and turned_off:
                raise Unprocessable(
                    f"Category '{key}' is critical: its messages cannot be turned off.",
                    code="critical_category",
                    details={"category": key, "channels": turned_off},
                )

    wanted: dict[tuple[int | None, str], bool] = {(None, channel): enabled for channel, enabled in channels.items()}
    for key, choices in categories.items():
        for channel, enabled in choices.items():
            wanted[(by_key[key].pk, channel)] = enabled
    if not wanted:
        return
    try:
        _write_preferences(subscriber, wanted)
    except IntegrityError:
        # A concurrent update created one of the rows first: now it exists, so this pass updates it.
        _write_preferences(subscriber, wanted)


def _write_preferences(subscriber: Subscriber, wanted: dict[tuple[int | None, str], bool]) -> None:
    with transaction.atomic():
        existing = {
            (p.category_id, p.channel): p
            for p in Preference.objects.select_for_update().filter(
                subscriber=subscriber, channel__in={channel for _, channel in wanted}
            )
        }
        to_update: list[Preference] = []
        to_create: list[Preference] = []
        now = timezone.now()
        for (category_pk, channel), enabled in wanted.items():
            row = existing.get((category_pk, channel))
            if row is None:
                to_create.append(
                    Preference(
                        environment_id=subscriber.environment_id,
                        subscriber=subscriber,
                        category_id=category_pk,
                        channel=channel,
                        enabled=enabled,
                    )
                )
            elif row.enabled != enabled:
                row.enabled = enabled
                row.updated_at = now
                to_update.append(row)
        if to_update:
            Preference.objects.bulk_update(to_update, ["enabled", "updated_at"])
        if to_create:
            Preference.objects.bulk_create(to_create)


@transaction.atomic
def quiet_hours_set(
    *,
    subscriber: Subscriber,
    start: time,
    end: time,
    timezone: str = "",
    days: list[str] | None = None,
    channels: list[str] | None = None,
) -> QuietHours:
    """Set (or replace) a subscriber's quiet hours. Empty ``channels``: every channel but in-app."""
    errors: dict[str, str] = {}
    if start == end:
        errors["end"] = "must differ from start"
    if timezone and not is_valid_zone(timezone):
        errors["timezone"] = "must be an IANA timezone such as 'Europe/Paris'"
    unknown_days = sorted(set(days or []) - set(DAY_NAMES))
    if unknown_days:
        errors["days"] = f"unknown day(s) {unknown_days}; use {', '.join(DAY_NAMES)}"
    unknown_channels = sorted(set(channels or []) - set(SUBSCRIBER_CHANNELS))
    if unknown_channels:
        errors["channels"] = f"unknown channel(s) {unknown_channels}; use {', '.join(SUBSCRIBER_CHANNELS)}"
    if errors:
        raise Unprocessable("These quiet hours cannot be used.", code="invalid_quiet_hours", details=errors)
    quiet, _ = QuietHours.objects.update_or_create(
        subscriber=subscriber,
        defaults={
            "environment_id": subscriber.environment_id,
            "start": start,
            "end": end,
            "timezone": timezone,
            "days": sorted(set(days or []), key=DAY_NAMES.index),
            "channels": [c for c in SUBSCRIBER_CHANNELS if c in set(channels or [])],
        },
    )
    return quiet


def quiet_hours_clear(*, subscriber: Subscriber) -> None:
    QuietHours.objects.filter(subscriber=subscriber).delete()
