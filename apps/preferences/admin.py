from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin
from django.http import HttpRequest
from django.utils.safestring import SafeString
from unfold.admin import ModelAdmin

from apps.core.admin import ReadOnlyAdmin, pretty_json
from apps.core.schedule import ScheduleError, parse_schedule
from apps.preferences.models import (
    IN_DOUBT_AUTO,
    IN_DOUBT_POLICY_CHOICES,
    SUBSCRIBER_CHANNELS,
    Category,
    CategoryFrequency,
    Preference,
    PreferenceChange,
    QuietHours,
    WorkflowPreference,
)


class CategoryAdminForm(forms.ModelForm):
    in_doubt_policy = forms.ChoiceField(
        choices=IN_DOUBT_POLICY_CHOICES,
        required=False,
        initial=IN_DOUBT_AUTO,
        help_text=Category._meta.get_field("in_doubt_policy").help_text,
    )

    class Meta:
        model = Category
        fields = [
            "environment",
            "key",
            "name",
            "description",
            "critical",
            "default_channels",
            "order",
            "digest_schedule",
            "digest_templates",
            "in_doubt_policy",
        ]
        help_texts = {
            "default_channels": 'Channel → on by default, e.g. {"email": true, "sms": false}. '
            f"A channel left out is on. Channels: {', '.join(SUBSCRIBER_CHANNELS)}.",
        }

    def clean_default_channels(self) -> dict[str, bool]:
        value = self.cleaned_data.get("default_channels") or {}
        if not isinstance(value, dict):
            raise forms.ValidationError("Enter a JSON object of channel → true/false.")
        unknown = sorted(set(value) - set(SUBSCRIBER_CHANNELS))
        if unknown:
            raise forms.ValidationError(f"Unknown channel(s): {', '.join(unknown)}.")
        if any(not isinstance(v, bool) for v in value.values()):
            raise forms.ValidationError("Each value must be true or false.")
        return value

    def clean_in_doubt_policy(self) -> str:
        return self.cleaned_data.get("in_doubt_policy") or IN_DOUBT_AUTO

    def clean_digest_schedule(self) -> str:
        value = self.cleaned_data.get("digest_schedule") or ""
        try:
            parse_schedule(value, forbid_window=True)
        except ScheduleError as exc:
            raise forms.ValidationError(str(exc)) from exc
        return value

    def clean_digest_templates(self) -> dict[str, str]:
        value = self.cleaned_data.get("digest_templates") or {}
        if not isinstance(value, dict):
            raise forms.ValidationError('Enter a JSON object of channel → template key, e.g. {"email": "digest"}.')
        unknown = sorted(set(value) - set(SUBSCRIBER_CHANNELS))
        if unknown:
            raise forms.ValidationError(f"Unknown channel(s): {', '.join(unknown)}.")
        if any(not isinstance(v, str) or not v for v in value.values()):
            raise forms.ValidationError("Each value must be a template key.")
        return value


@admin.register(Category)
class CategoryAdmin(ModelAdmin):
    form = CategoryAdminForm
    list_display = ["key", "name", "critical", "order", "digest_schedule", "environment"]
    list_filter = ["environment", "critical"]
    list_editable = ["order"]
    search_fields = ["key", "name"]
    list_select_related = ["environment"]
    readonly_fields = ["created_at"]


@admin.register(Preference)
class PreferenceAdmin(ModelAdmin):
    """Subscribers own their preferences: the admin shows them and may delete one, not forge new ones."""

    list_display = ["subscriber", "category", "channel", "enabled", "updated_at"]
    list_filter = ["environment", "channel", "enabled"]
    search_fields = ["subscriber__subscriber_id", "subscriber__email", "category__key"]
    list_select_related = ["subscriber", "category"]
    readonly_fields = ["environment", "subscriber", "category", "channel", "enabled", "updated_at"]
    show_full_result_count = False

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # Viewing is allowed through has_view_permission; every field is read-only.
        return False


@admin.register(QuietHours)
class QuietHoursAdmin(ModelAdmin):
    list_display = ["subscriber", "start", "end", "timezone", "days", "channels", "updated_at"]
    list_filter = ["environment"]
    search_fields = ["subscriber__subscriber_id"]
    list_select_related = ["subscriber"]
    readonly_fields = ["environment", "subscriber", "start", "end", "timezone", "days", "channels", "updated_at"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class _ReadOnlyAdmin(ModelAdmin):
    """Subscribers' own choices: visible to staff, never forged by them."""

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(CategoryFrequency)
class CategoryFrequencyAdmin(_ReadOnlyAdmin):
    list_display = ["subscriber", "category", "frequency", "updated_at"]
    list_filter = ["environment", "frequency"]
    search_fields = ["subscriber__subscriber_id", "category__key"]
    list_select_related = ["subscriber", "category"]
    show_full_result_count = False


@admin.register(PreferenceChange)
class PreferenceChangeAdmin(ReadOnlyAdmin):
    """The preference history: what changed, when and from where."""

    list_display = ["created_at", "subscriber", "source", "summary"]
    list_filter = ["environment", "source"]
    search_fields = ["subscriber__subscriber_id"]
    list_select_related = ["subscriber"]
    fields = readonly_fields = ("environment", "subscriber", "source", "changes_display", "created_at")
    date_hierarchy = "created_at"
    show_full_result_count = False

    @admin.display(description="changes")
    def changes_display(self, obj: PreferenceChange) -> SafeString:
        return pretty_json(obj.changes)

    @admin.display(description="changes")
    def summary(self, obj: PreferenceChange) -> str:
        parts = []
        for change in obj.changes:
            where = ".".join(str(p) for p in (change.get("category"), change.get("channel")) if p)
            parts.append(
                f"{change.get('kind')}{' ' + where if where else ''}: {change.get('from')} → {change.get('to')}"
            )
        return "; ".join(parts)


class WorkflowPreferenceForm(forms.ModelForm):
    class Meta:
        model = WorkflowPreference
        fields = ["environment", "workflow", "default_channels"]
        help_texts = {
            "default_channels": 'Channel → on by default for this workflow, e.g. {"sms": true}; overrides the '
            "category's default, a subscriber's own choice still wins.",
        }

    def clean_default_channels(self) -> dict[str, bool]:
        return CategoryAdminForm.clean_default_channels(self)  # type: ignore[arg-type]

    def clean(self) -> dict[str, Any]:
        super().clean()
        data = self.cleaned_data
        workflow, environment = data.get("workflow"), data.get("environment")
        if workflow is not None and environment is not None and workflow.environment_id != environment.pk:
            raise forms.ValidationError("The workflow belongs to another environment.")
        return data


@admin.register(WorkflowPreference)
class WorkflowPreferenceAdmin(ModelAdmin):
    form = WorkflowPreferenceForm
    list_display = ["workflow", "default_channels", "environment", "updated_at"]
    list_filter = ["environment"]
    search_fields = ["workflow__key"]
    list_select_related = ["workflow", "environment"]
