from __future__ import annotations

from django.db import models

from apps.inbox.sequence import inbox_seq_next
from apps.subscribers.models import Subscriber
from apps.tenancy.models import Environment


class InboxMessage(models.Model):
    """One in-app notification in a subscriber's inbox."""

    environment = models.ForeignKey(Environment, on_delete=models.CASCADE, related_name="+")
    subscriber = models.ForeignKey(Subscriber, on_delete=models.CASCADE, related_name="inbox_messages")
    message = models.OneToOneField(
        "delivery.Message", null=True, blank=True, on_delete=models.SET_NULL, related_name="inbox_message"
    )
    workflow_key = models.CharField(max_length=100, blank=True)
    category_key = models.CharField(max_length=100, blank=True)
    title = models.CharField(max_length=1000, blank=True)
    body = models.TextField(blank=True)
    action_url = models.CharField(max_length=2000, blank=True)
    avatar = models.URLField(max_length=1000, blank=True)
    data = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    seen_at = models.DateTimeField(null=True, blank=True)
    read_at = models.DateTimeField(null=True, blank=True)
    archived_at = models.DateTimeField(null=True, blank=True)
    snoozed_until = models.DateTimeField(null=True, blank=True, help_text="Hidden from the inbox until then.")
    # A tombstone: the content is blanked and the row kept so the change feed can tell clients.
    deleted_at = models.DateTimeField(null=True, blank=True)
    # [{"id": "a1", "label": "Accept", "url": "https://...", "kind": "primary"|"secondary", "completed_at": null}]
    actions = models.JSONField(default=list, blank=True)
    tags = models.JSONField(default=list, blank=True)
    # The change cursor (see apps.inbox.sequence): stamped on create and on every change.
    seq = models.BigIntegerField(default=inbox_seq_next)

    class Meta:
        indexes = [
            models.Index(fields=["subscriber", "-id"], name="inbox_subscriber_cursor_idx"),
            models.Index(fields=["subscriber", "seq"], name="inbox_subscriber_seq_idx"),
        ]

    def __str__(self) -> str:
        return self.title or f"inbox message {self.pk}"
