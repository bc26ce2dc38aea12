from __future__ import annotations

from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils.safestring import SafeString

from apps.core.admin import ReadOnlyAdmin, pretty_json
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
class InboxMessageAdmin(ReadOnlyAdmin):
    """What a subscriber's inbox holds and its state (seen, read, archived): changed only by the
    subscriber, through the inbox API and widget, never forged from the admin."""

    list_display = ["title", "subscriber", "environment", "category_key", "created_at", "is_read", "is_seen"]
    list_filter = [ReadFilter, SeenFilter, ArchivedFilter, DeletedFilter, "environment", "category_key", "created_at"]
    list_select_related = ["subscriber", "environment__project"]
    search_fields = ["title", "subscriber__subscriber_id", "workflow_key"]
    date_hierarchy = "created_at"
    ordering = ["-id"]
    show_full_result_count = False

    fields = readonly_fields = (
        "environment",
        "subscriber",
        "message",
        "workflow_key",
        "category_key",
        "title",
        "body",
        "action_url",
        "avatar",
        "data_display",
        "actions_display",
        "tags_display",
        "created_at",
        "seen_at",
        "read_at",
        "archived_at",
        "snoozed_until",
        "deleted_at",
        "seq",  # the change cursor, stamped by the services
    )

    @admin.display(description="data")
    def data_display(self, obj: InboxMessage) -> SafeString:
        return pretty_json(obj.data)

    @admin.display(description="actions")
    def actions_display(self, obj: InboxMessage) -> SafeString:
        return pretty_json(obj.actions)

    @admin.display(description="tags")
    def tags_display(self, obj: InboxMessage) -> SafeString:
        return pretty_json(obj.tags)

    @admin.display(boolean=True, description="read", ordering="read_at")
    def is_read(self, obj: InboxMessage) -> bool:
        return obj.read_at is not None

    @admin.display(boolean=True, description="seen", ordering="seen_at")
    def is_seen(self, obj: InboxMessage) -> bool:
        return obj.seen_at is not None
