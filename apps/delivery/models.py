from __future__ import annotations

import secrets

from django.db import models

from apps.core.channels import CHANNEL_CHOICES
from apps.core.fields import EncryptedJSONField
from apps.subscribers.models import Subscriber
from apps.tenancy.models import Environment


def _webhook_key() -> str:
    return secrets.token_urlsafe(18)


class Integration(models.Model):
    """A configured provider for one channel. Lower priority numbers are tried first (the failover order).

    The circuit breaker and rate limiter keep their state on this row, so every worker process
    (on SQLite or PostgreSQL) sees the same state; see ``apps.delivery.services``.
    """

    environment = models.ForeignKey(Environment, on_delete=models.CASCADE, related_name="integrations")
    channel = models.CharField(max_length=20, choices=CHANNEL_CHOICES)
    provider = models.CharField(max_length=50, help_text="e.g. smtp, sendgrid, mailgun, postmark, ses, twilio, fcm")
    name = models.CharField(max_length=200, blank=True)
    credentials = EncryptedJSONField(
        default=dict, blank=True, help_text="Secrets, encrypted at rest: never returned by the API"
    )
    settings = models.JSONField(default=dict, blank=True, help_text="Sender settings, e.g. from_email")
    priority = models.PositiveIntegerField(default=0)
    active = models.BooleanField(default=True)
    retries = models.PositiveSmallIntegerField(
        default=2, help_text="Retries of a retryable error on this provider before failing over to the next"
    )
    rate_limit = models.FloatField(
        null=True, blank=True, help_text="At most this many messages per second through this integration"
    )
    # The savings report's price of one message through this integration (one segment for SMS),
    # in the environment's currency; empty: the channel's default (CLARION["MESSAGE_PRICES"]).
    price = models.DecimalField(
        max_digits=12,
        decimal_places=6,
        null=True,
        blank=True,
        help_text="Price per message (per segment for SMS) in the environment's currency; empty: the channel default.",
    )
    # Part of the inbound webhook URLs (status callbacks): identifies the integration, not a secret.
    webhook_key = models.CharField(max_length=40, unique=True, default=_webhook_key, editable=False)
    # Circuit breaker: consecutive failures, and until when the provider is skipped.
    circuit_failures = models.PositiveIntegerField(default=0, editable=False)
    circuit_open_until = models.DateTimeField(null=True, blank=True, editable=False)
    # Rate limiter: the next free send slot.
    rate_next_at = models.DateTimeField(null=True, blank=True, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["channel", "priority", "id"]
        indexes = [models.Index(fields=["environment", "channel", "priority"], name="integration_lookup_idx")]

    def __str__(self) -> str:
        return f"{self.provider} ({self.channel})"


class Message(models.Model):
    """One outbound notification on one channel; unique per run step so a retry cannot duplicate it."""

    class Status(models.TextChoices):
        QUEUED = "queued"
        SENDING = "sending"
        # The provider may have accepted it: a timeout or a lost connection after the request was
        # written, or a worker that died mid-call. See ``apps.delivery.services`` (in doubt).
        IN_DOUBT = "in_doubt"
        SENT = "sent"
        DELIVERED = "delivered"
        OPENED = "opened"
        CLICKED = "clicked"
        READ = "read"
        BOUNCED = "bounced"
        FAILED = "failed"

    # One lifecycle for every channel: queued → sending → sent → delivered, then engagement
    # (opened → clicked); bounced and failed end it; in_doubt sits between sending and sent until
    # a callback or a resend settles it. See ``apps.delivery.status``.
    TERMINAL_STATUSES = (
        Status.DELIVERED,
        Status.OPENED,
        Status.CLICKED,
        Status.READ,
        Status.BOUNCED,
        Status.FAILED,
    )

    environment = models.ForeignKey(Environment, on_delete=models.CASCADE, related_name="messages")
    # Both empty for a one-off send that no workflow run produced (an admin test send).
    run = models.ForeignKey("workflows.Run", null=True, blank=True, on_delete=models.CASCADE, related_name="messages")
    step_id = models.CharField(max_length=100)
    channel = models.CharField(max_length=20, choices=CHANNEL_CHOICES)
    subscriber = models.ForeignKey(Subscriber, null=True, blank=True, on_delete=models.CASCADE, related_name="messages")
    template_version = models.ForeignKey(
        "notification_templates.TemplateVersion", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    locale = models.CharField(max_length=20, blank=True)
    recipient = models.CharField(max_length=320, blank=True, help_text="Address used: email, phone…")
    subject = models.CharField(max_length=1000, blank=True)
    body = models.TextField(blank=True)
    # Channel-specific content beside subject/body: the email's plain-text part ("text"), the
    # push/in-app "action_url", the webhook "payload", the event's "transaction_id"/"workflow".
    data = models.JSONField(default=dict, blank=True)
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.QUEUED)
    provider = models.CharField(max_length=50, blank=True)
    integration = models.ForeignKey(
        Integration,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="messages",
        help_text="Sent (or being sent, or possibly sent when in doubt) by",
    )
    provider_message_id = models.CharField(max_length=255, blank=True, db_index=True)
    error = models.TextField(blank=True)
    attempts = models.PositiveIntegerField(default=0)
    # A retry waiting for its backoff (or a rate-limit slot, or a circuit to close): the sweeper
    # re-drives queued messages whose time has come.
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    # Written just before each provider call and cleared when its answer is recorded: a message
    # left ``sending`` with this set died mid-call, so the provider may have it (in doubt).
    send_started_at = models.DateTimeField(null=True, blank=True)
    # How many times a send of this message ended in doubt. Once non-zero the message is only ever
    # sent again through ``integration`` (same idempotency key), never failed over.
    in_doubt_count = models.PositiveSmallIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)
    # Also the heartbeat of a send in progress (refreshed before every provider call and wait).
    updated_at = models.DateTimeField(auto_now=True)
    sent_at = models.DateTimeField(null=True, blank=True)
    delivered_at = models.DateTimeField(null=True, blank=True)
    opened_at = models.DateTimeField(null=True, blank=True)
    clicked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["run", "step_id", "channel"], name="uniq_message_per_run_step"),
        ]
        indexes = [
            models.Index(fields=["status", "updated_at"], name="message_status_idx"),
            models.Index(fields=["status", "next_attempt_at"], name="message_retry_idx"),
            models.Index(fields=["environment", "-id"], name="message_env_idx"),
            models.Index(fields=["environment", "status"], name="message_env_status_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.channel} message {self.pk} ({self.status})"


class DeliveryAttempt(models.Model):
    """One try at one provider: the audit row (status, response, duration)."""

    class Status(models.TextChoices):
        SUCCESS = "success"
        FAILED = "failed"
        IN_DOUBT = "in_doubt"  # no answer, but the provider may have accepted it

    message = models.ForeignKey(Message, on_delete=models.CASCADE, related_name="attempts_log")
    integration = models.ForeignKey(Integration, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    provider = models.CharField(max_length=50)
    status = models.CharField(max_length=20, choices=Status.choices)
    response_code = models.IntegerField(null=True, blank=True, help_text="HTTP status (or SMTP code) answered")
    error_kind = models.CharField(
        max_length=30,
        blank=True,
        help_text="timeout, connection_lost, worker_died, connection, rate_limited, server_error, invalid_address, …",
    )
    retryable = models.BooleanField(default=False)
    response = models.JSONField(default=dict, blank=True)
    error = models.TextField(blank=True)
    duration_ms = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]

    def __str__(self) -> str:
        return f"{self.provider} {self.status} for message {self.message_id}"


class MessageEvent(models.Model):
    """One status callback from a provider (Anymail tracking, Twilio status), raw payload kept.

    ``dedupe_key`` is unique per integration, so a callback delivered twice is stored once.
    ``applied`` says whether it moved the message (a late or duplicate one does not).
    """

    environment = models.ForeignKey(Environment, on_delete=models.CASCADE, related_name="+")
    integration = models.ForeignKey(Integration, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    message = models.ForeignKey(Message, null=True, blank=True, on_delete=models.CASCADE, related_name="events")
    provider = models.CharField(max_length=50)
    provider_message_id = models.CharField(max_length=255, blank=True)
    event_type = models.CharField(max_length=40, help_text="The provider's event, normalized (Anymail names)")
    status = models.CharField(max_length=20, blank=True, help_text="The message status this event means")
    dedupe_key = models.CharField(max_length=255)
    recipient = models.CharField(max_length=320, blank=True)
    description = models.TextField(blank=True)
    payload = models.JSONField(default=dict, blank=True)
    occurred_at = models.DateTimeField(null=True, blank=True)
    received_at = models.DateTimeField(auto_now_add=True)
    applied = models.BooleanField(default=False)

    class Meta:
        ordering = ["id"]
        constraints = [
            models.UniqueConstraint(fields=["environment", "provider", "dedupe_key"], name="uniq_message_event"),
        ]

    def __str__(self) -> str:
        return f"{self.provider} {self.event_type} for {self.provider_message_id}"


class Suppression(models.Model):
    """An address that must not be sent to again: a hard bounce, a complaint, an invalid number.

    Keyed by address (not subscriber) so it holds for every subscriber using that address and
    lifts by itself when the subscriber changes address.
    """

    environment = models.ForeignKey(Environment, on_delete=models.CASCADE, related_name="suppressions")
    channel = models.CharField(max_length=20, choices=CHANNEL_CHOICES)
    address = models.CharField(max_length=320)
    reason = models.CharField(max_length=40, help_text="bounced, complained, invalid_address, …")
    detail = models.TextField(blank=True)
    message = models.ForeignKey(Message, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["environment", "channel", "address"], name="uniq_suppression"),
        ]

    def __str__(self) -> str:
        return f"{self.channel} {self.address} ({self.reason})"
