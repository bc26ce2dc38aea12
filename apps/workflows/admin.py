from __future__ import annotations

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from apps.core.errors import ApiError
from apps.workflows.models import Run, StepRun, Workflow, WorkflowVersion
from apps.workflows.services import workflow_publish


class WorkflowVersionInline(admin.TabularInline):
    model = WorkflowVersion
    extra = 0
    can_delete = False
    fields = ["number", "category_key", "created_at"]
    readonly_fields = fields
    show_change_link = True

    def has_add_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False


@admin.register(Workflow)
class WorkflowAdmin(admin.ModelAdmin):
    list_display = ["key", "name", "environment", "category", "active", "published_version"]
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
    fields = ["step_id", "step_type", "decision", "reason", "detail", "created_at"]
    readonly_fields = fields


@admin.register(Run)
class RunAdmin(admin.ModelAdmin):
    list_display = ["pk", "event", "subscriber", "status", "step_index", "resume_at", "created_at"]
    list_filter = ["status"]
    search_fields = ["event__transaction_id", "subscriber__subscriber_id"]
    raw_id_fields = ["event", "subscriber", "workflow_version"]
    readonly_fields = ["step_results", "claim_token", "lease_until", "attempts", "completed_at"]
    inlines = [StepRunInline]
