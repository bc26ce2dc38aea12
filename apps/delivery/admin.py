from django.contrib import admin

from apps.delivery.models import DeliveryAttempt, Integration, Message


@admin.register(Integration)
class IntegrationAdmin(admin.ModelAdmin):
    list_display = ["provider", "channel", "environment", "priority", "active"]
    list_filter = ["channel", "provider", "active", "environment"]


class DeliveryAttemptInline(admin.TabularInline):
    model = DeliveryAttempt
    extra = 0
    can_delete = False
    fields = ["provider", "status", "error", "duration_ms", "response", "created_at"]
    readonly_fields = fields


@admin.register(Message)
class MessageAdmin(admin.ModelAdmin):
    list_display = ["pk", "channel", "recipient", "status", "provider", "created_at"]
    list_filter = ["status", "channel", "provider"]
    search_fields = ["recipient", "provider_message_id", "run__event__transaction_id"]
    raw_id_fields = ["run", "subscriber", "template_version"]
    inlines = [DeliveryAttemptInline]
