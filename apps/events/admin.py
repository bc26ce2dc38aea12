from django.contrib import admin

from apps.events.models import Event


@admin.register(Event)
class EventAdmin(admin.ModelAdmin):
    list_display = ["transaction_id", "workflow", "environment", "status", "recipient_count", "created_at"]
    list_filter = ["status", "environment"]
    search_fields = ["transaction_id"]
    raw_id_fields = ["workflow", "workflow_version"]
    readonly_fields = ["payload", "actor", "recipients", "created_at", "processed_at"]
