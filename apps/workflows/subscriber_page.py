"""What the console's subscriber page shows (reads only), and its "Why not?" dry run.

The subscriber admin (``apps.subscribers.admin``) imports this one module: the page needs the
runs (workflows), messages, suppressions and reachability (delivery), preferences and quiet hours
(preferences) and the inbox (inbox), and ``workflows`` is the app allowed to read all of them.
Each section is a fixed number of queries, whatever the subscriber's history: the recent lists
are the last ``RECENT`` rows through an index on (subscriber, id).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from django.db.models import QuerySet

from apps.delivery.addresses import SUPPRESSIBLE_CHANNELS, address_normalize, channel_address
from apps.delivery.models import Message, Suppression
from apps.delivery.selectors import reachable_channels
from apps.inbox.models import InboxMessage
from apps.inbox.selectors import inbox_counts, inbox_messages_for
from apps.preferences.models import SUBSCRIBER_CHANNELS, QuietHours
from apps.preferences.selectors import PreferenceRow, subscriber_preference_table
from apps.subscribers.models import Device, Subscriber
from apps.workflows.dryrun import DryRun, DryRunRefused, workflow_dry_run
from apps.workflows.models import Run, Workflow

__all__ = [
    "RULE_WORDS",
    "SECTIONS",
    "DryRun",
    "DryRunRefused",
    "SubscriberPage",
    "rule_in_words",
    "subscriber_page",
    "subscriber_workflows",
    "workflow_dry_run",
]

RECENT = 20
# The inbox as the widget opens it: its first page (static/clarion/inbox.js PAGE_SIZE).
INBOX_PAGE = 20

# section -> the model whose Django view permission shows it
SECTIONS = {
    "runs": "workflows.view_run",
    "messages": "delivery.view_message",
    "preferences": "preferences.view_preference",
    "suppressions": "delivery.view_suppression",
    "devices": "subscribers.view_device",
    "quiet_hours": "preferences.view_quiethours",
    "inbox": "inbox.view_inboxmessage",
}

# The rule that decides a channel for a category (``Resolution.reason``), in plain words.
RULE_WORDS = {
    "critical": "critical category: always sent, whatever the subscriber chose",
    "unsubscribed": "the subscriber unsubscribed from everything non-critical",
    "subscriber_channel": "the subscriber turned {channel} off for every category",
    "subscriber_category": "the subscriber's own choice for this category",
    "workflow_default": "the workflow's default",
    "category_default": "the category's default",
    "default": "on by default (no choice of the subscriber's)",
}


def rule_in_words(reason: str, channel: str) -> str:
    return RULE_WORDS.get(reason, reason.replace("_", " ")).format(channel=channel)


@dataclass
class SubscriberPage:
    subscriber: Subscriber
    channels: list[str] = field(default_factory=lambda: list(SUBSCRIBER_CHANNELS))
    runs: list[Run] | None = None
    messages: list[Message] | None = None
    preferences: list[PreferenceRow] | None = None
    reachable: set[str] | None = None
    suppressions: list[Suppression] | None = None
    devices: list[Device] | None = None
    quiet_hours: QuietHours | None = None
    inbox: list[InboxMessage] | None = None
    inbox_counts: dict[str, int] = field(default_factory=dict)
    shown: set[str] = field(default_factory=set)

    def preference_cells(self) -> list[dict[str, Any]]:
        """Rows of the category × channel table: each cell on/off with its rule in words."""
        rows = []
        for row in self.preferences or []:
            cells = [
                {
                    "channel": channel,
                    "allowed": resolution.allowed,
                    "rule": resolution.reason,
                    "words": rule_in_words(resolution.reason, channel),
                }
                for channel, resolution in row.resolutions.items()
            ]
            rows.append({"category": row.category, "cells": cells})
        return rows


def subscriber_page(*, subscriber: Subscriber, sections: set[str]) -> SubscriberPage:
    """The sections of the subscriber page the caller may see (keys of ``SECTIONS``).

    Queries: runs 1, messages 1, preferences 2 + reachability at most 3, suppressions at most 1,
    devices 1, quiet hours 1, inbox 2.
    """
    page = SubscriberPage(subscriber=subscriber, shown=set(sections) & set(SECTIONS))
    if "runs" in page.shown:
        page.runs = list(
            Run.objects.filter(subscriber=subscriber)
            .select_related("workflow_version__workflow")
            .defer("step_results", "workflow_version__steps", "workflow_version__payload_schema")
            .defer("workflow_version__workflow__draft_steps", "workflow_version__workflow__payload_schema")
            .order_by("-id")[:RECENT]
        )
    if "messages" in page.shown:
        page.messages = list(
            Message.objects.filter(subscriber=subscriber)
            .only("id", "run_id", "step_id", "channel", "status", "recipient", "subject", "created_at", "sent_at")
            .order_by("-id")[:RECENT]
        )
    if "preferences" in page.shown:
        page.preferences = subscriber_preference_table(subscriber=subscriber, channels=page.channels)
        page.reachable = reachable_channels(subscribers=[subscriber]).get(subscriber.pk, set())
    if "suppressions" in page.shown:
        page.suppressions = _suppressions(subscriber)
    if "devices" in page.shown:
        page.devices = list(Device.objects.filter(subscriber=subscriber).order_by("id"))
    if "quiet_hours" in page.shown:
        page.quiet_hours = QuietHours.objects.filter(subscriber=subscriber).first()
    if "inbox" in page.shown:
        page.inbox = list(inbox_messages_for(subscriber=subscriber).order_by("-id")[:INBOX_PAGE])
        page.inbox_counts = inbox_counts(subscriber_ids=[subscriber.pk])[subscriber.pk]
    return page


def _suppressions(subscriber: Subscriber) -> list[Suppression]:
    """Suppressions of the subscriber's own addresses (email, phone) in its environment."""
    addresses = {
        channel: address_normalize(channel=channel, address=address)
        for channel in SUPPRESSIBLE_CHANNELS
        if (address := channel_address(subscriber=subscriber, channel=channel))
    }
    if not addresses:
        return []
    found = Suppression.objects.filter(
        environment_id=subscriber.environment_id, address__in=set(addresses.values())
    ).order_by("id")
    return [s for s in found if addresses.get(s.channel) == s.address]


def subscriber_workflows(*, subscriber: Subscriber) -> QuerySet[Workflow]:
    """The workflows a dry run may choose from: the subscriber's environment's, every one (an
    inactive or unpublished workflow is an answer to "why not?" too)."""
    return (
        Workflow.objects.filter(environment_id=subscriber.environment_id)
        .select_related("published_version")
        .order_by("key")
    )
