"""Admin: integrations (credentials masked, test send, circuit reset) and messages (filters, attempts, resend)."""

from __future__ import annotations

import logging
from typing import Any

from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString
from unfold.admin import ModelAdmin

from apps.core.admin import ReadOnlyAdmin, ReadOnlyInline, pretty_json, record_action
from apps.delivery.models import DeliveryAttempt, Integration, Message, MessageEvent, Suppression
from apps.delivery.providers.base import (
    destination_errors,
    get_provider,
    integration_settings_errors,
    providers_by_channel,
)
from apps.delivery.services import integration_send_test, message_resend
from apps.delivery.services.circuit import integrations_circuit_close
from apps.delivery.webhooks.urls import webhook_urls
from apps.subscribers.models import Subscriber

MASK = "••••"
logger = logging.getLogger(__name__)


def mask_value(value: Any) -> Any:
    """What the admin shows for a credential: never the secret, at most its last four characters."""
    if isinstance(value, str):
        return f"{MASK}{value[-4:]}" if len(value) >= 12 else MASK
    if isinstance(value, dict | list):
        return MASK
    return value


def masked(credentials: dict[str, Any]) -> dict[str, Any]:
    return {key: mask_value(value) for key, value in credentials.items()}


def unmask(submitted: dict[str, Any], stored: dict[str, Any]) -> dict[str, Any]:
    """Keys left showing their mask keep the stored secret; anything typed over replaces it."""
    return {
        key: stored[key] if key in stored and value == mask_value(stored[key]) else value
        for key, value in submitted.items()
    }


class IntegrationAdminForm(forms.ModelForm):
    credentials = forms.JSONField(
        required=False,
        widget=forms.Textarea(attrs={"rows": 6, "cols": 80}),
        help_text=f"JSON. Stored secrets are shown masked ({MASK}); leave a masked value as it is to keep it, "
        "type a new value to replace it, delete the key to remove it.",
    )

    class Meta:
        model = Integration
        fields = [
            "environment",
            "channel",
            "provider",
            "name",
            "credentials",
            "settings",
            "priority",
            "active",
            "retries",
            "rate_limit",
            "price",
        ]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.instance.pk:
            self.initial["credentials"] = masked(self.instance.credentials)
        if "provider" in self.fields:  # a view-only page has no form fields
            known = "; ".join(f"{channel}: {', '.join(names)}" for channel, names in providers_by_channel().items())
            self.fields["provider"].help_text = f"Known providers — {known}."

    def clean_credentials(self) -> dict[str, Any]:
        value = self.cleaned_data.get("credentials") or {}
        if not isinstance(value, dict):
            raise forms.ValidationError("Enter a JSON object.")
        return unmask(value, self.instance.credentials if self.instance.pk else {})

    def clean(self) -> dict[str, Any]:
        super().clean()
        cleaned = self.cleaned_data
        channel, provider_name = cleaned.get("channel"), cleaned.get("provider")
        if channel and provider_name:
            provider = get_provider(channel, provider_name)
            if provider is None:
                self.add_error("provider", f"Unknown {channel} provider. Known: {providers_by_channel().get(channel)}")
            else:
                missing = [k for k in provider.required_credentials if not (cleaned.get("credentials") or {}).get(k)]
                if missing:
                    self.add_error("credentials", f"Missing: {', '.join(missing)}.")
                for key, why in destination_errors(provider, cleaned.get("credentials") or {}).items():
                    self.add_error("credentials", f"{key}: {why}.")
        values = cleaned.get("settings")
        for error in integration_settings_errors(values if isinstance(values, dict) else {}):
            self.add_error("settings", error)
        return cleaned


class SendTestForm(forms.Form):
    recipient = forms.CharField(
        max_length=320,
        required=False,
        help_text="Email: an address. SMS: a phone number (E.164). Push: a subscriber id (its devices receive it). "
        "Chat: a subscriber id, or empty for the integration's own webhook. Webhook: empty.",
    )


@admin.register(Integration)
class IntegrationAdmin(ModelAdmin):
    form = IntegrationAdminForm
    list_display = [
        "__str__",
        "name",
        "channel",
        "environment",
        "priority",
        "active",
        "rate_limit",
        "price",
        "circuit_state",
    ]
    list_filter = ["channel", "provider", "active", "environment"]
    list_select_related = ["environment"]
    search_fields = ["name", "provider"]
    readonly_fields = ["webhook_urls_display", "circuit_state", "created_at", "updated_at"]
    actions = ["send_test_message", "reset_circuit"]
    change_form_template = "admin/delivery/integration/settings_change_form.html"

    class Media:
        js = ("clarion/admin/settings-forms.js",)
        css = {"all": ("clarion/admin/settings-forms.css",)}

    def get_urls(self) -> list[URLPattern]:
        return [
            path(
                "<path:object_id>/send-test/",
                self.admin_site.admin_view(self.send_test_view),
                name=f"{self.opts.app_label}_{self.opts.model_name}_send_test",
            ),
            *super().get_urls(),
        ]

    def send_test_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        """The change page's "Send a test message": one integration, to what the operator types."""
        integration = self.get_object(request, object_id)
        if integration is None:
            raise Http404("No such integration.")
        if not self.has_change_permission(request, integration):
            raise PermissionDenied
        change_url = reverse("admin:delivery_integration_change", args=[integration.pk])
        form = SendTestForm(request.POST if request.method == "POST" else None)
        if request.method == "POST" and form.is_valid():
            self._send_test(request, integration, form.cleaned_data["recipient"].strip())
            return HttpResponseRedirect(change_url)
        return TemplateResponse(
            request,
            "admin/delivery/integration/send_test_one.html",
            {
                **self.admin_site.each_context(request),
                "title": f"Send a test message through {integration}",
                "form": form,
                "integration": integration,
                "opts": self.opts,
                "change_url": change_url,
            },
        )

    def get_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        fields = list(super().get_fields(request, obj))
        if obj is not None and not self.has_change_permission(request, obj):
            # a view-only page shows fields as stored: credentials only masked, as the form does
            fields = ["credentials_masked" if name == "credentials" else name for name in fields]
        return fields

    @admin.display(description="credentials")
    def credentials_masked(self, obj: Integration) -> SafeString:
        return pretty_json(masked(obj.credentials))

    @admin.display(description="circuit")
    def circuit_state(self, obj: Integration) -> str:
        if obj.circuit_open_until:
            return f"open until {obj.circuit_open_until:%Y-%m-%d %H:%M:%S} ({obj.circuit_failures} failures)"
        return f"closed ({obj.circuit_failures} failures)" if obj.circuit_failures else "closed"

    @admin.display(description="webhook URLs to register with the provider")
    def webhook_urls_display(self, obj: Integration) -> str:
        urls = dict(webhook_urls(obj)) if obj.pk else {}
        if obj.pk and obj.provider == "twilio":  # replies (STOP / START) go to the number's own webhook
            path = reverse("delivery-webhook-twilio-inbound", kwargs={"key": obj.webhook_key})
            urls["inbound_messages"] = f"{settings.PUBLIC_URL}{path}"
        if not urls:
            return "—"
        return format_html_join(
            "",
            '<span class="clarion-webhook-url">{}: <code>{}</code> '
            '<button type="button" class="button clarion-copy" data-copy="{}" aria-label="Copy the {} URL">'
            "Copy</button></span>",
            ((name, url, url, name.replace("_", " ")) for name, url in urls.items()),
        )

    @admin.action(description="Send a test message", permissions=["change"])
    def send_test_message(self, request: HttpRequest, queryset: QuerySet[Integration]) -> HttpResponse | None:
        form = SendTestForm(request.POST if "apply" in request.POST else None)
        if "apply" in request.POST and form.is_valid():
            recipient = form.cleaned_data["recipient"].strip()
            for integration in queryset:
                self._send_test(request, integration, recipient)
            return None
        return TemplateResponse(
            request,
            "admin/delivery/integration/send_test.html",
            {
                **self.admin_site.each_context(request),
                "title": "Send a test message",
                "form": form,
                "integrations": queryset,
                "opts": self.model._meta,
                "action_checkbox_name": ACTION_CHECKBOX_NAME,
            },
        )

    def _send_test(self, request: HttpRequest, integration: Integration, recipient: str) -> None:
        if integration.channel in ("email", "sms", "push") and not recipient:
            what = {"email": "an email address", "sms": "a phone number", "push": "a subscriber id"}
            self.message_user(request, f"{integration}: give {what[integration.channel]}.", messages.ERROR)
            return
        subscriber_pk = None
        if integration.channel in ("push", "chat") and recipient:
            subscriber = Subscriber.objects.filter(
                environment_id=integration.environment_id, subscriber_id=recipient
            ).first()
            if subscriber is None:
                self.message_user(request, f"{integration}: no subscriber '{recipient}'.", messages.ERROR)
                return
            subscriber_pk = subscriber.pk
        try:
            message = integration_send_test(integration=integration, recipient=recipient, subscriber_id=subscriber_pk)
        except Exception as error:  # an operator's test: say what went wrong, never a 500
            logger.exception("Test send through integration %s failed", integration.pk)
            record_action(self, request, [integration], f"Test send failed ({type(error).__name__}).")
            self.message_user(
                request, f"{integration}: the test send failed ({type(error).__name__}); see the logs.", messages.ERROR
            )
            return
        record_action(self, request, [integration], f"Sent test message {message.pk} ({message.status}).")
        if message.status == Message.Status.SENT:
            self.message_user(request, f"{integration}: test message {message.pk} sent.", messages.SUCCESS)
        else:
            self.message_user(
                request, f"{integration}: test message {message.pk} {message.status}: {message.error}", messages.ERROR
            )

    @admin.action(description="Close the circuit breaker (try the provider again now)", permissions=["change"])
    def reset_circuit(self, request: HttpRequest, queryset: QuerySet[Integration]) -> None:
        chosen = list(queryset)
        count = integrations_circuit_close(integration_ids=[integration.pk for integration in chosen])
        record_action(self, request, chosen, "Closed the circuit breaker from the admin.")
        self.message_user(request, f"Closed the circuit of {count} integration(s).", messages.SUCCESS)


class DeliveryAttemptInline(ReadOnlyInline):
    model = DeliveryAttempt
    fields = readonly_fields = (
        "created_at",
        "provider",
        "status",
        "response_code",
        "error_kind",
        "retryable",
        "duration_ms",
        "error",
        "response_display",
    )

    @admin.display(description="response")
    def response_display(self, obj: DeliveryAttempt) -> SafeString | str:
        return pretty_json(obj.response) if obj.response else "—"


class MessageEventInline(ReadOnlyInline):
    model = MessageEvent
    verbose_name = "provider callback"
    fields = readonly_fields = (
        "received_at",
        "provider",
        "event_type",
        "status",
        "applied",
        "description",
        "payload_display",
    )

    @admin.display(description="payload")
    def payload_display(self, obj: MessageEvent) -> SafeString | str:
        return pretty_json(obj.payload) if obj.payload else "—"


class InDoubtFilter(admin.SimpleListFilter):
    """Sends whose outcome is unknown: held now, or ever (resent or settled since)."""

    title = "in doubt"
    parameter_name = "in_doubt"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("now", "in doubt now"), ("ever", "ever in doubt")]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Message]) -> QuerySet[Message]:
        if self.value() == "now":
            return queryset.filter(status=Message.Status.IN_DOUBT)
        if self.value() == "ever":
            return queryset.filter(in_doubt_count__gt=0)
        return queryset


WORKFLOW_FILTER_SCAN = 5000


class WorkflowFilter(admin.SimpleListFilter):
    title = "workflow"
    parameter_name = "workflow"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        # The workflows of the latest messages (each message records its workflow's key): a bounded
        # read of delivery's own table, whatever its size.
        recent = Message.objects.order_by("-pk").values_list("data__workflow", flat=True)[:WORKFLOW_FILTER_SCAN]
        keys = sorted({key for key in recent if isinstance(key, str) and key})[:200]
        return [(key, key) for key in keys]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Message]) -> QuerySet[Message]:
        if self.value():
            return queryset.filter(data__workflow=self.value())
        return queryset


def email_frame(html: str) -> SafeString:
    """An email's HTML in a sandboxed iframe: ``sandbox=""`` grants nothing (no script, an opaque
    origin, no forms, no top navigation), and ``srcdoc`` holds the HTML escaped as an attribute
    value, so nothing of it is ever parsed as part of the admin page."""
    return format_html(
        '<iframe class="clarion-email-frame" title="Rendered email" sandbox="" referrerpolicy="no-referrer" '
        'srcdoc="{}"></iframe>',
        html,
    )


def allow_inline_email_styles(response: HttpResponse) -> HttpResponse:
    """The page's Content-Security-Policy with inline styles allowed, scripts still 'self' only: the
    srcdoc iframe inherits the page's policy and email HTML is styled inline by nature (as in the
    template editor's preview)."""
    response._csp_replace = {"style-src": ["'self'", "'unsafe-inline'"]}  # type: ignore[attr-defined]
    return response


MESSAGE_ORIGIN_FIELDS = ("environment", "run", "step_id", "channel", "subscriber", "template_version", "locale")
MESSAGE_CONTENT_FIELDS = ("recipient", "subject", "content_display", "text_display", "data_display")
MESSAGE_DELIVERY_FIELDS = (
    "status",
    "provider",
    "integration",
    "provider_message_id",
    "error",
    "attempts",
    "in_doubt_count",
    "send_started_at",
    "next_attempt_at",
)
MESSAGE_TIMELINE_FIELDS = ("created_at", "updated_at", "sent_at", "delivered_at", "opened_at", "clicked_at")


@admin.register(Message)
class MessageAdmin(ReadOnlyAdmin):
    list_display = ["pk", "channel", "recipient", "status_badge", "provider", "workflow", "attempts", "created_at"]
    list_filter = ["status", InDoubtFilter, "channel", "provider", WorkflowFilter, "environment"]
    search_fields = ["recipient", "provider_message_id", "run__event__transaction_id"]
    fieldsets = [
        (None, {"fields": MESSAGE_ORIGIN_FIELDS}),
        ("Content", {"fields": MESSAGE_CONTENT_FIELDS}),
        ("Delivery", {"fields": MESSAGE_DELIVERY_FIELDS}),
        ("Timeline", {"fields": MESSAGE_TIMELINE_FIELDS}),
    ]
    readonly_fields = (
        *MESSAGE_ORIGIN_FIELDS,
        *MESSAGE_CONTENT_FIELDS,
        *MESSAGE_DELIVERY_FIELDS,
        *MESSAGE_TIMELINE_FIELDS,
    )
    inlines = [DeliveryAttemptInline, MessageEventInline]
    actions = ["resend"]
    show_full_result_count = False

    class Media:
        css = {"all": ("clarion/admin/admin.css",)}  # no inline styles: the admin has a CSP

    @admin.display(description="status", ordering="status")
    def status_badge(self, obj: Message) -> str:
        if obj.status == Message.Status.IN_DOUBT:
            return format_html(
                '<span title="{}" class="clarion-badge-warn">in doubt</span>',
                obj.error[:300],
            )
        if obj.in_doubt_count:
            return format_html('{} <span title="{}">(was in doubt)</span>', obj.status, obj.error[:300])
        return obj.status

    @admin.display(description="workflow")
    def workflow(self, obj: Message) -> str:
        return (obj.data or {}).get("workflow") or "—"

    @admin.display(description="body")
    def content_display(self, obj: Message) -> SafeString | str:
        if not obj.body:
            return "—"
        if obj.channel == "email":
            return email_frame(obj.body)
        return format_html('<pre class="clarion-text">{}</pre>', obj.body)

    @admin.display(description="plain-text part")
    def text_display(self, obj: Message) -> SafeString | str:
        text = (obj.data or {}).get("text") if isinstance(obj.data, dict) else None
        return format_html('<pre class="clarion-text">{}</pre>', text) if text else "—"

    @admin.display(description="data")
    def data_display(self, obj: Message) -> SafeString:
        return pretty_json(obj.data)

    def change_view(
        self, request: HttpRequest, object_id: str, form_url: str = "", extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        return allow_inline_email_styles(super().change_view(request, object_id, form_url, extra_context))

    @admin.action(description="Resend (as a new message)", permissions=["operate"])
    def resend(self, request: HttpRequest, queryset: QuerySet[Message]) -> None:
        sent: list[int] = []
        for original in queryset.exclude(channel="in_app"):
            copy = message_resend(message=original)
            record_action(self, request, [original], f"Resent from the admin as message {copy.pk}.")
            sent.append(copy.pk)
        self.message_user(request, f"Queued {len(sent)} message(s) again: {sent[:20]}.", messages.SUCCESS)


@admin.register(Suppression)
class SuppressionAdmin(ModelAdmin):
    list_display = ["address", "channel", "reason", "environment", "created_at"]
    list_filter = ["channel", "reason", "environment"]
    search_fields = ["address"]
    raw_id_fields = ["message"]
    readonly_fields = ["created_at"]
