from __future__ import annotations

import uuid

from django.db import models

from apps.preferences.models import Category
from apps.subscribers.models import Subscriber
from apps.tenancy.models import Environment


class Workflow(models.Model):
    """A named flow. Its steps are edited as a draft and frozen into numbered versions."""

    environment = models.ForeignKey(Environment, on_delete=models.CASCADE, related_name="workflows")
    key = models.SlugField(max_length=100)
    name = models.CharField(max_length=200)
    description = models.TextField(blank=True)
    category = models.ForeignKey(Category, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    active = models.BooleanField(default=True)
    draft_steps = models.JSONField(default=list, blank=True)
    payload_schema = models.JSONField(null=True, blank=True)
    published_version = models.ForeignKey(
        "WorkflowVersion", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["environment", "key"], name="uniq_workflow_per_env")]

    def __str__(self) -> str:
        return self.key


class WorkflowVersion(models.Model):
    """An immutable, published definition. Runs pin the version they started on."""

    workflow = models.ForeignKey(Workflow, on_delete=models.CASCADE, related_name="versions")
    number = models.PositiveIntegerField()
    steps = models.JSONField()
    category_key = models.CharField(max_length=100, blank=True)
    payload_schema = models.JSONField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-number"]
        constraints = [models.UniqueConstraint(fields=["workflow", "number"], name="uniq_workflow_version")]

    def __str__(self) -> str:
        return f"{self.workflow.key} v{self.number}"


class Run(models.Model):
    """One event × one subscriber going through one workflow version; durable engine state."""

    class Status(models.TextChoices):
        PENDING = "pending"
        RUNNING = "running"
        WAITING = "waiting"
        COMPLETED = "completed"
        CANCELLED = "cancelled"
        FAILED = "failed"

    ACTIVE_STATUSES = (Status.PENDING, Status.RUNNING, Status.WAITING)

    environment = models.ForeignKey(Environment, on_delete=models.CASCADE, related_name="+")
    event = models.ForeignKey("events.Event", on_delete=models.CASCADE, related_name="runs")
    workflow_version = models.ForeignKey(WorkflowVersion, on_delete=models.PROTECT, related_name="runs")
    subscriber = models.ForeignKey(Subscriber, on_delete=models.CASCADE, related_name="runs")
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.PENDING)
    step_index = models.PositiveIntegerField(default=0, help_text="Index of the next step to execute")
    resume_at = models.DateTimeField(null=True, blank=True)
    step_results = models.JSONField(default=dict, blank=True)
    # A worker claims runs by writing its own token and a lease; a lease that runs out means
    # the worker died and the sweeper may hand the run to another worker.
    claim_token = models.UUIDField(null=True, blank=True)
    lease_until = models.DateTimeField(null=True, blank=True)
    attempts = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    completed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["event", "subscriber"], name="uniq_run_per_event_subscriber")]
        indexes = [
            models.Index(fields=["status", "resume_at"], name="run_status_resume_idx"),
            models.Index(fields=["status", "lease_until"], name="run_status_lease_idx"),
            models.Index(fields=["subscriber", "-id"], name="run_subscriber_idx"),
        ]

    def __str__(self) -> str:
        return f"run {self.pk} ({self.status})"

    @staticmethod
    def new_claim_token() -> uuid.UUID:
        return uuid.uuid4()


class StepRun(models.Model):
    """One decision taken for a run: the trace that answers "why did (or didn't) this send?"."""

    class Decision(models.TextChoices):
        EXECUTED = "executed"
        SKIPPED = "skipped"
        WAITING = "waiting"
        RESUMED = "resumed"
        FAILED = "failed"
        CANCELLED = "cancelled"

    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="step_runs")
    step_id = models.CharField(max_length=100)
    step_type = models.CharField(max_length=30)
    decision = models.CharField(max_length=20, choices=Decision.choices)
    reason = models.CharField(max_length=60, blank=True)
    detail = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]
        indexes = [models.Index(fields=["run", "id"], name="steprun_run_idx")]

    def __str__(self) -> str:
        return f"{self.step_id}: {self.decision} ({self.reason})"
