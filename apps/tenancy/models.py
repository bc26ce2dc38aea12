from __future__ import annotations

import secrets

from django.db import models

from apps.core.fields import EncryptedTextField


def _new_inbox_secret() -> str:
    return secrets.token_urlsafe(32)


class Project(models.Model):
    name = models.CharField(max_length=200)
    slug = models.SlugField(max_length=100, unique=True)
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return self.name


class Environment(models.Model):
    """The isolation boundary: every domain row belongs to exactly one environment."""

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="environments")
    name = models.CharField(max_length=200)
    slug = models.SlugField(max_length=100, unique=True)
    # Customers' backends sign subscriber ids with this secret (HMAC-SHA256) so the inbox
    # widget can prove who it is showing messages for. It must be readable to verify, so it is
    # encrypted at rest (CLARION_ENCRYPTION_KEYS) rather than hashed.
    inbox_hmac_secret = EncryptedTextField(default=_new_inbox_secret)
    allowed_origins = models.JSONField(default=list, blank=True)
    # Stamped into every inbox session token (apps.inbox.auth); revoking a key of the environment
    # or rotating the HMAC secret bumps it, which ends every open inbox session at once.
    inbox_session_version = models.PositiveIntegerField(default=1)
    branding = models.JSONField(default=dict, blank=True)
    # Retention (apps.core.retention prunes on a schedule): how many days rows are kept once they
    # are finished; 0 keeps them forever. See docs/deployment.md#retention.
    retention_trace_days = models.PositiveIntegerField(
        default=90, help_text="Finished events, runs, step runs and closed digests: days kept (0: forever)."
    )
    retention_messages_days = models.PositiveIntegerField(
        default=90, help_text="Messages in a final state: days kept after their last change (0: forever)."
    )
    retention_delivery_days = models.PositiveIntegerField(
        default=30, help_text="Delivery attempts and provider callbacks: days kept (0: forever)."
    )
    retention_inbox_days = models.PositiveIntegerField(
        default=180, help_text="Inbox messages: days kept after they were archived or deleted (0: forever)."
    )
    # The savings report prices messages in this currency (ISO 4217); see docs/analytics.md.
    currency = models.CharField(max_length=3, default="USD", help_text="ISO 4217 code, e.g. USD, EUR")
    # Clarion's own email open and click tracking (an open pixel, links through a signed redirect),
    # for providers that don't report them. Each template may turn it off (or on) for itself.
    track_opens = models.BooleanField(default=False, help_text="Add an open pixel to emails.")
    track_clicks = models.BooleanField(default=False, help_text="Send email links through Clarion's redirect.")
    track_critical = models.BooleanField(
        default=False, help_text="Also track emails of critical categories (off: they are never rewritten)."
    )
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"{self.project.name} / {self.name}"


class ApiKey(models.Model):
    class Kind(models.TextChoices):
        SECRET = "secret", "Secret (server API)"
        PUBLISHABLE = "publishable", "Publishable (inbox)"

    environment = models.ForeignKey(Environment, on_delete=models.CASCADE, related_name="api_keys")
    kind = models.CharField(max_length=20, choices=Kind.choices)
    name = models.CharField(max_length=200, blank=True)
    prefix = models.CharField(max_length=12, help_text="The visible start of the key, e.g. sk_live_ab")
    last_four = models.CharField(max_length=4)
    key_hash = models.CharField(max_length=64, unique=True, help_text="SHA-256 of the full key")
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        verbose_name = "API key"

    def __str__(self) -> str:
        return f"{self.prefix}…{self.last_four}"

    @property
    def is_active(self) -> bool:
        return self.revoked_at is None
