from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models

from apps.preferences.models import Category
from apps.subscribers.models import Subscriber
from apps.templates.models import Template
from apps.tenancy.models import Environment


class Workflow(models.Model):
    """A named flow. Its steps are edited as a draft and frozen into numbered versions."""

    environment = models.ForeignKey(Environment, on_delete=models.CASCADE, related_name="workflows")
    key = models.SlugField(max_length=100)
    name = models.CharField(max_length=200)
    description = models.TextField(blank=True)
    category = models.ForeignKey(Category, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    active = models.BooleanField(default=True)
    # Off: a run renders the template versions that were published when its event's fan-out
    # started, even after a delay. On: every message renders the version published at send time.
    use_latest_templates = models.BooleanField(default=False)
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
    # Why it was published (the editor's "what changed", a rollback's origin), and by whom (None: the API).
    note = models.CharField(max_length=500, blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-number"]
        constraints = [models.UniqueConstraint(fields=["workflow", "number"], name="uniq_workflow_version")]

    def __str__(self) -> str:
        return f"{self.workflow.key} v{self.number}"


class WorkflowTemplateReference(models.Model):
    """A template the workflow's published version uses: written at publish (``workflow_publish``),
    read by the templates' "used by" (``template_references``). A template in use cannot be deleted."""

    workflow = models.ForeignKey(Workflow, on_delete=models.CASCADE, related_name="template_references")
    template = models.ForeignKey(Template, on_delete=models.RESTRICT, related_name="workflow_references")

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["workflow", "template"], name="uniq_workflow_template_reference")
        ]

    def __str__(self) -> str:
        return f"workflow “{self.workflow.key}” uses template “{self.template.key}”"


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
            # pending runs by when they were last (re)enqueued: the ticker's stalled-wake-up check
            models.Index(fields=["updated_at"], condition=models.Q(status="pending"), name="run_pending_updated_idx"),
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
        HELD = "held"  # over a frequency cap: kept for the category's next digest

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


class DigestBucket(models.Model):
    """Events collected for one subscriber under one scope until the digest closes.

    ``scope`` names what collects: ``wf:<workflow id>:<step id>:<digest key>`` for a digest step,
    ``cat:<category>:<channel>`` for messages held back by a frequency cap. At most one bucket
    per (subscriber, scope) is open at a time — a partial unique constraint — so concurrent
    events merge into the same bucket by construction, with no lock outside the database.
    """

    class Status(models.TextChoices):
        OPEN = "open"  # accepting events
        CLOSING = "closing"  # full or flushed: no more events; its sender is due
        SENT = "sent"  # the digest went out (the leader run continued)
        EMPTY = "empty"  # closed with nothing left to send (look-back pass-through, cancellations)

    environment = models.ForeignKey(Environment, on_delete=models.CASCADE, related_name="+")
    subscriber = models.ForeignKey(Subscriber, on_delete=models.CASCADE, related_name="digest_buckets")
    workflow = models.ForeignKey(Workflow, null=True, blank=True, on_delete=models.CASCADE, related_name="+")
    scope = models.CharField(max_length=400)
    step_id = models.CharField(max_length=100, blank=True)
    digest_key = models.CharField(max_length=255, blank=True)
    category_key = models.CharField(max_length=100, blank=True)
    channel = models.CharField(max_length=20, blank=True)
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.OPEN)
    # The run that sends the digest when the bucket closes; the other members wait until then.
    leader_run = models.ForeignKey(Run, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    max_events = models.PositiveIntegerField(null=True, blank=True)
    entry_count = models.PositiveIntegerField(default=0)
    opened_at = models.DateTimeField()
    closes_at = models.DateTimeField()
    last_event_at = models.DateTimeField()
    closed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["subscriber", "scope"], condition=models.Q(status="open"), name="uniq_open_digest_bucket"
            ),
        ]
        indexes = [
            models.Index(fields=["status", "closes_at"], name="digest_status_closes_idx"),
            models.Index(fields=["subscriber", "scope", "-id"], name="digest_scope_idx"),
        ]

    def __str__(self) -> str:
        return f"digest {self.pk} {self.scope} ({self.status}, {self.entry_count})"


class DigestEntry(models.Model):
    """One event (a run) in a digest bucket; ``content`` holds a message held back by a cap."""

    bucket = models.ForeignKey(DigestBucket, on_delete=models.CASCADE, related_name="entries")
    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="digest_entries")
    step_id = models.CharField(max_length=100)
    content = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["bucket", "run", "step_id"], name="uniq_digest_entry"),
        ]
        indexes = [models.Index(fields=["run"], name="digest_entry_run_idx")]

    def __str__(self) -> str:
        return f"run {self.run_id} in digest {self.bucket_id}"


class LimitScope(models.Model):
    """A counter's lock row: throttles and frequency caps lock it, count their hits, then add one."""

    environment = models.ForeignKey(Environment, on_delete=models.CASCADE, related_name="+")
    key = models.CharField(max_length=400)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["environment", "key"], name="uniq_limit_scope")]

    def __str__(self) -> str:
        return self.key


class LimitHit(models.Model):
    """One counted occurrence; ``hit_key`` (run and step) makes counting the same thing twice a no-op."""

    scope = models.ForeignKey(LimitScope, on_delete=models.CASCADE, related_name="hits")
    hit_key = models.CharField(max_length=200)
    created_at = models.DateTimeField()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["scope", "hit_key"], name="uniq_limit_hit")]
        indexes = [models.Index(fields=["scope", "created_at"], name="limit_hit_window_idx")]

    def __str__(self) -> str:
        return f"{self.scope_id}:{self.hit_key}"


class FrequencyCap(models.Model):
    """At most ``limit`` messages per subscriber per ``window`` on a channel (optionally one category).

    Messages over the cap are held for the subscriber's next digest of that category, never dropped;
    critical categories bypass caps.
    """

    environment = models.ForeignKey(Environment, on_delete=models.CASCADE, related_name="frequency_caps")
    channel = models.CharField(max_length=20)
    category = models.ForeignKey(Category, null=True, blank=True, on_delete=models.CASCADE, related_name="+")
    limit = models.PositiveIntegerField()
    window = models.CharField(max_length=20, help_text="A duration: 1h, 1d, PT12H…")
    active = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["environment", "channel", "category"], name="uniq_frequency_cap"),
            models.UniqueConstraint(
                fields=["environment", "channel"],
                condition=models.Q(category__isnull=True),
                name="uniq_frequency_cap_any_category",
            ),
        ]

    def __str__(self) -> str:
        scope = f" ({self.category.key})" if self.category is not None else ""
        return f"{self.channel}{scope}: {self.limit} per {self.window}"
