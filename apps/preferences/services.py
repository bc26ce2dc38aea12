"""Writes for categories and subscriber preferences."""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from datetime import time
from typing import Any

from django.db import IntegrityError, transaction
from django.utils import timezone

from apps.core.errors import ApiError, Unprocessable
from apps.core.schedule import DAY_NAMES, ScheduleError, is_valid_zone, parse_schedule
from apps.preferences.models import (
    ALL_CHANNELS,
    FREQUENCIES,
    FREQUENCY_INSTANT,
    IN_DOUBT_AUTO,
    IN_DOUBT_POLICY_CHOICES,
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

BULK_LIMIT = 1000
DEFAULT_DIGEST_SCHEDULE = "daily 09:00"


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
    digest_schedule: str = DEFAULT_DIGEST_SCHEDULE,
    digest_templates: dict[str, str] | None = None,
    in_doubt_policy: str = IN_DOUBT_AUTO,
) -> tuple[Category, bool]:
    """Create the category or replace all its attributes. Returns ``(category, created)``.

    ``digest_schedule``: when its digests go out, in the subscriber's timezone (``daily 09:00``,
    ``weekdays 18:00``, ``weekly monday 08:30``); ``digest_templates``: channel -> template key
    rendering the digest on that channel (a plain list without one). Bad values are a 422
    ``invalid_category``.
    """
    default_channels = dict(default_channels or {})
    digest_templates = dict(digest_templates or {})
    _check_channels(default_channels, where="default_channels")
    errors: dict[str, str] = {}
    try:
        parse_schedule(digest_schedule, forbid_window=True)
    except ScheduleError as exc:
        errors["digest_schedule"] = str(exc)
    unknown = sorted(set(digest_templates) - set(SUBSCRIBER_CHANNELS))
    if unknown:
        errors["digest_templates"] = f"unknown channel(s) {unknown}; use {', '.join(SUBSCRIBER_CHANNELS)}"
    elif any(not isinstance(v, str) or not v for v in digest_templates.values()):
        errors["digest_templates"] = "each value must be a template key"
    if in_doubt_policy not in dict(IN_DOUBT_POLICY_CHOICES):
        errors["in_doubt_policy"] = f"use one of {', '.join(dict(IN_DOUBT_POLICY_CHOICES))}"
    if errors:
        raise Unprocessable("This category cannot be saved.", code="invalid_category", details=errors)
    values = {
        "name": name,
        "description": description,
        "critical": critical,
        "default_channels": default_channels,
        "order": order,
        "digest_schedule": digest_schedule,
        "digest_templates": digest_templates,
        "in_doubt_policy": in_doubt_policy,
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


@dataclass
class PreferenceInput:
    """What one subscriber asks to change; every part is optional."""

    subscriber: Subscriber
    channels: dict[str, bool] = field(default_factory=dict)
    categories: dict[str, dict[str, bool]] = field(default_factory=dict)
    frequencies: dict[str, str] = field(default_factory=dict)
    unsubscribed: bool | None = None


def preferences_update(
    *,
    subscriber: Subscriber,
    channels: dict[str, bool] | None = None,
    categories: dict[str, dict[str, bool]] | None = None,
    frequencies: dict[str, str] | None = None,
    unsubscribed: bool | None = None,
    source: str = PreferenceChange.Source.API,
) -> list[dict[str, Any]]:
    """Store a subscriber's choices and record what changed (with ``source``) in the history.

    ``channels``: global per-channel switches; ``categories``: category key -> channel ->
    on/off; ``frequencies``: category key -> instant | daily | weekly; ``unsubscribed``: True
    stops everything non-critical, False undoes that. Only what is named is written. Raises
    ``ApiError`` (400, ``unknown_channel`` / ``validation_error``), ``Unprocessable`` (422,
    ``unknown_category``, ``critical_category``, ``unknown_frequency``). Nothing is written
    when anything is wrong. Returns the changes recorded (empty when nothing changed).
    """
    item = PreferenceInput(
        subscriber=subscriber,
        channels=channels or {},
        categories=categories or {},
        frequencies=frequencies or {},
        unsubscribed=unsubscribed,
    )
    return preferences_apply(environment_id=subscriber.environment_id, items=[item], source=source)[0]


def preferences_bulk_update(
    *, environment: Environment, items: list[dict[str, Any]], source: str = PreferenceChange.Source.API
) -> list[tuple[str, list[dict[str, Any]]]]:
    """Apply the same kind of update to up to ``BULK_LIMIT`` subscribers, all or nothing.

    ``items``: ``[{"subscriber_id", "channels"?, "categories"?, "frequencies"?, "unsubscribed"?}]``.
    A subscriber id that doesn't exist is a 422 ``unknown_subscriber`` (nothing is written).
    A fixed number of queries whatever the number of items. Returns ``(subscriber_id, changes)``.
    """
    if len(items) > BULK_LIMIT:
        raise ApiError(f"At most {BULK_LIMIT} subscribers per call.", code="too_many_items")
    ids = [str(item["subscriber_id"]) for item in items]
    duplicates = sorted(i for i, n in Counter(ids).items() if n > 1)
    if duplicates:
        raise ApiError(
            "Each subscriber may appear once.", code="duplicate_subscriber", details={"subscriber_ids": duplicates}
        )
    found = {s.subscriber_id: s for s in Subscriber.objects.filter(environment=environment, subscriber_id__in=ids)}
    missing = [i for i in ids if i not in found]
    if missing:
        raise Unprocessable(
            f"Unknown subscriber id(s): {', '.join(missing[:10])}{'…' if len(missing) > 10 else ''}.",
            code="unknown_subscriber",
            details={"subscriber_ids": missing},
        )
    inputs = [
        PreferenceInput(
            subscriber=found[str(item["subscriber_id"])],
            channels=item.get("channels") or {},
            categories=item.get("categories") or {},
            frequencies=item.get("frequencies") or {},
            unsubscribed=item.get("unsubscribed"),
        )
        for item in items
    ]
    results = preferences_apply(environment_id=environment.pk, items=inputs, source=source)
    return list(zip(ids, results, strict=True))


def preferences_apply(*, environment_id: int, items: list[PreferenceInput], source: str) -> list[list[dict[str, Any]]]:
    """Validate every item, then write them all in one transaction and record the history.

    Returns, per item, the list of changes recorded.
    """
    if source not in PreferenceChange.Source.values:
        raise ValueError(f"unknown preference change source {source!r}")
    for index, item in enumerate(items):
        where = f"items[{index}]." if len(items) > 1 else ""
        _check_channels(item.channels, where=f"{where}channels")
        if not isinstance(item.categories, dict):
            raise ApiError("categories must be an object of category key -> channels.", code="validation_error")
        for key, choices in item.categories.items():
            _check_channels(choices, where=f"{where}categories.{key}")
        if not isinstance(item.frequencies, dict):
            raise ApiError("frequencies must be an object of category key -> frequency.", code="validation_error")
        bad = sorted(key for key, value in item.frequencies.items() if value not in FREQUENCIES)
        if bad:
            raise Unprocessable(
                f"Unknown frequency for {', '.join(bad)}; use {', '.join(FREQUENCIES)}.",
                code="unknown_frequency",
                details={"categories": bad, "frequencies": FREQUENCIES},
            )
        if item.unsubscribed is not None and not isinstance(item.unsubscribed, bool):
            raise ApiError("unsubscribed must be true or false.", code="validation_error")

    keys = {key for item in items for key in (*item.categories, *item.frequencies)}
    by_key: dict[str, Category] = {}
    if keys:
        by_key = {c.key: c for c in Category.objects.filter(environment_id=environment_id, key__in=sorted(keys))}
        missing = sorted(keys - set(by_key))
        if missing:
            raise Unprocessable(
                f"Unknown category key(s): {', '.join(missing)}. Create them with PUT /categories/{{key}}.",
                code="unknown_category",
                details={"categories": missing},
            )
    for item in items:
        for key, choices in item.categories.items():
            turned_off = sorted(channel for channel, enabled in choices.items() if not enabled)
            if by_key[key].critical and turned_off:
                raise Unprocessable(
                    f"Category '{key}' is critical: its messages cannot be turned off.",
                    code="critical_category",
                    details={"category": key, "channels": turned_off},
                )
        for key, frequency in item.frequencies.items():
            if by_key[key].critical and frequency != FREQUENCY_INSTANT:
                raise Unprocessable(
                    f"Category '{key}' is critical: its messages always go out at once.",
                    code="critical_category",
                    details={"category": key, "frequency": frequency},
                )
    if not any(item.channels or item.categories or item.frequencies or item.unsubscribed is not None for item in items):
        return [[] for _ in items]
    try:
        return _write(environment_id, items, by_key, source)
    except IntegrityError:
        # A concurrent update created one of the rows first: now it exists, so this pass updates it.
        return _write(environment_id, items, by_key, source)


def _write(
    environment_id: int, items: list[PreferenceInput], by_key: dict[str, Category], source: str
) -> list[list[dict[str, Any]]]:
    by_pk = {category.pk: category for category in by_key.values()}
    subscriber_pks = [item.subscriber.pk for item in items]
    with transaction.atomic():
        wanted_channels: set[str] = set()
        for item in items:
            wanted_channels.update(item.channels)
            for choices in item.categories.values():
                wanted_channels.update(choices)
            if item.unsubscribed is not None:
                wanted_channels.add(ALL_CHANNELS)
        existing = {
            (p.subscriber_id, p.category_id, p.channel): p
            for p in Preference.objects.select_for_update().filter(
                subscriber_id__in=subscriber_pks, channel__in=sorted(wanted_channels)
            )
        }
        frequency_rows: dict[tuple[int, int], CategoryFrequency] = {}
        if any(item.frequencies for item in items):
            frequency_rows = {
                (f.subscriber_id, f.category_id): f
                for f in CategoryFrequency.objects.select_for_update().filter(
                    subscriber_id__in=subscriber_pks,
                    category_id__in=[by_key[k].pk for item in items for k in item.frequencies],
                )
            }
        now = timezone.now()
        to_update: list[Preference] = []
        to_create: list[Preference] = []
        freq_update: list[CategoryFrequency] = []
        freq_create: list[CategoryFrequency] = []
        history: list[PreferenceChange] = []
        results: list[list[dict[str, Any]]] = []
        for item in items:
            subscriber = item.subscriber
            wanted: dict[tuple[int | None, str], bool] = {(None, c): e for c, e in item.channels.items()}
            for key, choices in item.categories.items():
                for channel, enabled in choices.items():
                    wanted[(by_key[key].pk, channel)] = enabled
            if item.unsubscribed is not None:
                wanted[(None, ALL_CHANNELS)] = not item.unsubscribed
            changes: list[dict[str, Any]] = []
            for (category_pk, channel), enabled in wanted.items():
                row = existing.get((subscriber.pk, category_pk, channel))
                category = by_pk.get(category_pk) if category_pk else None
                before = row.enabled if row is not None else (category.default_for(channel) if category else True)
                if row is None:
                    row = Preference(
                        environment_id=environment_id,
                        subscriber=subscriber,
                        category_id=category_pk,
                        channel=channel,
                        enabled=enabled,
                    )
                    to_create.append(row)
                    existing[(subscriber.pk, category_pk, channel)] = row
                elif row.enabled != enabled:
                    row.enabled = enabled
                    row.updated_at = now
                    to_update.append(row)
                if before != enabled:
                    changes.append(_change(category, channel, before, enabled))
            for key, frequency in item.frequencies.items():
                category = by_key[key]
                frequency_row = frequency_rows.get((subscriber.pk, category.pk))
                before_frequency = frequency_row.frequency if frequency_row is not None else FREQUENCY_INSTANT
                if frequency_row is None:
                    if frequency != FREQUENCY_INSTANT:
                        frequency_row = CategoryFrequency(
                            environment_id=environment_id, subscriber=subscriber, category=category, frequency=frequency
                        )
                        freq_create.append(frequency_row)
                        frequency_rows[(subscriber.pk, category.pk)] = frequency_row
                elif frequency_row.frequency != frequency:
                    frequency_row.frequency = frequency
                    frequency_row.updated_at = now
                    freq_update.append(frequency_row)
                if before_frequency != frequency:
                    changes.append(
                        {
                            "kind": "frequency",
                            "category": key,
                            "channel": None,
                            "from": before_frequency,
                            "to": frequency,
                        }
                    )
            if changes:
                history.append(
                    PreferenceChange(
                        environment_id=environment_id, subscriber=subscriber, source=source, changes=changes
                    )
                )
            results.append(changes)
        if to_update:
            Preference.objects.bulk_update(to_update, ["enabled", "updated_at"])
        if to_create:
            Preference.objects.bulk_create(to_create)
        if freq_update:
            CategoryFrequency.objects.bulk_update(freq_update, ["frequency", "updated_at"])
        if freq_create:
            CategoryFrequency.objects.bulk_create(freq_create)
        if history:
            PreferenceChange.objects.bulk_create(history)
    return results


def _change(category: Category | None, channel: str, before: bool, after: bool) -> dict[str, Any]:
    if channel == ALL_CHANNELS:
        return {"kind": "unsubscribed", "category": None, "channel": None, "from": not before, "to": not after}
    kind = "category" if category is not None else "channel"
    return {
        "kind": kind,
        "category": category.key if category else None,
        "channel": channel,
        "from": before,
        "to": after,
    }


def preferences_unsubscribe(
    *, subscriber: Subscriber, category_key: str | None, channel: str | None, source: str
) -> list[dict[str, Any]]:
    """One-click unsubscribe: ``channel`` of ``category_key`` off, or everything non-critical when
    there is no category. Idempotent: a second call changes (and records) nothing.

    Raises ``Unprocessable`` ``unknown_category`` when the category no longer exists and
    ``critical_category`` when it cannot be turned off.
    """
    if category_key is None:
        return preferences_update(subscriber=subscriber, unsubscribed=True, source=source)
    channels = [channel] if channel else list(SUBSCRIBER_CHANNELS)
    return preferences_update(
        subscriber=subscriber, categories={category_key: dict.fromkeys(channels, False)}, source=source
    )


SMS_STOP_KEYWORDS = frozenset({"STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT"})
SMS_START_KEYWORDS = frozenset({"START", "YES", "UNSTOP"})


def sms_keyword_apply(
    *, environment: Environment | int, phone: str, body: str, opt_out_type: str = ""
) -> tuple[str, int]:
    """An inbound SMS from ``phone``: STOP-like keywords turn the SMS channel off for every
    subscriber of the environment with that number, START-like ones turn it back on.

    The whole message must be the keyword (case, spaces and punctuation aside: "Stop." counts,
    "stop please" does not), as Twilio's own filtering has it. ``opt_out_type`` is Twilio's
    ``OptOutType`` (sent with Advanced Opt-Out, which may define custom keywords): ``STOP`` /
    ``START`` decide on their own. Returns ``(keyword or "", number of subscribers changed)``;
    other texts change nothing.
    """
    keyword = re.sub(r"[^A-Z]", "", (body or "").strip().upper())
    opt_out_type = (opt_out_type or "").strip().upper()
    if opt_out_type in ("STOP", "START"):
        keyword = keyword or opt_out_type
        enabled = opt_out_type == "START"
    elif keyword in SMS_STOP_KEYWORDS:
        enabled = False
    elif keyword in SMS_START_KEYWORDS:
        enabled = True
    else:
        return "", 0
    digits = re.sub(r"\D", "", phone or "")
    if len(digits) < 4:
        return keyword, 0
    environment_id = environment if isinstance(environment, int) else environment.pk
    candidates = Subscriber.objects.filter(environment_id=environment_id, phone__endswith=digits[-4:])
    subscribers = [s for s in candidates if re.sub(r"\D", "", s.phone) == digits]
    if not subscribers:
        return keyword, 0
    items = [PreferenceInput(subscriber=s, channels={"sms": enabled}) for s in subscribers]
    results = preferences_apply(environment_id=environment_id, items=items, source=PreferenceChange.Source.SMS)
    return keyword, sum(1 for changes in results if changes)


@transaction.atomic
def quiet_hours_set(
    *,
    subscriber: Subscriber,
    start: time,
    end: time,
    timezone: str = "",
    days: list[str] | None = None,
    channels: list[str] | None = None,
    source: str = PreferenceChange.Source.API,
) -> QuietHours:
    """Set (or replace) a subscriber's quiet hours. Empty ``channels``: every channel but in-app.

    A real change is recorded in the preference history with ``source``."""
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
    before = QuietHours.objects.select_for_update().filter(subscriber=subscriber).first()
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
    old, new = _quiet_hours_summary(before), _quiet_hours_summary(quiet)
    if old != new:
        _record(
            subscriber, source, [{"kind": "quiet_hours", "category": None, "channel": None, "from": old, "to": new}]
        )
    return quiet


def quiet_hours_clear(*, subscriber: Subscriber, source: str = PreferenceChange.Source.API) -> None:
    with transaction.atomic():
        before = QuietHours.objects.select_for_update().filter(subscriber=subscriber).first()
        if before is None:
            return
        before.delete()
        _record(
            subscriber,
            source,
            [
                {
                    "kind": "quiet_hours",
                    "category": None,
                    "channel": None,
                    "from": _quiet_hours_summary(before),
                    "to": None,
                }
            ],
        )


def _quiet_hours_summary(quiet: QuietHours | None) -> dict[str, Any] | None:
    if quiet is None:
        return None
    return {
        "start": quiet.start.strftime("%H:%M"),
        "end": quiet.end.strftime("%H:%M"),
        "timezone": quiet.timezone,
        "days": list(quiet.days),
        "channels": list(quiet.channels),
    }


def _record(subscriber: Subscriber, source: str, changes: list[dict[str, Any]]) -> None:
    PreferenceChange.objects.create(
        environment_id=subscriber.environment_id, subscriber=subscriber, source=source, changes=changes
    )


def workflow_preference_set(*, workflow: Any, default_channels: dict[str, bool]) -> WorkflowPreference:
    """Set a workflow's own channel defaults (an empty dict removes the override)."""
    _check_channels(default_channels, where="default_channels")
    if not default_channels:
        WorkflowPreference.objects.filter(workflow=workflow).delete()
        return WorkflowPreference(environment_id=workflow.environment_id, workflow=workflow, default_channels={})
    preference, _ = WorkflowPreference.objects.update_or_create(
        workflow=workflow,
        defaults={"environment_id": workflow.environment_id, "default_channels": dict(default_channels)},
    )
    return preference
