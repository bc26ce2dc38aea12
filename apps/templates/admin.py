"""Admin for templates: non-engineers write new translated versions and publish them.

Versions are immutable. The change page of a version is read-only and offers "New version from
this one" (the add form, pre-filled) and "Publish". All writes go through ``services``.
"""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.db.models import Max, QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseNotAllowed, HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.urls import URLPattern, path, reverse
from django.utils.html import format_html
from modeltranslation.admin import TabbedTranslationAdmin

from apps.core.errors import ApiError
from apps.templates.models import Template, TemplateVersion
from apps.templates.rendering import TRANSLATED_FIELDS, supported_languages
from apps.templates.services import (
    template_content_validate,
    template_delete,
    template_publish,
    template_references,
    template_upsert,
    template_version_create,
    version_content,
)

TEMPLATE_HELP = (
    "Jinja syntax, rendered in a sandbox: {{ payload.post_title }}, {{ subscriber.first_name }}, "
    "{{ actor.first_name }}, {% if payload.count > 1 %}…{% endif %}. Empty translations fall back to "
    "English. Saving always creates a new version; publish it to make the workflows use it."
)


def _template_label(template: Template) -> str:
    return f"{template.environment} / {template.key} ({template.get_channel_display()})"


class _TemplateChoiceField(forms.ModelChoiceField):
    def label_from_instance(self, obj: Template) -> str:
        return _template_label(obj)


# --- versions ------------------------------------------------------------------------------------


class TemplateVersionAddForm(forms.ModelForm):
    publish = forms.BooleanField(required=False, help_text="Publish this version right away.")

    class Meta:
        model = TemplateVersion
        fields = ["template", "subject", "title", "body", "action_url", "note"]

    def content(self) -> dict[str, dict[str, str]]:
        data = self.cleaned_data
        return {
            language: {name: data.get(f"{name}_{language}") or "" for name in TRANSLATED_FIELDS}
            for language in supported_languages()
        }

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean()
        template = cleaned.get("template")
        if template is None:
            return cleaned
        try:
            template_content_validate(
                channel=template.channel, content=self.content(), action_url=cleaned.get("action_url") or ""
            )
        except ApiError as exc:
            details = exc.details if isinstance(exc.details, dict) else {}
            for where, message in details.items():
                language, _, name = where.partition(".")
                field = f"{name}_{language}" if name else where
                if field in self.fields:
                    self.add_error(field, str(message))
                else:
                    self.add_error(None, f"{where}: {message}")
            if not details:
                self.add_error(None, str(exc.detail))
        return cleaned


@admin.register(TemplateVersion)
class TemplateVersionAdmin(TabbedTranslationAdmin):
    form = TemplateVersionAddForm
    list_display = ["__str__", "template_link", "number", "is_published", "note", "created_by", "created_at"]
    list_filter = ["template__channel", "template__environment"]
    search_fields = ["template__key", "template__name", "note"]
    list_select_related = ["template", "created_by"]
    actions = ["publish_selected"]

    def get_fieldsets(self, request: HttpRequest, obj: TemplateVersion | None = None) -> Any:
        content: list[str] = ["subject", "title", "body", "action_url"]
        if obj is None:
            return [
                (None, {"fields": self.replace_orig_field(["template"])}),
                ("Content", {"fields": self.replace_orig_field(content), "description": TEMPLATE_HELP}),
                ("Version", {"fields": ["note", "publish"]}),
            ]
        return [
            (None, {"fields": ["template", "number", "published_state", "created_by", "created_at"]}),
            ("Content", {"fields": self.replace_orig_field(content)}),
            ("Version", {"fields": ["note"]}),
        ]

    def get_readonly_fields(self, request: HttpRequest, obj: TemplateVersion | None = None) -> Any:
        if obj is None:
            return []
        return ["template", "number", "published_state", "created_by", "created_at"]

    # Immutable: existing versions are shown read-only and can never be deleted.
    def has_change_permission(self, request: HttpRequest, obj: TemplateVersion | None = None) -> bool:
        return obj is None and super().has_change_permission(request, obj)

    def has_delete_permission(self, request: HttpRequest, obj: TemplateVersion | None = None) -> bool:
        return False  # history is kept; a version goes only with its whole template

    def has_publish_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("notification_templates.change_template")

    def formfield_for_foreignkey(self, db_field: Any, request: HttpRequest, **kwargs: Any) -> Any:
        if db_field.name == "template":
            return _TemplateChoiceField(
                queryset=Template.objects.select_related("environment__project").order_by("environment", "key"),
                required=True,
            )
        return super().formfield_for_foreignkey(db_field, request, **kwargs)

    def get_changeform_initial_data(self, request: HttpRequest) -> dict[str, Any]:
        """``?template=<id>`` pre-fills from its latest version, ``?from_version=<id>`` from that one."""
        initial = super().get_changeform_initial_data(request)
        source: TemplateVersion | None = None
        if (from_version := request.GET.get("from_version", "")).isdigit():
            source = TemplateVersion.objects.filter(pk=int(from_version)).first()
        elif (template_id := request.GET.get("template", "")).isdigit():
            source = TemplateVersion.objects.filter(template_id=int(template_id)).order_by("-number").first()
        if source is not None:
            initial["template"] = source.template_id
            for language, fields in version_content(source).items():
                for name, text in fields.items():
                    initial[f"{name}_{language}"] = text
            initial["action_url"] = source.action_url
            initial["note"] = ""
        return initial

    def save_model(self, request: HttpRequest, obj: TemplateVersion, form: Any, change: bool) -> None:
        if change:  # pragma: no cover - has_change_permission forbids it
            raise PermissionError("Template versions are immutable.")
        version = template_version_create(
            template=form.cleaned_data["template"],
            content=form.content(),
            action_url=form.cleaned_data.get("action_url") or "",
            note=form.cleaned_data.get("note") or "",
            created_by=request.user,
            publish=bool(form.cleaned_data.get("publish")),
        )
        # The admin goes on with ``obj`` (messages, log entry, redirect): make it the stored row.
        obj.pk = version.pk
        obj.number = version.number
        obj.created_at = version.created_at
        obj.created_by = version.created_by

    @admin.display(description="template")
    def template_link(self, obj: TemplateVersion) -> str:
        url = reverse("admin:notification_templates_template_change", args=[obj.template_id])
        return format_html('<a href="{}">{}</a>', url, obj.template.key)

    @admin.display(boolean=True, description="published")
    def is_published(self, obj: TemplateVersion) -> bool:
        return obj.template.published_version_id == obj.pk

    @admin.display(description="published")
    def published_state(self, obj: TemplateVersion) -> str:
        if obj.template.published_version_id == obj.pk:
            return "Yes, this is the published version."
        if obj.template.published_version_id:
            return f"No (version {obj.template.published_version.number} is published)."
        return "No (the template has no published version)."

    def get_urls(self) -> list[URLPattern]:
        return [
            path(
                "<path:object_id>/publish/",
                self.admin_site.admin_view(self.publish_view),
                name="notification_templates_templateversion_publish",
            ),
            *super().get_urls(),
        ]

    def publish_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        version = get_object_or_404(TemplateVersion.objects.select_related("template"), pk=object_id)
        if not self.has_publish_permission(request):
            messages.error(request, "You may not publish templates.")
        else:
            _publish(self, request, version.template, version.number)
        return HttpResponseRedirect(reverse("admin:notification_templates_templateversion_change", args=[version.pk]))

    @admin.action(description="Publish selected versions", permissions=["publish"])
    def publish_selected(self, request: HttpRequest, queryset: QuerySet[TemplateVersion]) -> None:
        chosen: dict[int, TemplateVersion] = {}
        for version in queryset.select_related("template"):
            if version.template_id in chosen:
                self.message_user(request, f"Choose one version per template ({version.template.key}).", messages.ERROR)
                return
            chosen[version.template_id] = version
        for version in chosen.values():
            _publish(self, request, version.template, version.number)

    def changeform_view(
        self, request: HttpRequest, object_id: str | None = None, form_url: str = "", extra_context: Any = None
    ) -> HttpResponse:
        extra_context = dict(extra_context or {})
        if object_id:
            extra_context["publish_url"] = reverse(
                "admin:notification_templates_templateversion_publish", args=[object_id]
            )
            extra_context["can_publish"] = self.has_publish_permission(request)
        return super().changeform_view(request, object_id, form_url, extra_context)


def _publish(model_admin: admin.ModelAdmin, request: HttpRequest, template: Template, number: int | None) -> None:
    try:
        template_publish(template=template, version_number=number)
    except ApiError as exc:
        model_admin.message_user(request, f"{template.key}: {exc.detail}", messages.ERROR)
        return
    model_admin.message_user(
        request, f"Published {template.key} version {template.published_version.number}.", messages.SUCCESS
    )


# --- templates -----------------------------------------------------------------------------------


class TemplateVersionInline(admin.TabularInline):
    model = TemplateVersion
    fields = ["number", "note", "created_by", "created_at"]
    readonly_fields = fields
    extra = 0
    can_delete = False
    show_change_link = True
    ordering = ["-number"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[TemplateVersion]:
        return super().get_queryset(request).select_related("template", "created_by")

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(Template)
class TemplateAdmin(admin.ModelAdmin):
    list_display = ["key", "name", "channel", "environment", "published", "latest", "updated_at"]
    list_filter = ["channel", "environment"]
    search_fields = ["key", "name"]
    inlines = [TemplateVersionInline]
    actions = ["publish_latest"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[Template]:
        return (
            super()
            .get_queryset(request)
            .select_related("environment__project", "published_version")
            .annotate(latest_number=Max("versions__number"))
        )

    def get_fields(self, request: HttpRequest, obj: Template | None = None) -> list[str]:
        fields = ["environment", "key", "name", "channel", "description"]
        if obj is not None:
            fields += ["published", "new_version", "created_at", "updated_at"]
        return fields

    def get_readonly_fields(self, request: HttpRequest, obj: Template | None = None) -> list[str]:
        if obj is None:
            return []
        readonly = ["environment", "key", "published", "new_version", "created_at", "updated_at"]
        if obj.versions.exists():
            readonly.append("channel")  # content was written for this channel
        return readonly

    def save_model(self, request: HttpRequest, obj: Template, form: Any, change: bool) -> None:
        template, _ = template_upsert(
            environment=obj.environment,
            key=obj.key,
            name=obj.name,
            channel=obj.channel,
            description=obj.description,
        )
        obj.pk = template.pk
        obj.created_at = template.created_at
        obj.updated_at = template.updated_at

    def get_inlines(self, request: HttpRequest, obj: Template | None = None) -> list[Any]:
        return list(self.inlines) if obj is not None else []

    def get_deleted_objects(self, objs: Any, request: HttpRequest) -> Any:
        deleted, counts, perms_needed, protected = super().get_deleted_objects(objs, request)
        # Versions cannot be deleted one by one, but they do go with their template.
        perms_needed = set(perms_needed) - {str(TemplateVersion._meta.verbose_name)}
        protected = list(protected)
        for template in objs:
            for workflow in template_references(template=template):
                protected.append(f"Workflow “{workflow}” uses template “{template.key}”")
        return deleted, counts, perms_needed, protected

    def delete_model(self, request: HttpRequest, obj: Template) -> None:
        template_delete(template=obj)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[Template]) -> None:
        for template in queryset:
            template_delete(template=template)

    @admin.display(description="published version", ordering="published_version__number")
    def published(self, obj: Template) -> str:
        return f"v{obj.published_version.number}" if obj.published_version_id else "—"

    @admin.display(description="latest version")
    def latest(self, obj: Template) -> str:
        number = getattr(obj, "latest_number", None)
        return f"v{number}" if number else "—"

    @admin.display(description="new version")
    def new_version(self, obj: Template) -> str:
        url = reverse("admin:notification_templates_templateversion_add")
        return format_html('<a class="button" href="{}?template={}">Write a new version</a>', url, obj.pk)

    @admin.action(description="Publish the latest version", permissions=["change"])
    def publish_latest(self, request: HttpRequest, queryset: QuerySet[Template]) -> None:
        for template in queryset:
            _publish(self, request, template, None)
