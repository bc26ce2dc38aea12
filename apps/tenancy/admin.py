from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.core.validators import URLValidator
from django.db.models import QuerySet
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils.cache import add_never_cache_headers
from django.utils.html import format_html
from django.utils.safestring import SafeString
from unfold.admin import ModelAdmin, TabularInline

from apps.core.admin import pretty_json, record_action
from apps.tenancy.models import ApiKey, Environment, Project
from apps.tenancy.origins import allowed_origins_forget
from apps.tenancy.services import (
    api_key_create,
    api_key_revoke,
    environment_default_layout_create,
    environment_inbox_secret_rotate,
)
from apps.tenancy.settings_forms import (
    DEFAULT_BRAND_COLOR,
    HEX_COLOR,
    LOGO_MAX_LENGTH,
    ColorInput,
    LogoUrlInput,
    OriginListField,
    branding_initial,
    branding_merge,
    branding_other_keys,
)


@admin.register(Project)
class ProjectAdmin(ModelAdmin):
    list_display = ["name", "slug", "created_at"]
    prepopulated_fields = {"slug": ["name"]}


class ApiKeyInline(TabularInline):
    model = ApiKey
    extra = 0
    can_delete = False
    fields = readonly_fields = (
        "kind",
        "name",
        "__str__",
        "created_at",
        "last_used_at",
        "revoked_at",
        "revoke_link",
    )
    verbose_name_plural = "API keys (create one with “Create an API key” above)"

    def has_add_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def get_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        fields = list(self.fields or ())
        may_revoke = request.user.has_perm("tenancy.change_apikey") and request.user.has_perm(
            "tenancy.change_environment"
        )
        return fields if may_revoke else [name for name in fields if name != "revoke_link"]

    @admin.display(description="revoke")
    def revoke_link(self, obj: ApiKey) -> str:
        if obj.pk is None or obj.revoked_at is not None:
            return "—"
        url = reverse("admin:tenancy_environment_key_revoke", args=[obj.environment_id, obj.pk])
        return format_html('<a href="{}">Revoke…</a>', url)


class ApiKeyCreateForm(forms.Form):
    kind = forms.ChoiceField(choices=ApiKey.Kind.choices, initial=ApiKey.Kind.SECRET, widget=forms.RadioSelect)
    name = forms.CharField(max_length=200, required=False, help_text="What uses it, e.g. “billing backend”.")


class EnvironmentForm(forms.ModelForm):
    allowed_origins = OriginListField(
        required=False,
        help_text="Sites that may embed the inbox, one per row: https://app.example.com, "
        "https://*.example.com (any subdomain), http://localhost:3000. No rows: any site.",
    )
    currency = forms.CharField(
        max_length=3,
        required=False,
        help_text="ISO 4217 code the savings report prices messages in, e.g. USD or EUR "
        "(empty: unchanged; USD for a new environment).",
    )
    brand_product_name = forms.CharField(
        label="Product name",
        max_length=120,
        required=False,
        help_text="Shown on the preference pages and in the default email layout (empty: the project's name).",
    )
    brand_primary_color = forms.CharField(
        label="Brand colour",
        required=False,
        widget=ColorInput,
        help_text="The colour of the preference pages and the default email layout.",
    )
    brand_color_default = forms.BooleanField(
        label="No brand colour",
        required=False,
        help_text=f"Use Clarion's default ({DEFAULT_BRAND_COLOR}) and ignore the colour above.",
    )
    brand_logo_url = forms.CharField(
        label="Logo URL",
        max_length=LOGO_MAX_LENGTH,
        required=False,
        widget=LogoUrlInput(attrs={"size": 60, "placeholder": "https://cdn.example.com/logo.png"}),
        help_text="An https URL of an image (pages allow images from https only). The preview loads it "
        "without sending a referrer.",
    )

    class Meta:
        model = Environment
        fields = [
            "project",
            "name",
            "slug",
            "allowed_origins",
            "currency",
            "track_opens",
            "track_clicks",
            "track_critical",
        ]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for name, value in branding_initial(self.instance.branding).items():
            self.initial.setdefault(name, value)

    def clean_brand_primary_color(self) -> str:
        value = (self.cleaned_data.get("brand_primary_color") or "").strip()
        if value and not HEX_COLOR.match(value):
            raise forms.ValidationError("A hex colour: # and 6 (or 3) hex digits, e.g. #4f46e5.")
        return value.lower()

    def clean_brand_logo_url(self) -> str:
        value = (self.cleaned_data.get("brand_logo_url") or "").strip()
        if not value or value == self.initial.get("brand_logo_url"):
            return value  # empty, or a stored URL saved as it was (older rules took http too)
        if not value.startswith("https://"):
            raise forms.ValidationError("Use an https:// URL: the pages' Content-Security-Policy loads no other image.")
        try:
            URLValidator(schemes=["https"])(value)
        except forms.ValidationError:
            raise forms.ValidationError("Not a valid URL.") from None
        return value

    def branding_value(self) -> dict[str, Any]:
        cleaned = self.cleaned_data
        color = "" if cleaned.get("brand_color_default") else cleaned.get("brand_primary_color", "")
        return branding_merge(
            self.instance.branding,
            product_name=cleaned.get("brand_product_name", "").strip(),
            primary_color=color or None,
            logo_url=cleaned.get("brand_logo_url", ""),
        )

    def save(self, commit: bool = True) -> Environment:
        self.instance.branding = self.branding_value()
        return super().save(commit)

    def clean_currency(self) -> str:
        value = (self.cleaned_data.get("currency") or "").strip().upper()
        if not value:
            return self.instance.currency if self.instance.pk else "USD"
        if len(value) != 3 or not value.isascii() or not value.isalpha():
            raise forms.ValidationError("Three letters (ISO 4217), e.g. USD or EUR.")
        return value


@admin.register(Environment)
class EnvironmentAdmin(ModelAdmin):
    form = EnvironmentForm
    change_form_template = "admin/tenancy/environment/settings_change_form.html"
    list_display = ["name", "project", "slug", "currency", "track_opens", "track_clicks", "created_at"]
    list_filter = ["project"]
    readonly_fields = ["inbox_hmac_secret_masked", "branding_other_keys", "created_at"]
    inlines = [ApiKeyInline]
    actions = ["rotate_inbox_secret"]
    fieldsets = [
        (None, {"fields": ["project", "name", "slug", "currency", "created_at"]}),
        ("Inbox", {"fields": ["allowed_origins", "inbox_hmac_secret_masked"]}),
        (
            "Branding",
            {
                "fields": [
                    "brand_product_name",
                    ("brand_primary_color", "brand_color_default"),
                    "brand_logo_url",
                    "branding_other_keys",
                ]
            },
        ),
        ("Email tracking", {"fields": ["track_opens", "track_clicks", "track_critical"]}),
    ]

    class Media:
        js = ("clarion/admin/settings-forms.js",)
        css = {"all": ("clarion/admin/settings-forms.css",)}

    @admin.display(description="inbox HMAC secret")
    def inbox_hmac_secret_masked(self, obj: Environment) -> str:
        if not obj.pk:
            return "—"
        # A secret stays out of the page: shown in full only once, when rotated from this page.
        return f"••••{obj.inbox_hmac_secret[-4:]} (shown in full once, when rotated from this page)"

    @admin.display(description="other branding keys (kept as they are)")
    def branding_other_keys(self, obj: Environment) -> SafeString | str:
        others = branding_other_keys(obj.branding)
        return pretty_json(others) if others else "—"

    def save_model(self, request: HttpRequest, obj: Environment, form: Any, change: bool) -> None:
        super().save_model(request, obj, form, change)
        if not change:
            environment_default_layout_create(environment=obj)
        allowed_origins_forget(obj.pk)  # this process at once; the others within their cache time

    def get_urls(self) -> list[URLPattern]:
        info = self.opts.app_label, self.opts.model_name
        return [
            path(
                "<path:object_id>/keys/new/",
                self.admin_site.admin_view(self.api_key_create_view),
                name="{}_{}_key_create".format(*info),
            ),
            path(
                "<path:object_id>/inbox-secret/rotate/",
                self.admin_site.admin_view(self.inbox_secret_rotate_view),
                name="{}_{}_inbox_secret_rotate".format(*info),
            ),
            path(
                "<path:object_id>/keys/<int:key_id>/revoke/",
                self.admin_site.admin_view(self.api_key_revoke_view),
                name="{}_{}_key_revoke".format(*info),
            ),
            *super().get_urls(),
        ]

    def _environment_for_keys(self, request: HttpRequest, object_id: str, permission: str) -> Environment:
        environment = self.get_object(request, object_id)
        if environment is None:
            raise Http404("No such environment.")
        if not (self.has_change_permission(request, environment) and request.user.has_perm(permission)):
            raise PermissionDenied
        return environment

    def _key_context(self, request: HttpRequest, environment: Environment, title: str) -> dict[str, Any]:
        return {
            **self.admin_site.each_context(request),
            "title": title,
            "opts": self.opts,
            "original": environment,
            "environment": environment,
            "has_view_permission": True,
        }

    def api_key_create_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        """A new key; its raw value is in this response only (no redirect, no session, no log)."""
        environment = self._environment_for_keys(request, object_id, "tenancy.add_apikey")
        form = ApiKeyCreateForm(request.POST if request.method == "POST" else None)
        if request.method == "POST" and form.is_valid():
            issued = api_key_create(
                environment=environment, kind=form.cleaned_data["kind"], name=form.cleaned_data["name"].strip()
            )
            key = issued.api_key
            self.log_addition(request, key, f"Created {key.kind} key {key} from the admin.")
            record_action(self, request, [environment], f"Created {key.kind} key {key} ({key.name or 'no name'}).")
            response = TemplateResponse(
                request,
                "admin/tenancy/environment/api_key_created.html",
                {**self._key_context(request, environment, "API key created"), "key": key, "raw_key": issued.raw},
            )
            add_never_cache_headers(response)  # no-store: the key must not stay in a cache
            return response
        return TemplateResponse(
            request,
            "admin/tenancy/environment/api_key_create.html",
            {**self._key_context(request, environment, "Create an API key"), "form": form},
        )

    def api_key_revoke_view(self, request: HttpRequest, object_id: str, key_id: int) -> HttpResponse:
        environment = self._environment_for_keys(request, object_id, "tenancy.change_apikey")
        key = get_object_or_404(ApiKey, pk=key_id, environment=environment)
        change_url = reverse("admin:tenancy_environment_change", args=[environment.pk])
        if request.method == "POST":
            if key.revoked_at is None:
                api_key_revoke(api_key=key)
                self.log_change(request, key, "Revoked from the admin.")
                self.message_user(request, f"Revoked {key}: it no longer authenticates.", messages.SUCCESS)
            else:
                self.message_user(request, f"{key} was already revoked.", messages.WARNING)
            return HttpResponseRedirect(change_url)
        return TemplateResponse(
            request,
            "admin/tenancy/environment/api_key_revoke.html",
            {**self._key_context(request, environment, f"Revoke {key}?"), "key": key, "change_url": change_url},
        )

    def inbox_secret_rotate_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        """A new inbox HMAC secret, shown in this response only (as a new API key is)."""
        environment = self.get_object(request, object_id)
        if environment is None:
            raise Http404("No such environment.")
        if not self.has_change_permission(request, environment):
            raise PermissionDenied
        context = self._key_context(request, environment, "Rotate the inbox HMAC secret")
        if request.method != "POST":
            return TemplateResponse(request, "admin/tenancy/environment/inbox_secret_rotate.html", context)
        environment_inbox_secret_rotate(environment=environment)
        record_action(self, request, [environment], "Rotated the inbox HMAC secret from the admin.")
        response = TemplateResponse(
            request,
            "admin/tenancy/environment/inbox_secret_rotated.html",
            {**context, "title": "Inbox HMAC secret rotated", "secret": environment.inbox_hmac_secret},
        )
        add_never_cache_headers(response)
        return response

    @admin.action(description="Rotate the inbox HMAC secret (ends open inbox sessions)", permissions=["change"])
    def rotate_inbox_secret(self, request: HttpRequest, queryset: QuerySet[Environment]) -> None:
        rotated = 0
        for environment in queryset:
            environment_inbox_secret_rotate(environment=environment)
            record_action(self, request, [environment], "Rotated the inbox HMAC secret from the admin.")
            rotated += 1
        self.message_user(
            request,
            f"Rotated the inbox HMAC secret of {rotated} environment(s). The new secrets are not shown: "
            "to see one, rotate it from its environment's page.",
            messages.SUCCESS,
        )


@admin.register(ApiKey)
class ApiKeyAdmin(ModelAdmin):
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
        # Keys are issued on their environment's page ("Create an API key"), by `create_environment`
        # or the API, so that the raw value can be shown once.
        return False

    @admin.action(description="Revoke selected keys", permissions=["change"])
    def revoke(self, request: HttpRequest, queryset: QuerySet[ApiKey]) -> None:
        revoked = 0
        for key in queryset.filter(revoked_at__isnull=True):
            api_key_revoke(api_key=key)
            record_action(self, request, [key], "Revoked from the admin.")
            revoked += 1
        self.message_user(request, f"Revoked {revoked} key(s).", messages.SUCCESS)
