from __future__ import annotations

from django.contrib import admin

from apps.subscribers.models import Device, Subscriber, Topic, TopicSubscription


@admin.register(Subscriber)
class SubscriberAdmin(admin.ModelAdmin):
    list_display = ["subscriber_id", "email", "first_name", "last_name", "locale", "environment", "created_at"]
    list_filter = ["environment"]
    search_fields = ["subscriber_id", "email"]
    list_select_related = ["environment"]
    readonly_fields = ["created_at", "updated_at"]
    show_full_result_count = False


class TopicSubscriptionInline(admin.TabularInline):
    model = TopicSubscription
    extra = 0
    raw_id_fields = ["subscriber"]
    readonly_fields = ["created_at"]


@admin.register(Topic)
class TopicAdmin(admin.ModelAdmin):
    list_display = ["key", "name", "environment", "created_at"]
    list_filter = ["environment"]
    search_fields = ["key", "name"]
    list_select_related = ["environment"]
    inlines = [TopicSubscriptionInline]


@admin.register(Device)
class DeviceAdmin(admin.ModelAdmin):
    list_display = ["__str__", "provider", "name", "environment", "created_at"]
    list_filter = ["provider", "environment"]
    search_fields = ["subscriber__subscriber_id", "name"]
    list_select_related = ["subscriber"]
    raw_id_fields = ["subscriber"]
    readonly_fields = ["created_at", "updated_at"]
