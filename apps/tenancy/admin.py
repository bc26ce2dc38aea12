from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from apps.core.admin import record_action
from apps.tenancy.models import ApiKey, Environment, Project
from apps.tenancy.origins import allowed_origins_forget, origin_entry_valid
from apps.tenancy.services import (
    api_key_revoke,
    environment_default_layout_create,
    environment_inbox_secret_rotate,
)


@admin.register(Project)
class ProjectAdmin(admin.ModelAdmin):
    list_display = ["name", "slug", "created_at"]
    prepopulated_fields = {"slug": ["name"]}


class ApiKeyInline(admin.TabularInline):
    model = ApiKey
    extra = 0
    can_delete = False
    fields = readonly_fields = ("kind", "name", "prefix", "last_four", "created_at", "last_used_at", "revoked_at")

    def has_add_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False


class EnvironmentForm(forms.ModelForm):
    currency = forms.CharField(
        max_length=3,
        required=False,
        help_text="ISO 4217 code the savings report prices messages in, e.g. USD or EUR "
        "(empty: unchanged; USD for a new environment).",
    )

    class Meta:
        model = Environment
        fields = [
            "project",
            "name",
            "slug",
            "allowed_origins",
            "branding",
            "currency",
            "track_opens",
            "track_clicks",
            "track_critical",
        ]
        help_texts = {
            "allowed_origins": 'Sites that may embed the inbox, e.g. ["https://app.example.com", '
            '"https://*.example.com", "http://localhost:3000"]. Empty: any site.'
        }

    def clean_allowed_origins(self) -> list[str]:
        value: Any = self.cleaned_data.get("allowed_origins") or []
        if not isinstance(value, list):
            raise forms.ValidationError('A list of origins, e.g. ["https://app.example.com"].')
        bad = [entry for entry in value if not origin_entry_valid(entry)]
        if bad:
            raise forms.ValidationError(
                f"Not an origin (scheme://host[:port], or scheme://*.domain): {', '.join(map(str, bad))}"
            )
        return [entry.strip().rstrip("/").lower() for entry in value]

    def clean_currency(self) -> str:
        value = (self.cleaned_data.get("currency") or "").strip().upper()
        if not value:
            return self.instance.currency if self.instance.pk else "USD"
        if len(value) != 3 or not value.isascii() or not value.isalpha():
            raise forms.ValidationError("Three letters (ISO 4217), e.g. USD or EUR.")
        return value


@admin.register(Environment)
class EnvironmentAdmin(admin.ModelAdmin):
    form = EnvironmentForm
    list_display = ["name", "project", "slug", "currency", "track_opens", "track_clicks", "created_at"]
    list_filter = ["project"]
    readonly_fields = ["inbox_hmac_secret", "created_at"]
    inlines = [ApiKeyInline]
    actions = ["rotate_inbox_secret"]

    def save_model(self, request: HttpRequest, obj: Environment, form: Any, change: bool) -> None:
        super().save_model(request, obj, form, change)
        if not change:
            environment_default_layout_create(environment=obj)
        allowed_origins_forget(obj.pk)  # this process at once; the others within their cache time

    @admin.action(description="Rotate the inbox HMAC secret (ends open inbox sessions)")
    def rotate_inbox_secret(self, request: HttpRequest, queryset: QuerySet[Environment]) -> None:
        rotated = 0
        for environment in queryset:
            environment_inbox_secret_rotate(environment=environment)
            record_action(self, request, [environment], "Rotated the inbox HMAC secret from the admin.")
            rotated += 1
        self.message_user(
            request,
            f"Rotated the inbox HMAC secret of {rotated} environment(s): sign subscriber ids with the new one.",
            messages.SUCCESS,
        )


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):
    list_display = ["__str__", "name", "kind", "environment", "created_at", "last_used_at", "revoked_at"]
    list_filter = ["kind", "environment"]
    readonly_fields = [
        "environment",
        "kind",
        "prefix",
        "last_four",
        "key_hash",
        "created_at",
        "last_used_at",
        "revoked_at",
    ]
    actions = ["revoke"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        # Keys are issued by `create_environment` or the API so the raw value can be shown once.
        return False

    @admin.action(description="Revoke selected keys")
    def revoke(self, request: HttpRequest, queryset: QuerySet[ApiKey]) -> None:
        revoked = 0
        for key in queryset.filter(revoked_at__isnull=True):
            api_key_revoke(api_key=key)
            record_action(self, request, [key], "Revoked from the admin.")
            revoked += 1
        self.message_user(request, f"Revoked {revoked} key(s).", messages.SUCCESS)
