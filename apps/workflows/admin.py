from __future__ import annotations

from django.contrib import admin, messages
from django.db import transaction
from django.db.models import QuerySet
from django.http import HttpRequest

from apps.core.errors import ApiError
from apps.workflows.models import DigestBucket, FrequencyCap, Run, StepRun, Workflow, WorkflowVersion
from apps.workflows.services import workflow_publish


class WorkflowVersionInline(admin.TabularInline):
    model = WorkflowVersion
    extra = 0
    can_delete = False
    fields = readonly_fields = ("number", "category_key", "created_at")
    show_change_link = True

    def has_add_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False


@admin.register(Workflow)
class WorkflowAdmin(admin.ModelAdmin):
    list_display = ["key", "name", "environment", "category", "active", "use_latest_templates", "published_version"]
    list_filter = ["environment", "active"]
    search_fields = ["key", "name"]
    readonly_fields = ["published_version", "created_at", "updated_at"]
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
                self.message_user(request, f"{workflow.key}: published v{version.number}", messages.SUCCESS)


@admin.register(WorkflowVersion)
class WorkflowVersionAdmin(admin.ModelAdmin):
    list_display = ["workflow", "number", "created_at"]
    readonly_fields = ["workflow", "number", "steps", "category_key", "payload_schema", "created_at"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False


class StepRunInline(admin.TabularInline):
    model = StepRun
    extra = 0
    can_delete = False
    fields = readonly_fields = ("step_id", "step_type", "decision", "reason", "detail", "created_at")


@admin.register(Run)
class RunAdmin(admin.ModelAdmin):
    list_display = ["pk", "event", "subscriber", "status", "step_index", "resume_at", "created_at"]
    list_filter = ["status"]
    search_fields = ["event__transaction_id", "subscriber__subscriber_id"]
    raw_id_fields = ["event", "subscriber", "workflow_version"]
    readonly_fields = ["step_results", "claim_token", "lease_until", "attempts", "completed_at"]
    inlines = [StepRunInline]


@admin.register(DigestBucket)
class DigestBucketAdmin(admin.ModelAdmin):
    """Digests as they collect: who, which key, how many events, when they close."""

    list_display = ["pk", "scope", "subscriber", "digest_key", "status", "entry_count", "closes_at", "leader_run"]
    list_filter = ["status", "environment"]
    search_fields = ["scope", "digest_key", "subscriber__subscriber_id"]
    readonly_fields = [f.name for f in DigestBucket._meta.fields]
    list_select_related = ["subscriber"]
    actions = ["flush"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    @admin.action(description="Send the selected open digests now")
    def flush(self, request: HttpRequest, queryset: QuerySet[DigestBucket]) -> None:
        from apps.core.tasks import enqueue_on_commit
        from apps.workflows.digests import digests_flush
        from apps.workflows.engine import ADVANCE_TASK, category_digests_send

        woken = 0
        with transaction.atomic():
            for bucket in queryset.filter(status=DigestBucket.Status.OPEN):
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
        self.message_user(request, f"{woken} digest(s) sent.", messages.SUCCESS)


@admin.register(FrequencyCap)
class FrequencyCapAdmin(admin.ModelAdmin):
    list_display = ["environment", "channel", "category", "limit", "window", "active"]
    list_filter = ["environment", "channel", "active"]
    raw_id_fields = ["category"]
