"""Preference resolution: one function used by the engine, the API and the hosted page."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from django.db.models import Q, QuerySet

from apps.core.bulk import in_array
from apps.core.errors import NotFound
from apps.core.schedule import ScheduleError, parse_schedule
from apps.preferences.models import (
    ALL_CHANNELS,
    FREQUENCY_DAILY,
    FREQUENCY_INSTANT,
    FREQUENCY_WEEKLY,
    SUBSCRIBER_CHANNELS,
    Category,
    CategoryFrequency,
    Preference,
    PreferenceChange,
    QuietHours,
    WorkflowPreference,
)
from apps.subscribers.models import Subscriber
from apps.tenancy.models import Environment


@dataclass(frozen=True)
class Resolution:
    allowed: bool
    # machine-readable: critical, unsubscribed, subscriber_channel, subscriber_category,
    # workflow_default, category_default, default
    reason: str
    detail: dict[str, Any] = field(default_factory=dict)


# (category pk or None, channel) -> enabled; (None, ALL_CHANNELS) False = unsubscribed from everything
Choices = dict[tuple[int | None, str], bool]


def resolve_preferences(
    *,
    environment: Environment | int,
    subscriber_ids: Iterable[int],
    category: Category | None,
    channels: Iterable[str],
    workflow_defaults: Mapping[str, bool] | None = None,
) -> dict[int, dict[str, Resolution]]:
    """For each subscriber pk and channel: may a message of ``category`` be sent?

    Order, first match wins:

    1. a critical category always sends (``critical``);
    2. "unsubscribed from everything non-critical" stops every subscriber channel (``unsubscribed``);
    3. a global per-channel opt-out (``subscriber_channel``);
    4. the subscriber's choice for this category and channel (``subscriber_category``);
    5. the workflow's own channel default, when ``workflow_defaults`` (channel → on, as
       ``workflow_channel_defaults`` reads them; the caller passes them in) has one
       (``workflow_default``);
    6. the category's default (``category_default``); without a category, on (``default``).

    One query for any number of subscribers; none at all for a critical category.
    """
    subscriber_ids = list(subscriber_ids)
    channels = list(channels)
    choices: dict[int, Choices] = {pk: {} for pk in subscriber_ids}
    critical = category is not None and category.critical
    if not critical:
        wanted_channels = [*channels, ALL_CHANNELS]
        rows = Preference.objects.filter(
            in_array("subscriber_id", subscriber_ids), environment=environment, channel__in=wanted_channels
        ).values_list("subscriber_id", "category_id", "channel", "enabled")
        if category is None:
            rows = rows.filter(category__isnull=True)
        else:
            rows = rows.filter(Q(category__isnull=True) | Q(category=category))
        if subscriber_ids:
            for subscriber_pk, category_pk, channel, enabled in rows:
                choices[subscriber_pk][(category_pk, channel)] = enabled

    result: dict[int, dict[str, Resolution]] = {}
    for pk in subscriber_ids:
        result[pk] = {
            channel: _resolve_one(category, channel, choices.get(pk, {}), workflow_defaults) for channel in channels
        }
    return result


@dataclass(frozen=True)
class PreferenceRow:
    """One row of a subscriber's effective preferences: a category (None: messages without one)."""

    category: Category | None
    resolutions: dict[str, Resolution]  # channel -> allowed, and the rule that decides it


def subscriber_preference_table(*, subscriber: Subscriber, channels: Iterable[str]) -> list[PreferenceRow]:
    """The effective preference per category and channel for one subscriber (the operator console):
    the rule of ``resolve_preferences`` (``_resolve_one``) for every category of the environment at
    once, without a workflow's own channel defaults. Two queries, whatever the number of categories."""
    channels = list(channels)
    choices: Choices = {
        (category_pk, channel): enabled
        for category_pk, channel, enabled in Preference.objects.filter(
            environment_id=subscriber.environment_id, subscriber=subscriber, channel__in=[*channels, ALL_CHANNELS]
        ).values_list("category_id", "channel", "enabled")
    }
    categories: list[Category | None] = [None]
    categories.extend(Category.objects.filter(environment_id=subscriber.environment_id).order_by("order", "key"))
    return [
        PreferenceRow(category, {channel: _resolve_one(category, channel, choices) for channel in channels})
        for category in categories
    ]


def workflow_channel_defaults(*, environment: Environment | int, workflow: Any) -> dict[str, bool]:
    """The workflow's own channel defaults (empty when it has none). One query."""
    workflow_pk = workflow if isinstance(workflow, int) else workflow.pk
    row = (
        WorkflowPreference.objects.filter(environment=environment, workflow_id=workflow_pk)
        .values_list("default_channels", flat=True)
        .first()
    )
    return dict(row or {})


def workflow_channel_defaults_many(*, workflow_ids: Iterable[int]) -> dict[int, dict[str, bool]]:
    """Workflow pk → its own channel defaults, for the workflows that have any. One query."""
    rows = WorkflowPreference.objects.filter(workflow_id__in=list(workflow_ids)).values_list(
        "workflow_id", "default_channels"
    )
    return {workflow_pk: dict(defaults) for workflow_pk, defaults in rows if defaults}


def _resolve_one(
    category: Category | None,
    channel: str,
    choices: Choices,
    workflow_defaults: Mapping[str, bool] | None = None,
) -> Resolution:
    category_key = category.key if category else None
    detail: dict[str, Any] = {"channel": channel, "category": category_key}
    if category is not None and category.critical:
        return Resolution(True, "critical", detail)
    if channel in SUBSCRIBER_CHANNELS and choices.get((None, ALL_CHANNELS)) is False:
        return Resolution(False, "unsubscribed", detail)
    global_choice = choices.get((None, channel))
    if global_choice is False:
        return Resolution(False, "subscriber_channel", detail)
    if category is not None:
        category_choice = choices.get((category.pk, channel))
        if category_choice is not None:
            return Resolution(category_choice, "subscriber_category", detail)
    if workflow_defaults and channel in workflow_defaults:
        return Resolution(bool(workflow_defaults[channel]), "workflow_default", detail)
    if category is not None:
        return Resolution(category.default_for(channel), "category_default", detail)
    return Resolution(True, "default", detail)


def category_frequencies(
    *, environment: Environment | int, subscriber_ids: Iterable[int], category: Category | None
) -> dict[int, str]:
    """Subscriber pk -> "instant" | "daily" | "weekly" for ``category``. One query (none without a
    category, or for a critical one: those always go out at once)."""
    subscriber_ids = list(subscriber_ids)
    result = dict.fromkeys(subscriber_ids, FREQUENCY_INSTANT)
    if category is None or category.critical or not subscriber_ids:
        return result
    rows = CategoryFrequency.objects.filter(
        in_array("subscriber_id", subscriber_ids), environment=environment, category=category
    ).values_list("subscriber_id", "frequency")
    for subscriber_pk, frequency in rows:
        result[subscriber_pk] = frequency
    return result


DEFAULT_DIGEST_TIME = "09:00"
WEEKLY_DIGEST_DAY = "monday"


def frequency_schedule(frequency: str, category: Category | None) -> str | None:
    """The digest schedule (``apps.core.schedule`` grammar) for a frequency; None for instant.

    The time of day is the category's ``digest_schedule`` time when it has one ("daily 18:00"
    -> daily at 18:00, weekly on Monday at 18:00), else 09:00; the engine applies it in the
    subscriber's timezone.
    """
    if frequency not in (FREQUENCY_DAILY, FREQUENCY_WEEKLY):
        return None
    at = DEFAULT_DIGEST_TIME
    if category is not None and category.digest_schedule:
        with contextlib.suppress(ScheduleError):
            at = parse_schedule(category.digest_schedule).start.strftime("%H:%M")
    if frequency == FREQUENCY_DAILY:
        return f"daily {at}"
    return f"weekly {WEEKLY_DIGEST_DAY} {at}"


def subscriber_preferences(*, subscriber: Subscriber) -> dict[str, Any]:
    """The full picture for one subscriber: global channels, "unsubscribed from everything",
    and per category its channels (effective: may it be sent?) and frequency. Two queries."""
    rows = list(Preference.objects.filter(subscriber=subscriber).values_list("category_id", "channel", "enabled"))
    global_choices: Choices = {
        (None, channel): enabled for category_pk, channel, enabled in rows if category_pk is None
    }
    by_category: dict[int, dict[str, bool]] = {}
    for category_pk, channel, enabled in rows:
        if category_pk is not None:
            by_category.setdefault(category_pk, {})[channel] = enabled
    categories = []
    frequencies = dict(CategoryFrequency.objects.filter(subscriber=subscriber).values_list("category_id", "frequency"))
    for category in Category.objects.filter(environment_id=subscriber.environment_id).order_by("order", "key"):
        choice = by_category.get(category.pk, {})
        merged = global_choices | {(category.pk, c): e for c, e in choice.items()}
        categories.append(
            {
                "key": category.key,
                "name": category.name,
                "description": category.description,
                "critical": category.critical,
                "channels": {
                    channel: _resolve_one(category, channel, merged).allowed for channel in SUBSCRIBER_CHANNELS
                },
                "frequency": FREQUENCY_INSTANT
                if category.critical
                else frequencies.get(category.pk, FREQUENCY_INSTANT),
            }
        )
    return {
        "channels": {channel: global_choices.get((None, channel), True) for channel in SUBSCRIBER_CHANNELS},
        "unsubscribed": global_choices.get((None, ALL_CHANNELS)) is False,
        "categories": categories,
    }


@dataclass
class CategoryChoice:
    """One category as the hosted page shows it: the category-level choice per channel (the
    subscriber's own, else the default), before global switches apply."""

    category: Category
    channels: dict[str, bool]
    frequency: str


@dataclass
class PreferencePageState:
    subscriber: Subscriber
    channels: dict[str, bool]  # global switches
    unsubscribed: bool
    categories: list[CategoryChoice]
    quiet_hours: QuietHours | None


def preference_page_state(*, subscriber: Subscriber) -> PreferencePageState:
    """What the hosted preference center shows. Four queries."""
    rows = list(Preference.objects.filter(subscriber=subscriber).values_list("category_id", "channel", "enabled"))
    frequencies = dict(CategoryFrequency.objects.filter(subscriber=subscriber).values_list("category_id", "frequency"))
    global_choices = {channel: enabled for category_pk, channel, enabled in rows if category_pk is None}
    by_category: dict[int, dict[str, bool]] = {}
    for category_pk, channel, enabled in rows:
        if category_pk is not None:
            by_category.setdefault(category_pk, {})[channel] = enabled
    categories = []
    for category in Category.objects.filter(environment_id=subscriber.environment_id).order_by("order", "key"):
        stored = by_category.get(category.pk, {})
        categories.append(
            CategoryChoice(
                category=category,
                channels={c: stored.get(c, category.default_for(c)) for c in SUBSCRIBER_CHANNELS},
                frequency=FREQUENCY_INSTANT if category.critical else frequencies.get(category.pk, FREQUENCY_INSTANT),
            )
        )
    return PreferencePageState(
        subscriber=subscriber,
        channels={c: global_choices.get(c, True) for c in SUBSCRIBER_CHANNELS},
        unsubscribed=global_choices.get(ALL_CHANNELS) is False,
        categories=categories,
        quiet_hours=QuietHours.objects.filter(subscriber=subscriber).first(),
    )


def preference_changes(*, subscriber: Subscriber) -> QuerySet[PreferenceChange]:
    """The subscriber's preference history, newest first."""
    return PreferenceChange.objects.filter(subscriber=subscriber).order_by("-id")


def category_get(*, environment: Environment, key: str) -> Category:
    """The category with this key in this environment, or ``NotFound`` (404)."""
    category = Category.objects.filter(environment=environment, key=key).first()
    if category is None:
        raise NotFound(f"Category '{key}' was not found.", details={"category": key})
    return category


def category_list(*, environment: Environment) -> QuerySet[Category]:
    return Category.objects.filter(environment=environment)
