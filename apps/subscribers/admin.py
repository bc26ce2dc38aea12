from __future__ import annotations

import json
from typing import Any

from django import forms
from django.conf import settings
from django.contrib import admin
from django.contrib.admin.utils import unquote
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.urls import URLPattern, path
from unfold.admin import ModelAdmin, TabularInline

from apps.core.admin import pretty_json
from apps.subscribers.models import Device, Subscriber, Topic, TopicSubscription
from apps.workflows.subscriber_page import (
    SECTIONS,
    DryRunRefused,
    subscriber_page,
    subscriber_workflows,
    workflow_dry_run,
)


class WorkflowChoiceField(forms.ModelChoiceField):
    def label_from_instance(self, obj: Any) -> str:
        if obj.published_version is None:
            state = "not published"
        else:
            state = f"v{obj.published_version.number}" + ("" if obj.active else ", inactive")
        return f"{obj.key} — {obj.name} ({state})"


class WhyNotForm(forms.Form):
    """A workflow of the subscriber's environment and an optional payload (a JSON object)."""

    workflow = WorkflowChoiceField(queryset=None, label="Workflow", empty_label=None)
    payload = forms.CharField(
        label="Payload (JSON object, optional)",
        required=False,
        strip=True,
        widget=forms.Textarea(attrs={"rows": 8, "cols": 80, "spellcheck": "false"}),
        help_text='The event\'s payload, as in a trigger\'s "payload", e.g. {"post_title": "Hello"}.',
    )

    def __init__(self, *args: Any, subscriber: Subscriber, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Scoped to the subscriber's environment: another environment's workflow id is "not one of the choices".
        self.fields["workflow"].queryset = subscriber_workflows(subscriber=subscriber)  # type: ignore[attr-defined]

    def clean_payload(self) -> dict[str, Any]:
        raw: str = self.cleaned_data.get("payload") or ""
        limit = int(settings.CLARION.get("MAX_PAYLOAD_BYTES", 512 * 1024))
        if len(raw.encode()) > limit:
            raise forms.ValidationError(f"The payload is larger than {limit:,} bytes.")
        if not raw:
            return {}
        try:
            value = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise forms.ValidationError(f"Not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno}).") from None
        except RecursionError:
            raise forms.ValidationError("Not valid JSON: nested too deeply.") from None
        if not isinstance(value, dict):
            raise forms.ValidationError('The payload must be a JSON object, such as {"post_title": "Hello"}.')
        return value


@admin.register(Subscriber)
class SubscriberAdmin(ModelAdmin):
    """The subscriber page: the editable profile, then (read-only) recent runs and messages, effective
    preferences, suppressions, devices, quiet hours and the inbox; and "Why not?" (a dry run)."""

    list_display = ["subscriber_id", "email", "first_name", "last_name", "locale", "environment", "created_at"]
    list_filter = ["environment"]
    search_fields = ["subscriber_id", "email"]
    list_select_related = ["environment"]
    readonly_fields = ["created_at", "updated_at"]
    show_full_result_count = False

    def get_urls(self) -> list[URLPattern]:
        return [
            path(
                "<path:object_id>/why-not/",
                self.admin_site.admin_view(self.why_not_view),
                name="subscribers_subscriber_why_not",
            ),
            *super().get_urls(),
        ]

    def render_change_form(
        self,
        request: HttpRequest,
        context: dict[str, Any],
        add: bool = False,
        change: bool = False,
        form_url: str = "",
        obj: Subscriber | None = None,
    ) -> HttpResponse:
        if obj is not None and obj.pk is not None:
            sections = {name for name, perm in SECTIONS.items() if request.user.has_perm(perm)}
            context["subscriber_page"] = subscriber_page(subscriber=obj, sections=sections)
            context["can_why_not"] = self._may_dry_run(request, obj)
        return super().render_change_form(request, context, add, change, form_url, obj)

    def _may_dry_run(self, request: HttpRequest, obj: Subscriber) -> bool:
        return self.has_view_or_change_permission(request, obj) and request.user.has_perm("workflows.view_workflow")

    def why_not_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        subscriber = self.get_object(request, unquote(object_id))
        if subscriber is None:
            raise Http404("No such subscriber.")
        if not self._may_dry_run(request, subscriber):
            raise PermissionDenied
        result = None
        if request.method == "POST":
            form = WhyNotForm(request.POST, subscriber=subscriber)
            if form.is_valid():
                try:
                    result = workflow_dry_run(
                        subscriber=subscriber,
                        workflow=form.cleaned_data["workflow"],
                        payload=form.cleaned_data["payload"],
                    )
                except DryRunRefused as exc:
                    form.add_error(None, exc.message)
                    for where, problem in exc.details.items():
                        form.add_error("payload", f"{where}: {problem}")
        else:
            form = WhyNotForm(subscriber=subscriber)
        steps = [
            {"step": step, "detail": pretty_json(step.detail) if step.detail else ""}
            for step in (result.steps if result else [])
        ]
        context = {
            **self.admin_site.each_context(request),
            "title": f"Why not? — {subscriber.subscriber_id}",
            "opts": self.opts,
            "original": subscriber,
            "subscriber": subscriber,
            "form": form,
            "result": result,
            "steps": steps,
        }
        return TemplateResponse(request, "admin/subscribers/subscriber/why_not.html", context)


class TopicSubscriptionInline(TabularInline):
    model = TopicSubscription
    extra = 0
    raw_id_fields = ["subscriber"]
    readonly_fields = ["created_at"]


@admin.register(Topic)
class TopicAdmin(ModelAdmin):
    list_display = ["key", "name", "environment", "created_at"]
    list_filter = ["environment"]
    search_fields = ["key", "name"]
    list_select_related = ["environment"]
    inlines = [TopicSubscriptionInline]


@admin.register(Device)
class DeviceAdmin(ModelAdmin):
    list_display = ["__str__", "provider", "name", "environment", "created_at"]
    list_filter = ["provider", "environment"]
    search_fields = ["subscriber__subscriber_id", "name"]
    list_select_related = ["subscriber"]
    raw_id_fields = ["subscriber"]
    readonly_fields = ["created_at", "updated_at"]
