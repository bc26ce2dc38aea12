from __future__ import annotations

from django.db import models

from apps.tenancy.models import Environment


class Event(models.Model):
    """One trigger call. The transaction id makes a repeated trigger a no-op."""

    class Status(models.TextChoices):
        PENDING = "pending"  # accepted, fan-out not finished
        PROCESSED = "processed"  # every recipient has a run
        CANCELLED = "cancelled"
        FAILED = "failed"

    environment = models.ForeignKey(Environment, on_delete=models.CASCADE, related_name="events")
    transaction_id = models.CharField(max_length=200)
    workflow = models.ForeignKey("workflows.Workflow", on_delete=models.PROTECT, related_name="events")
    workflow_version = models.ForeignKey("workflows.WorkflowVersion", on_delete=models.PROTECT, related_name="+")
    payload = models.JSONField(default=dict, blank=True)
    actor = models.JSONField(null=True, blank=True)
    # The recipients as given: subscriber ids and {"topic": key} entries (inline subscriber
    # objects are upserted on trigger and stored here by id).
    recipients = models.JSONField(default=list)
    # Given at trigger time; cancelling by this key stops the event's runs that are still waiting.
    cancellation_key = models.CharField(max_length=200, blank=True)
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.PENDING)
    error = models.TextField(blank=True)
    recipient_count = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    processed_at = models.DateTimeField(null=True, blank=True)
    # The worker fanning the event out holds this lease and renews it; a lease that ran out means
    # that worker died, and the ticker hands the event to another one.
    fanout_lease_until = models.DateTimeField(null=True, blank=True)
    # When the ticker last enqueued the fan-out of an event nobody has claimed (its wake-up was lost).
    redriven_at = models.DateTimeField(null=True, blank=True)
    # template key -> TemplateVersion pk, fixed when the fan-out starts: every run of the event
    # renders these versions, even after a wait during which a new version was published.
    template_versions = models.JSONField(default=dict, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["environment", "transaction_id"], name="uniq_event_transaction"),
        ]
        indexes = [
            models.Index(fields=["status", "created_at"], name="event_status_idx"),
            models.Index(
                fields=["fanout_lease_until"],
                condition=models.Q(status="pending", fanout_lease_until__isnull=False),
                name="event_fanout_lease_idx",
            ),
            models.Index(
                fields=["environment", "cancellation_key"],
                condition=~models.Q(cancellation_key=""),
                name="event_cancellation_key_idx",
            ),
        ]

    def __str__(self) -> str:
        return self.transaction_id


class IdempotencyRecord(models.Model):
    """The first response to a request carrying an ``Idempotency-Key``, replayed on retries."""

    environment = models.ForeignKey(Environment, on_delete=models.CASCADE, related_name="+")
    key = models.CharField(max_length=255)
    request_fingerprint = models.CharField(max_length=64)
    method = models.CharField(max_length=10)
    path = models.CharField(max_length=500)
    response_status = models.PositiveSmallIntegerField()
    response_body = models.JSONField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["environment", "key"], name="uniq_idempotency_key")]

    def __str__(self) -> str:
        return f"{self.method} {self.path} [{self.key}]"
