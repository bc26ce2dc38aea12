from __future__ import annotations

from django.db import models
from django.db.models import Q

from apps.core.channels import CHANNEL_CHOICES, CHANNELS
from apps.subscribers.models import Subscriber
from apps.tenancy.models import Environment

# The channels a person chooses between. A webhook goes to the customer's own system, not to
# the person, so it has no subscriber preference (a category's defaults can still turn it off).
SUBSCRIBER_CHANNELS = [c for c in CHANNELS if c != "webhook"]
# A global Preference row (no category) on this pseudo-channel, disabled, means "unsubscribed from
# everything that isn't critical, on every channel". Keeping it in the same table keeps the
# resolution of a chunk of recipients to one query.
ALL_CHANNELS = "all"
PREFERENCE_CHANNEL_CHOICES = [*CHANNEL_CHOICES, (ALL_CHANNELS, "all channels")]

FREQUENCY_INSTANT = "instant"
FREQUENCY_DAILY = "daily"
FREQUENCY_WEEKLY = "weekly"
FREQUENCIES = [FREQUENCY_INSTANT, FREQUENCY_DAILY, FREQUENCY_WEEKLY]
FREQUENCY_CHOICES = [
    (FREQUENCY_INSTANT, "instant"),
    (FREQUENCY_DAILY, "daily digest"),
    (FREQUENCY_WEEKLY, "weekly digest"),
]


# What delivery does with a send whose outcome is unknown (a timeout after the request went out, a
# worker that died mid-call): see ``apps.delivery.services``.
IN_DOUBT_AUTO = "auto"
IN_DOUBT_RESEND = "resend"
IN_DOUBT_DROP = "drop"
IN_DOUBT_POLICY_CHOICES = [
    (IN_DOUBT_AUTO, "auto: resend if critical or the provider deduplicates, else hold"),
    (IN_DOUBT_RESEND, "resend through the same provider (at least once)"),
    (IN_DOUBT_DROP, "never resend (at most once)"),
]


class Category(models.Model):
    """A kind of message (comments, billing…) that subscribers can opt out of per channel."""

    environment = models.ForeignKey(Environment, on_delete=models.CASCADE, related_name="categories")
    key = models.SlugField(max_length=100)
    name = models.CharField(max_length=200)
    description = models.TextField(blank=True)
    critical = models.BooleanField(default=False, help_text="Critical messages ignore opt-outs.")
    # channel -> enabled by default; a channel missing here is on by default.
    default_channels = models.JSONField(default=dict, blank=True)
    order = models.PositiveIntegerField(default=0)
    # When this category's digest goes out (messages held back by a frequency cap wait for it),
    # in the subscriber's timezone; and per channel, the template that renders it (optional).
    digest_schedule = models.CharField(max_length=60, default="daily 09:00")
    digest_templates = models.JSONField(default=dict, blank=True)
    in_doubt_policy = models.CharField(
        max_length=10,
        choices=IN_DOUBT_POLICY_CHOICES,
        default=IN_DOUBT_AUTO,
        help_text="When a send may or may not have reached the provider: resend it (same provider, same "
        "idempotency key) or hold it.",
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        verbose_name_plural = "categories"
        ordering = ["order", "key"]
        constraints = [models.UniqueConstraint(fields=["environment", "key"], name="uniq_category_per_env")]

    def __str__(self) -> str:
        return self.name

    def default_for(self, channel: str) -> bool:
        return bool(self.default_channels.get(channel, True))


class Preference(models.Model):
    """One subscriber choice: a channel within a category, or (category empty) a channel globally."""

    environment = models.ForeignKey(Environment, on_delete=models.CASCADE, related_name="+")
    subscriber = models.ForeignKey(Subscriber, on_delete=models.CASCADE, related_name="preferences")
    category = models.ForeignKey(Category, null=True, blank=True, on_delete=models.CASCADE, related_name="+")
    channel = models.CharField(max_length=20, choices=PREFERENCE_CHANNEL_CHOICES)
    enabled = models.BooleanField()
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["subscriber", "category", "channel"],
                condition=Q(category__isnull=False),
                name="uniq_category_preference",
            ),
            models.UniqueConstraint(
                fields=["subscriber", "channel"],
                condition=Q(category__isnull=True),
                name="uniq_global_channel_preference",
            ),
        ]

    def __str__(self) -> str:
        scope = self.category.key if self.category is not None else "all categories"
        if self.channel == ALL_CHANNELS and not self.category_id:
            return "unsubscribed from everything non-critical" if not self.enabled else "subscribed"
        return f"{self.channel} for {scope}: {'on' if self.enabled else 'off'}"


class CategoryFrequency(models.Model):
    """How often a subscriber wants a category: at once, or gathered into a daily / weekly digest."""

    environment = models.ForeignKey(Environment, on_delete=models.CASCADE, related_name="+")
    subscriber = models.ForeignKey(Subscriber, on_delete=models.CASCADE, related_name="category_frequencies")
    category = models.ForeignKey(Category, on_delete=models.CASCADE, related_name="+")
    frequency = models.CharField(max_length=10, choices=FREQUENCY_CHOICES, default=FREQUENCY_INSTANT)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name_plural = "category frequencies"
        constraints = [
            models.UniqueConstraint(fields=["subscriber", "category"], name="uniq_category_frequency"),
        ]

    def __str__(self) -> str:
        return f"{self.category_id}: {self.frequency}"


class WorkflowPreference(models.Model):
    """A workflow's own channel defaults, overriding its category's (a subscriber's choice still wins)."""

    environment = models.ForeignKey(Environment, on_delete=models.CASCADE, related_name="+")
    workflow = models.OneToOneField("workflows.Workflow", on_delete=models.CASCADE, related_name="preference")
    # channel -> enabled by default for this workflow; a channel left out follows the category.
    default_channels = models.JSONField(default=dict, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"defaults for workflow {self.workflow_id}"


class PreferenceChange(models.Model):
    """One saved change of a subscriber's preferences: what changed, when, and from where."""

    class Source(models.TextChoices):
        API = "api", "server API"
        PAGE = "page", "hosted preference page"
        ONE_CLICK = "one_click", "one-click unsubscribe"
        INBOX = "inbox", "inbox widget"
        SMS = "sms", "SMS keyword"
        ADMIN = "admin", "admin"

    environment = models.ForeignKey(Environment, on_delete=models.CASCADE, related_name="+")
    subscriber = models.ForeignKey(Subscriber, on_delete=models.CASCADE, related_name="preference_changes")
    source = models.CharField(max_length=20, choices=Source.choices)
    # [{"kind": "channel"|"category"|"frequency"|"unsubscribed"|"quiet_hours", "category": key|null,
    #   "channel": name|null, "from": old, "to": new}]
    changes = models.JSONField(default=list)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-id"]
        indexes = [models.Index(fields=["subscriber", "-id"], name="prefchange_subscriber_idx")]

    def __str__(self) -> str:
        return f"{len(self.changes)} change(s) from {self.source}"


class QuietHours(models.Model):
    """A subscriber's quiet window: non-critical messages on ``channels`` wait until it ends."""

    environment = models.ForeignKey(Environment, on_delete=models.CASCADE, related_name="+")
    subscriber = models.OneToOneField(Subscriber, on_delete=models.CASCADE, related_name="quiet_hours")
    start = models.TimeField()
    end = models.TimeField()
    # Empty: the subscriber's own timezone (then UTC).
    timezone = models.CharField(max_length=64, blank=True)
    # Day names (mon…sun) the window starts on; empty means every day.
    days = models.JSONField(default=list, blank=True)
    # Channels that keep quiet; empty means every channel except in-app (the inbox is silent).
    channels = models.JSONField(default=list, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name_plural = "quiet hours"

    def __str__(self) -> str:
        return f"{self.start:%H:%M}-{self.end:%H:%M} for {self.subscriber_id}"
