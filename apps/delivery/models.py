from __future__ import annotations

from django.db import models

from apps.preferences.models import CHANNEL_CHOICES
from apps.subscribers.models import Subscriber
from apps.tenancy.models import Environment


class Integration(models.Model):
    """A configured provider for one channel. Lower priority numbers are tried first."""

    environment = models.ForeignKey(Environment, on_delete=models.CASCADE, related_name="integrations")
    channel = models.CharField(max_length=20, choices=CHANNEL_CHOICES)
    provider = models.CharField(max_length=50, help_text="e.g. smtp, sendgrid, mailgun, postmark, ses")
    name = models.CharField(max_length=200, blank=True)
    credentials = models.JSONField(default=dict, blank=True)
    settings = models.JSONField(default=dict, blank=True, help_text="Sender settings, e.g. from_email")
    priority = models.PositiveIntegerField(default=0)
    active = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)

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
        SENT = "sent"
        DELIVERED = "delivered"
        READ = "read"
        BOUNCED = "bounced"
        FAILED = "failed"

    TERMINAL_STATUSES = (Status.DELIVERED, Status.READ, Status.BOUNCED, Status.FAILED)

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
    provider_message_id = models.CharField(max_length=255, blank=True, db_index=True)
    error = models.TextField(blank=True)
    attempts = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    sent_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["run", "step_id", "channel"], name="uniq_message_per_run_step"),
        ]
        indexes = [
            models.Index(fields=["status", "updated_at"], name="message_status_idx"),
            models.Index(fields=["environment", "-id"], name="message_env_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.channel} message {self.pk} ({self.status})"


class DeliveryAttempt(models.Model):
    """One try at one provider: the audit row (status, response, duration)."""

    class Status(models.TextChoices):
        SUCCESS = "success"
        FAILED = "failed"

    message = models.ForeignKey(Message, on_delete=models.CASCADE, related_name="attempts_log")
    integration = models.ForeignKey(Integration, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    provider = models.CharField(max_length=50)
    status = models.CharField(max_length=20, choices=Status.choices)
    response = models.JSONField(default=dict, blank=True)
    error = models.TextField(blank=True)
    duration_ms = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]

    def __str__(self) -> str:
        return f"{self.provider} {self.status} for message {self.message_id}"
