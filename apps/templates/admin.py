"""Admin for templates: non-engineers edit translated copy, preview it live and publish it.

The change page of a template is the **editor** (``admin/notification_templates/template/editor.html``
with ``static/clarion/admin/template-editor.js``): per-channel fields in language tabs, a live
preview, a variable picker, inline validation, test sends, history with diffs and rollback. Its
views are in ``editor_views``. Versions are immutable; their own change page is read-only. All
writes go through ``services``.
"""

from __future__ import annotations

from typing import Any

from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.db.models import Max, Q, QuerySet
from django.http import (
    Http404,
    HttpRequest,
    HttpResponse,
    HttpResponseNotAllowed,
    HttpResponseRedirect,
    JsonResponse,
)
from django.shortcuts import get_object_or_404
from django.urls import URLPattern, path, reverse
from django.utils.html import format_html, format_html_join
from modeltranslation.admin import TranslationAdmin
from unfold.admin import ModelAdmin, TabularInline

from apps.core.admin import record_action
from apps.core.errors import ApiError
from apps.core.sandbox import SandboxError, validate_template
from apps.templates.editor_views import TemplateEditorAdmin, allow_email_preview_styles
from apps.templates.models import EmailLayout, Template, TemplateVersion
from apps.templates.rendering import HEX_COLOR, TRANSLATED_FIELDS, default_language, supported_languages
from apps.templates.selectors import (
    layout_preview,
    missing_translation_q,
    missing_translations,
)
from apps.templates.services import (
    build_version,
    layout_delete,
    layout_upsert,
    template_content_validate,
    template_delete,
    template_publish,
    template_render_check,
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
    body_format = forms.ChoiceField(
        choices=TemplateVersion.BodyFormat.choices,
        required=False,
        initial=TemplateVersion.BodyFormat.MARKDOWN,
        help_text="Email body: Markdown rendered into the layout, or raw HTML",
    )

    class Meta:
        model = TemplateVersion
        fields = ["template", "subject", "preheader", "title", "body", "body_format", "action_url", "note"]

    def content(self) -> dict[str, dict[str, str]]:
        data = self.cleaned_data
        return {
            language: {name: data.get(f"{name}_{language}") or "" for name in TRANSLATED_FIELDS}
            for language in supported_languages()
        }

    def clean(self) -> dict[str, Any]:
        super().clean()
        cleaned = self.cleaned_data
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
        if cleaned.get("publish"):
            draft = build_version(
                template=template,
                content=self.content(),
                urls={"action_url": cleaned.get("action_url") or ""},
                body_format=cleaned.get("body_format") or "",
            )
            for where, message in template_render_check(version=draft).items():
                self._add_located_error(where, message)
        return cleaned

    def _add_located_error(self, where: str, message: str) -> None:
        language, _, name = where.partition(".")
        field = f"{name}_{language}" if name else where
        if field in self.fields:
            self.add_error(field, message)
        else:
            self.add_error(None, f"{where}: {message}")


@admin.register(TemplateVersion)
class TemplateVersionAdmin(ModelAdmin, TranslationAdmin):
    form = TemplateVersionAddForm
    list_display = ["__str__", "template_link", "number", "is_published", "note", "created_by", "created_at"]
    list_filter = ["template__channel", "template__environment"]
    search_fields = ["template__key", "template__name", "note"]
    list_select_related = ["template", "created_by"]
    actions = ["publish_selected"]

    class Media:
        js = ("clarion/admin/translation-tabs.js",)
        css = {"all": ("clarion/admin/translation-tabs.css",)}

    def get_fieldsets(self, request: HttpRequest, obj: TemplateVersion | None = None) -> Any:
        content: list[str] = ["subject", "preheader", "title", "body", "body_format", "action_url"]
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
        initial: dict[str, Any] = super().get_changeform_initial_data(request)
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
            body_format=form.cleaned_data.get("body_format") or "",
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
        if obj.template.published_version is not None:
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
    assert template.published_version is not None  # template_publish has just set it
    number = template.published_version.number
    record_action(model_admin, request, [template], f"Published version {number} from the admin.")
    model_admin.message_user(request, f"Published {template.key} version {number}.", messages.SUCCESS)


# --- templates -----------------------------------------------------------------------------------


class TemplateVersionInline(TabularInline):
    model = TemplateVersion
    fields = readonly_fields = ("number", "note", "created_by", "created_at")
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


class MissingTranslationsFilter(admin.SimpleListFilter):
    """Templates whose published version leaves a field of the default language untranslated."""

    title = "missing translations"
    parameter_name = "missing_translation"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list[tuple[str, str]]:
        names = dict(settings.LANGUAGES)
        others = [code for code in supported_languages() if code != default_language()]
        return [("any", "In any language"), *[(code, f"In {names.get(code, code)}") for code in others]]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Template]) -> QuerySet[Template]:
        value = self.value()
        if not value:
            return queryset
        others = [code for code in supported_languages() if code != default_language()]
        languages = others if value == "any" else [value] if value in others else []
        if not languages:
            return queryset
        condition = Q()
        for language in languages:
            condition |= missing_translation_q(language)
        return queryset.filter(condition)


@admin.register(Template)
class TemplateAdmin(TemplateEditorAdmin):
    list_display = ["key", "name", "channel", "environment", "published", "latest", "translations", "updated_at"]
    list_filter = ["channel", "environment", MissingTranslationsFilter]
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

    def get_fields(self, request: HttpRequest, obj: Template | None = None) -> tuple[str, ...]:
        fields: tuple[str, ...] = ("environment", "key", "name", "channel", "description", "tracking")
        if obj is not None:
            fields += ("published", "new_version", "created_at", "updated_at")
        return fields

    def get_form(self, request: HttpRequest, obj: Template | None = None, change: bool = False, **kwargs: Any) -> Any:
        form = super().get_form(request, obj, change, **kwargs)
        if "tracking" in form.base_fields:
            # Left out of a submitted form, tracking stays as it is (a new template: the environment decides).
            form.base_fields["tracking"].required = False
        return form

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
            tracking=obj.tracking or None,
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
        # ``protected`` lists the workflows whose published version uses a template (RESTRICT).
        return deleted, counts, perms_needed, protected

    def delete_model(self, request: HttpRequest, obj: Template) -> None:
        template_delete(template=obj)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[Template]) -> None:
        for template in queryset:
            template_delete(template=template)

    @admin.display(description="published version", ordering="published_version__number")
    def published(self, obj: Template) -> str:
        return f"v{obj.published_version.number}" if obj.published_version is not None else "—"

    @admin.display(description="latest version")
    def latest(self, obj: Template) -> str:
        number = getattr(obj, "latest_number", None)
        return f"v{number}" if number else "—"

    @admin.display(description="translations")
    def translations(self, obj: Template) -> str:
        if not obj.published_version_id:
            return "—"
        missing = missing_translations(version=obj.published_version, channel=obj.channel)
        others = [code for code in supported_languages() if code != default_language()]
        return format_html_join(
            " ",
            '<span class="{}" title="{}">{}</span>',
            (
                (
                    "ce-missing" if code in missing else "ce-complete",
                    f"missing: {', '.join(missing[code])}" if code in missing else "complete",
                    f"{code} {'✗' if code in missing else '✓'}",
                )
                for code in others
            ),
        )

    @admin.display(description="editor")
    def new_version(self, obj: Template) -> str:
        url = reverse("admin:notification_templates_template_change", args=[obj.pk])
        return format_html('<a class="button" href="{}">Open the editor</a>', url)

    @admin.action(description="Publish the latest version", permissions=["change"])
    def publish_latest(self, request: HttpRequest, queryset: QuerySet[Template]) -> None:
        for template in queryset:
            _publish(self, request, template, None)


# --- layouts -------------------------------------------------------------------------------------


class EmailLayoutForm(forms.ModelForm):
    logo_url = forms.URLField(required=False, max_length=2000, assume_scheme="https", label="Logo URL")

    class Meta:
        model = EmailLayout
        fields = [
            "environment",
            "key",
            "name",
            "header",
            "footer",
            "brand_color",
            "logo_url",
            "css",
            "show_unsubscribe",
            "is_default",
        ]
        widgets = {"brand_color": forms.TextInput(attrs={"type": "color"})}

    def clean(self) -> dict[str, Any]:
        super().clean()
        cleaned = self.cleaned_data
        for language in supported_languages():
            for part in ("header", "footer"):
                name = f"{part}_{language}"
                source = cleaned.get(name) or ""
                if not source:
                    continue
                try:
                    validate_template(source)
                except SandboxError as exc:
                    self.add_error(name, str(exc))
        color = cleaned.get("brand_color")
        if color and not HEX_COLOR.match(color):
            self.add_error("brand_color", "Use a hex colour such as #4f46e5.")
        return cleaned

    def layout_kwargs(self) -> dict[str, Any]:
        data = self.cleaned_data
        return {
            "name": data["name"],
            "header": {language: data.get(f"header_{language}") or "" for language in supported_languages()},
            "footer": {language: data.get(f"footer_{language}") or "" for language in supported_languages()},
            "brand_color": data.get("brand_color") or "#4f46e5",
            "logo_url": data.get("logo_url") or "",
            "css": data.get("css") or "",
            "show_unsubscribe": bool(data.get("show_unsubscribe")),
            "is_default": bool(data.get("is_default")),
        }


@admin.register(EmailLayout)
class EmailLayoutAdmin(ModelAdmin, TranslationAdmin):
    form = EmailLayoutForm
    list_display = ["key", "name", "environment", "brand_color", "is_default", "updated_at"]
    list_filter = ["environment", "is_default"]
    search_fields = ["key", "name"]
    change_form_template = "admin/notification_templates/emaillayout/change_form.html"

    class Media:
        js = ("clarion/admin/translation-tabs.js", "clarion/admin/layout-preview.js")
        css = {"all": ("clarion/admin/translation-tabs.css", "clarion/admin/template-editor.css")}

    def get_readonly_fields(self, request: HttpRequest, obj: EmailLayout | None = None) -> list[str]:
        return ["environment", "key"] if obj is not None else []

    def change_view(
        self, request: HttpRequest, object_id: str, form_url: str = "", extra_context: Any = None
    ) -> HttpResponse:
        return allow_email_preview_styles(super().change_view(request, object_id, form_url, extra_context))

    def save_model(self, request: HttpRequest, obj: EmailLayout, form: Any, change: bool) -> None:
        layout, _ = layout_upsert(environment=obj.environment, key=obj.key, **form.layout_kwargs())
        obj.pk = layout.pk
        obj.created_at = layout.created_at
        obj.updated_at = layout.updated_at

    def delete_model(self, request: HttpRequest, obj: EmailLayout) -> None:
        layout_delete(layout=obj)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[EmailLayout]) -> None:
        for layout in queryset:
            layout_delete(layout=layout)

    def get_urls(self) -> list[URLPattern]:
        return [
            path(
                "<path:object_id>/preview/",
                self.admin_site.admin_view(self.preview_view),
                name="notification_templates_emaillayout_preview",
            ),
            *super().get_urls(),
        ]

    def preview_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        """Render a sample email in the layout as the form currently describes it (unsaved)."""
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        stored = self.get_object(request, object_id)
        if stored is None or not self.has_view_permission(request, stored):
            raise Http404("No such layout.")
        layout = EmailLayout(
            pk=stored.pk, environment_id=stored.environment_id, key=stored.key, name=stored.name or stored.key
        )
        for language in supported_languages():
            for part in ("header", "footer"):
                setattr(layout, f"{part}_{language}", request.POST.get(f"{part}_{language}", ""))
        color = request.POST.get("brand_color", "")
        layout.brand_color = color if HEX_COLOR.match(color) else stored.brand_color
        logo = request.POST.get("logo_url", "").strip()
        layout.logo_url = logo if logo.startswith(("http://", "https://")) else ""
        layout.css = request.POST.get("css", "")
        layout.show_unsubscribe = request.POST.get("show_unsubscribe") in {"on", "true", "1"}
        preview_locale = request.POST.get("preview_locale") or None
        try:
            rendered = layout_preview(layout=layout, locale=preview_locale)
        except ApiError as exc:
            details = exc.details if isinstance(exc.details, dict) else {}
            return JsonResponse({"ok": False, "errors": details or {"layout": str(exc.detail)}})
        return JsonResponse({"ok": True, "errors": {}, "rendered": {"body": rendered.body, "text": rendered.text}})

    def delete_view(self, request: HttpRequest, object_id: str, extra_context: Any = None) -> HttpResponse:
        layout = self.get_object(request, object_id)
        if request.method == "POST" and layout is not None:
            try:
                layout_delete(layout=layout)
            except ApiError as exc:
                self.message_user(request, str(exc.detail), messages.ERROR)
                return HttpResponseRedirect(
                    reverse("admin:notification_templates_emaillayout_change", args=[layout.pk])
                )
            self.message_user(request, f"Deleted layout {layout.key}.", messages.SUCCESS)
            return HttpResponseRedirect(reverse("admin:notification_templates_emaillayout_changelist"))
        return super().delete_view(request, object_id, extra_context)
