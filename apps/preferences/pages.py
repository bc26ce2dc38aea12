"""The hosted pages: the preference center (``/preferences/<token>/``) and one-click unsubscribe
(``/unsubscribe/<token>``, RFC 8058).

Plain Django views and templates, no build step. The preference center saves with CSRF
protection and shows what was saved; the unsubscribe URL needs no cookie: its POST (from a mail
client's one-click button or the confirmation page) is the whole proof, and its GET never
changes anything because link scanners fetch every URL they see.
"""

from __future__ import annotations

import re
import zoneinfo
from datetime import time
from functools import lru_cache
from typing import Any

from django import forms
from django.contrib import messages
from django.db import transaction
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import render
from django.urls import path, reverse
from django.utils import translation
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy
from django.views.decorators.cache import never_cache
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_http_methods

from apps.core.errors import ApiError
from apps.delivery.selectors import reachable_channels
from apps.preferences import services
from apps.preferences.models import (
    FREQUENCY_DAILY,
    FREQUENCY_INSTANT,
    FREQUENCY_WEEKLY,
    SUBSCRIBER_CHANNELS,
    Category,
    PreferenceChange,
)
from apps.preferences.selectors import PreferencePageState, frequency_schedule, preference_page_state
from apps.preferences.tokens import LinkToken, TokenError, preference_token, token_subscriber
from apps.subscribers.models import Subscriber
from apps.tenancy.models import Environment

CHANNEL_LABELS = {
    "in_app": gettext_lazy("In-app"),
    "email": gettext_lazy("Email"),
    "sms": gettext_lazy("SMS"),
    "push": gettext_lazy("Push"),
    "chat": gettext_lazy("Chat"),
}
FREQUENCY_LABELS = {
    FREQUENCY_INSTANT: gettext_lazy("As it happens"),
    FREQUENCY_DAILY: gettext_lazy("Daily digest"),
    FREQUENCY_WEEKLY: gettext_lazy("Weekly digest"),
}
DEFAULT_BRAND_COLOR = "#4f46e5"
_COLOR = re.compile(r"^#(?:[0-9a-fA-F]{3}|[0-9a-fA-F]{6})$")


# --- branding and language -----------------------------------------------------------------------


def branding(environment: Environment | None) -> dict[str, str]:
    """The environment's ``branding`` JSON made safe for the page: product name, an http(s) logo
    URL and a hex colour (anything else falls back to the defaults)."""
    data = environment.branding if environment is not None and isinstance(environment.branding, dict) else {}
    name = data.get("product_name") or data.get("name") or (environment.project.name if environment else "")
    logo = str(data.get("logo_url") or data.get("logo") or "")
    color = str(data.get("primary_color") or data.get("color") or "")
    return {
        "product_name": str(name or "Clarion")[:120],
        "logo_url": logo if logo.startswith(("https://", "http://")) else "",
        "color": color if _COLOR.match(color) else DEFAULT_BRAND_COLOR,
    }


def subscriber_language(subscriber: Subscriber | None) -> str:
    """The subscriber's locale as one of ``settings.LANGUAGES`` ("fr-CA" -> "fr"), else English."""
    locale = (subscriber.locale if subscriber else "") or ""
    try:
        return translation.get_supported_language_variant(locale.replace("_", "-").lower())
    except LookupError:
        return "en"


@lru_cache(maxsize=1)
def timezone_choices() -> list[tuple[str, str]]:
    return [(name, name.replace("_", " ")) for name in sorted(zoneinfo.available_timezones()) if "/" in name] + [
        ("UTC", "UTC")
    ]


# --- the form ------------------------------------------------------------------------------------


class PreferenceCenterForm(forms.Form):
    """Built from the page state: global channel switches, category × channel switches and a
    frequency per non-critical category, "unsubscribe from everything", quiet hours."""

    unsubscribed = forms.BooleanField(required=False)
    quiet_enabled = forms.BooleanField(required=False)
    quiet_start = forms.TimeField(required=False, widget=forms.TimeInput(format="%H:%M", attrs={"type": "time"}))
    quiet_end = forms.TimeField(required=False, widget=forms.TimeInput(format="%H:%M", attrs={"type": "time"}))
    quiet_timezone = forms.ChoiceField(required=False, choices=())

    def __init__(self, *args: Any, state: PreferencePageState, channels: list[str], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.state = state
        self.channels = channels
        quiet_timezone = self.fields["quiet_timezone"]
        assert isinstance(quiet_timezone, forms.ChoiceField)
        quiet_timezone.choices = timezone_choices()
        for channel in channels:
            self.fields[f"channel-{channel}"] = forms.BooleanField(required=False, label=CHANNEL_LABELS[channel])
        for choice in state.categories:
            if choice.category.critical:
                continue
            for channel in channels:
                self.fields[f"cat-{choice.category.pk}-{channel}"] = forms.BooleanField(
                    required=False, label=CHANNEL_LABELS[channel]
                )
            self.fields[f"freq-{choice.category.pk}"] = forms.ChoiceField(
                choices=[(value, label) for value, label in FREQUENCY_LABELS.items()], label=_("How often")
            )

    def clean(self) -> dict[str, Any]:
        super().clean()
        data = self.cleaned_data
        if data.get("quiet_enabled"):
            start, end = data.get("quiet_start"), data.get("quiet_end")
            if start is None:
                self.add_error("quiet_start", _("Enter the time quiet hours start."))
            if end is None:
                self.add_error("quiet_end", _("Enter the time quiet hours end."))
            if start is not None and end is not None and start == end:
                self.add_error("quiet_end", _("Quiet hours must end at another time than they start."))
        return data


def initial_values(state: PreferencePageState, channels: list[str]) -> dict[str, Any]:
    subscriber = state.subscriber
    quiet = state.quiet_hours
    initial: dict[str, Any] = {
        "unsubscribed": state.unsubscribed,
        "quiet_enabled": quiet is not None,
        "quiet_start": quiet.start if quiet else time(22, 0),
        "quiet_end": quiet.end if quiet else time(7, 0),
        "quiet_timezone": (quiet.timezone if quiet and quiet.timezone else subscriber.timezone) or "UTC",
    }
    for channel in channels:
        initial[f"channel-{channel}"] = state.channels[channel]
    for choice in state.categories:
        for channel in channels:
            initial[f"cat-{choice.category.pk}-{channel}"] = choice.channels[channel]
        initial[f"freq-{choice.category.pk}"] = choice.frequency
    return initial


def page_channels(state: PreferencePageState) -> list[str]:
    """The channels worth showing: in-app, those the subscriber can be reached on, and any they
    turned off everywhere (so they can turn it back on)."""
    reachable = reachable_channels(subscribers=[state.subscriber]).get(state.subscriber.pk, set())
    return [c for c in SUBSCRIBER_CHANNELS if c == "in_app" or c in reachable or not state.channels[c]]


# --- the views -----------------------------------------------------------------------------------


def _link_error(request: HttpRequest, reason: str, *, environment: Environment | None = None) -> HttpResponse:
    statuses = {"expired": 410, "unknown_subscriber": 404, "unknown_category": 410, "critical": 422}
    with translation.override(translation.get_language_from_request(request)):
        return render(
            request,
            "preferences/link_error.html",
            {"reason": reason, "brand": branding(environment), "lang": translation.get_language()},
            status=statuses.get(reason, 400),
        )


@never_cache
@require_http_methods(["GET", "HEAD", "POST"])
def preference_center(request: HttpRequest, token: str) -> HttpResponse:
    try:
        _link, subscriber = token_subscriber(token, purpose="page")
    except TokenError as exc:
        return _link_error(request, exc.reason)
    language = subscriber_language(subscriber)
    with translation.override(language):
        state = preference_page_state(subscriber=subscriber)
        channels = page_channels(state)
        if request.method == "POST":
            form = PreferenceCenterForm(request.POST, state=state, channels=channels)
            if form.is_valid():
                try:
                    changes = _save(form, subscriber)
                except ApiError as exc:
                    form.add_error(None, str(exc.detail))
                else:
                    for line in describe_changes(changes, state):
                        messages.success(request, line)
                    if not changes:
                        messages.info(request, _("Nothing changed: these were already your preferences."))
                    return HttpResponseRedirect(request.path + "#saved")
            status = 400
        else:
            form = PreferenceCenterForm(initial=initial_values(state, channels), state=state, channels=channels)
            status = 200
        return render(request, "preferences/center.html", _page_context(form, state, channels, language), status=status)


def _page_context(
    form: PreferenceCenterForm, state: PreferencePageState, channels: list[str], language: str
) -> dict[str, Any]:
    subscriber = state.subscriber
    rows = []
    for choice in state.categories:
        category = choice.category
        cells = []
        for channel in channels:
            name = f"cat-{category.pk}-{channel}"
            cells.append(
                {
                    "channel": channel,
                    "label": CHANNEL_LABELS[channel],
                    "field": None if category.critical else form[name],
                    "global_off": not state.channels[channel],
                }
            )
        schedule = frequency_schedule(FREQUENCY_DAILY, category) or ""
        rows.append(
            {
                "category": category,
                "cells": cells,
                "frequency": None if category.critical else form[f"freq-{category.pk}"],
                "digest_time": schedule.rsplit(" ", 1)[-1],
            }
        )
    return {
        "form": form,
        "brand": branding(subscriber.environment),
        "lang": language,
        "subscriber": subscriber,
        "channels": [
            {"channel": c, "label": CHANNEL_LABELS[c], "field": form[f"channel-{c}"], "on": state.channels[c]}
            for c in channels
        ],
        "rows": rows,
        "timezone": subscriber.timezone or "UTC",
        "unsubscribed": state.unsubscribed,
    }


@transaction.atomic
def _save(form: PreferenceCenterForm, subscriber: Subscriber) -> list[dict[str, Any]]:
    """Write only what differs from the page state, in one transaction; returns the changes."""
    state, data = form.state, form.cleaned_data
    source = PreferenceChange.Source.PAGE
    channels = {c: data[f"channel-{c}"] for c in form.channels if data[f"channel-{c}"] != state.channels[c]}
    categories: dict[str, dict[str, bool]] = {}
    frequencies: dict[str, str] = {}
    for choice in state.categories:
        category = choice.category
        if category.critical:
            continue
        changed = {
            c: data[f"cat-{category.pk}-{c}"]
            for c in form.channels
            if data[f"cat-{category.pk}-{c}"] != choice.channels[c]
        }
        if changed:
            categories[category.key] = changed
        if data[f"freq-{category.pk}"] != choice.frequency:
            frequencies[category.key] = data[f"freq-{category.pk}"]
    unsubscribed = data["unsubscribed"] if data["unsubscribed"] != state.unsubscribed else None
    changes = services.preferences_update(
        subscriber=subscriber,
        channels=channels,
        categories=categories,
        frequencies=frequencies,
        unsubscribed=unsubscribed,
        source=source,
    )
    quiet = state.quiet_hours
    if data["quiet_enabled"]:
        zone_name = data["quiet_timezone"] or ""
        if zone_name == (subscriber.timezone or "UTC") and (quiet is None or not quiet.timezone):
            zone_name = ""  # follow the subscriber's own timezone
        same = (
            quiet is not None
            and quiet.start == data["quiet_start"]
            and quiet.end == data["quiet_end"]
            and quiet.timezone == zone_name
        )
        if not same:
            services.quiet_hours_set(
                subscriber=subscriber,
                start=data["quiet_start"],
                end=data["quiet_end"],
                timezone=zone_name,
                days=list(quiet.days) if quiet else [],
                channels=list(quiet.channels) if quiet else [],
                source=source,
            )
            changes.append({"kind": "quiet_hours", "to": {"start": data["quiet_start"], "end": data["quiet_end"]}})
    elif quiet is not None:
        services.quiet_hours_clear(subscriber=subscriber, source=source)
        changes.append({"kind": "quiet_hours", "to": None})
    return changes


def describe_changes(changes: list[dict[str, Any]], state: PreferencePageState) -> list[str]:
    """One sentence per change, in the active language."""
    names = {choice.category.key: choice.category.name for choice in state.categories}
    lines = []
    for change in changes:
        kind = change["kind"]
        channel = CHANNEL_LABELS.get(change.get("channel") or "", change.get("channel") or "")
        category = names.get(change.get("category") or "", change.get("category") or "")
        if kind == "category":
            text = _("%(category)s: %(channel)s on") if change["to"] else _("%(category)s: %(channel)s off")
            lines.append(text % {"category": category, "channel": channel})
        elif kind == "channel":
            text = _("%(channel)s turned on") if change["to"] else _("%(channel)s turned off for everything")
            lines.append(text % {"channel": channel})
        elif kind == "frequency":
            lines.append(
                _("%(category)s: %(frequency)s")
                % {"category": category, "frequency": FREQUENCY_LABELS[change["to"]].lower()}
            )
        elif kind == "unsubscribed":
            lines.append(
                _("Unsubscribed from everything except essential messages")
                if change["to"]
                else _("Subscribed again: your other choices apply")
            )
        elif kind == "quiet_hours":
            if change["to"]:
                lines.append(
                    _("Quiet hours: %(start)s to %(end)s")
                    % {"start": change["to"]["start"].strftime("%H:%M"), "end": change["to"]["end"].strftime("%H:%M")}
                )
            else:
                lines.append(_("Quiet hours turned off"))
    return lines


@csrf_exempt
@never_cache
@require_http_methods(["GET", "HEAD", "POST"])
def one_click_unsubscribe(request: HttpRequest, token: str) -> HttpResponse:
    """RFC 8058: POST unsubscribes (no cookie, no CSRF token: the signed URL is the proof) and is
    idempotent; GET shows what a POST would do and changes nothing."""
    try:
        link, subscriber = token_subscriber(token, purpose="unsubscribe")
    except TokenError as exc:
        return _link_error(request, exc.reason)
    language = subscriber_language(subscriber)
    with translation.override(language):
        category = _token_category(link, subscriber)
        if link.category_key and category is None:
            return _link_error(request, "unknown_category", environment=subscriber.environment)
        if category is not None and category.critical:
            return _link_error(request, "critical", environment=subscriber.environment)
        context = {
            "brand": branding(subscriber.environment),
            "lang": language,
            "category": category,
            "channel_label": CHANNEL_LABELS.get(link.channel or "", ""),
            "preferences_url": preference_center_path(preference_token(subscriber=subscriber)),
            "done": False,
        }
        if request.method == "POST":
            services.preferences_unsubscribe(
                subscriber=subscriber,
                category_key=link.category_key,
                channel=link.channel,
                source=PreferenceChange.Source.ONE_CLICK,
            )
            context["done"] = True
        return render(request, "preferences/unsubscribe.html", context)


def _token_category(link: LinkToken, subscriber: Subscriber) -> Category | None:
    if not link.category_key:
        return None
    return Category.objects.filter(environment_id=subscriber.environment_id, key=link.category_key).first()


def preference_center_path(token: str) -> str:
    return reverse("preference-center", kwargs={"token": token})


urlpatterns = [
    path("preferences/<str:token>/", preference_center, name="preference-center"),
    path("unsubscribe/<str:token>", one_click_unsubscribe, name="one-click-unsubscribe"),
    path("unsubscribe/<str:token>/", one_click_unsubscribe),
]
