from __future__ import annotations

from django.contrib import admin
from django.db import models
from django.db.models import QuerySet
from django.http import HttpRequest

from apps.inbox.models import InboxMessage


class _StateFilter(admin.SimpleListFilter):
    """Filter on whether a timestamp field is set (read / seen / archived)."""

    field = ""

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list[tuple[str, str]]:
        return [("yes", "Yes"), ("no", "No")]

    def queryset(self, request: HttpRequest, queryset: QuerySet[InboxMessage]) -> QuerySet[InboxMessage]:
        if self.value() in ("yes", "no"):
            return queryset.filter(**{f"{self.field}__isnull": self.value() == "no"})
        return queryset


class ReadFilter(_StateFilter):
    title = "read"
    parameter_name = "read"
    field = "read_at"


class SeenFilter(_StateFilter):
    title = "seen"
    parameter_name = "seen"
    field = "seen_at"


class ArchivedFilter(_StateFilter):
    title = "archived"
    parameter_name = "archived"
    field = "archived_at"


class DeletedFilter(_StateFilter):
    title = "deleted"
    parameter_name = "deleted"
    field = "deleted_at"


@admin.register(InboxMessage)
class InboxMessageAdmin(admin.ModelAdmin):
    list_display = ["title", "subscriber", "environment", "category_key", "created_at", "is_read", "is_seen"]
    list_filter = [ReadFilter, SeenFilter, ArchivedFilter, DeletedFilter, "environment", "category_key", "created_at"]
    list_select_related = ["subscriber", "environment__project"]
    search_fields = ["title", "subscriber__subscriber_id", "workflow_key"]
    raw_id_fields = ["subscriber", "message"]
    date_hierarchy = "created_at"
    readonly_fields = ["created_at", "seq"]  # seq: the change cursor, stamped by the services
    ordering = ["-id"]
    formfield_overrides = {models.URLField: {"assume_scheme": "https"}}

    @admin.display(boolean=True, description="read", ordering="read_at")
    def is_read(self, obj: InboxMessage) -> bool:
        return obj.read_at is not None

    @admin.display(boolean=True, description="seen", ordering="seen_at")
    def is_seen(self, obj: InboxMessage) -> bool:
        return obj.seen_at is not None
