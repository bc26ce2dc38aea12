from __future__ import annotations

from django.contrib import admin, messages
from django.db import transaction
from django.db.models import QuerySet
from django.http import HttpRequest
from django.urls import reverse
from django.utils.html import format_html
from django.utils.safestring import SafeString
from unfold.admin import ModelAdmin, TabularInline

from apps.core.admin import ReadOnlyAdmin, ReadOnlyInline, pretty_json, record_action
from apps.core.errors import ApiError
from apps.delivery.models import Message
from apps.workflows.editor import WorkflowEditorAdmin
from apps.workflows.models import (
    DigestBucket,
    DigestEntry,
    FrequencyCap,
    Run,
    StepRun,
    Workflow,
    WorkflowVersion,
)
from apps.workflows.reasons import reason_in_words
from apps.workflows.services import workflow_publish


class WorkflowVersionInline(TabularInline):
    model = WorkflowVersion
    extra = 0
    can_delete = False
    fields = readonly_fields = ("number", "category_key", "created_at")
    show_change_link = True

    def has_add_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False


@admin.register(Workflow)
class WorkflowAdmin(WorkflowEditorAdmin):  # the steps editor, its diagram, diff and rollback: editor.py
    list_display = ["key", "name", "environment", "category", "active", "use_latest_templates", "published_version"]
    list_filter = ["environment", "active"]
    search_fields = ["key", "name"]
    readonly_fields = ["steps_editor_link", "published_version", "created_at", "updated_at"]
    raw_id_fields = ["category"]
    inlines = [WorkflowVersionInline]
    actions = ["publish"]

    @admin.action(description="Publish the draft steps as a new version")
    def publish(self, request: HttpRequest, queryset: QuerySet[Workflow]) -> None:
        for workflow in queryset:
            try:
                version = workflow_publish(workflow=workflow)
            except ApiError as exc:
                self.message_user(request, f"{workflow.key}: {exc.detail} {exc.details}", messages.ERROR)
            else:
                record_action(self, request, [workflow], f"Published version {version.number} from the admin.")
                self.message_user(request, f"{workflow.key}: published v{version.number}", messages.SUCCESS)


@admin.register(WorkflowVersion)
class WorkflowVersionAdmin(ModelAdmin):
    list_display = ["workflow", "number", "created_at"]
    readonly_fields = ["workflow", "number", "steps", "category_key", "payload_schema", "created_at"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False


class StepRunInline(ReadOnlyInline):
    """The run's decisions, in order: what was decided, the machine-readable code and, when the
    step gave one, the reason in plain words."""

    model = StepRun
    verbose_name = "step decision"
    fields = readonly_fields = (
        "created_at",
        "step_id",
        "step_type",
        "decision",
        "reason_code",
        "reason_in_words",
        "detail_display",
    )

    @admin.display(description="reason code")
    def reason_code(self, obj: StepRun) -> str:
        return obj.reason or "—"

    @admin.display(description="in plain words")
    def reason_in_words(self, obj: StepRun) -> str:
        return reason_in_words(obj.reason, obj.detail)

    @admin.display(description="detail")
    def detail_display(self, obj: StepRun) -> SafeString | str:
        return pretty_json(obj.detail) if obj.detail else "—"


class RunMessageInline(ReadOnlyInline):
    """The messages the run created, each linking to its page (attempts, callbacks, the email)."""

    model = Message
    verbose_name = "message"
    fields = readonly_fields = ("message_link", "step_id", "channel", "status", "recipient", "provider", "sent_at")

    @admin.display(description="message")
    def message_link(self, obj: Message) -> SafeString:
        url = reverse("admin:delivery_message_change", args=[obj.pk])
        return format_html('<a href="{}">message {}</a>', url, obj.pk)


@admin.register(Run)
class RunAdmin(ReadOnlyAdmin):
    list_display = ["pk", "event", "subscriber", "status", "step_index", "resume_at", "created_at"]
    list_filter = ["status"]
    list_select_related = ["event", "subscriber"]
    search_fields = ["event__transaction_id", "subscriber__subscriber_id"]
    show_full_result_count = False
    fields = readonly_fields = (
        "event",
        "subscriber",
        "workflow_version",
        "status",
        "step_index",
        "resume_at",
        "attempts",
        "claim_token",
        "lease_until",
        "created_at",
        "updated_at",
        "completed_at",
        "step_results_display",
    )
    inlines = [StepRunInline, RunMessageInline]

    @admin.display(description="step results")
    def step_results_display(self, obj: Run) -> SafeString:
        return pretty_json(obj.step_results)


class DigestEntryInline(ReadOnlyInline):
    model = DigestEntry
    fields = readonly_fields = ("run", "step_id", "created_at", "content_display")

    @admin.display(description="content")
    def content_display(self, obj: DigestEntry) -> SafeString | str:
        return pretty_json(obj.content) if obj.content else "—"


@admin.register(DigestBucket)
class DigestBucketAdmin(ReadOnlyAdmin):
    """Digests as they collect: who, which key, how many events, when they close."""

    list_display = ["pk", "scope", "subscriber", "digest_key", "status", "entry_count", "closes_at", "leader_run"]
    list_filter = ["status", "environment"]
    search_fields = ["scope", "digest_key", "subscriber__subscriber_id"]
    readonly_fields = [f.name for f in DigestBucket._meta.fields]
    list_select_related = ["subscriber"]
    inlines = [DigestEntryInline]
    actions = ["flush"]

    @admin.action(description="Send the selected open digests now", permissions=["operate"])
    def flush(self, request: HttpRequest, queryset: QuerySet[DigestBucket]) -> None:
        from apps.core.tasks import enqueue_on_commit
        from apps.workflows.digests import digests_flush
        from apps.workflows.engine import ADVANCE_TASK, category_digests_send

        woken = 0
        flushed: list[DigestBucket] = []
        with transaction.atomic():
            for bucket in queryset.filter(status=DigestBucket.Status.OPEN):
                flushed.append(bucket)
                if bucket.workflow_id is None:
                    woken += category_digests_send(bucket_pks=[bucket.pk])
                    continue
                leaders = digests_flush(
                    environment_id=bucket.environment_id,
                    workflow_id=bucket.workflow_id,
                    subscriber_pk=bucket.subscriber_id,
                    key=bucket.digest_key,
                )
                if leaders:
                    enqueue_on_commit(ADVANCE_TASK, leaders)
                woken += len(leaders)
            record_action(self, request, flushed, "Sent now from the admin.")
        self.message_user(request, f"{woken} digest(s) sent.", messages.SUCCESS)


@admin.register(FrequencyCap)
class FrequencyCapAdmin(ModelAdmin):
    list_display = ["environment", "channel", "category", "limit", "window", "active"]
    list_filter = ["environment", "channel", "active"]
    raw_id_fields = ["category"]
