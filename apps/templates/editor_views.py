"""The template editor's admin views: a template's change page is the editor; beside it the live
preview, test sends, rollback, version diffs and the plain settings form.

``TemplateEditorAdmin`` holds these views; ``TemplateAdmin`` (apps/templates/admin.py) builds on it
with the list, filters and actions. Reading and checking the editor's form is ``editor``; every
write goes through ``services`` (a save is one ``template_save``).
"""

from __future__ import annotations

import difflib
import json
from typing import Any

from django import forms
from django.contrib import messages
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseNotAllowed, HttpResponseRedirect, JsonResponse
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils.safestring import mark_safe
from unfold.admin import ModelAdmin

from apps.core.errors import ApiError
from apps.subscribers.models import Subscriber
from apps.templates import editor
from apps.templates.models import EmailLayout, Template, TemplateVersion
from apps.templates.selectors import template_variables, template_version_diff, template_versions, version_changes
from apps.templates.services import TEST_SEND_CHANNELS, template_rollback, template_save, template_test_send


def allow_email_preview_styles(response: HttpResponse) -> HttpResponse:
    """The page's Content-Security-Policy with inline styles allowed (scripts stay 'self' only).

    The email preview is a sandboxed ``srcdoc`` iframe, which inherits the page's policy, and
    email HTML is styled inline by nature (style attributes, ``<style>`` in the head)."""
    response._csp_replace = {"style-src": ["'self'", "'unsafe-inline'"]}  # type: ignore[attr-defined]
    return response


class TemplateEditorAdmin(ModelAdmin):
    """The editor views of ``TemplateAdmin`` (URL names ``notification_templates_template_*``)."""

    def get_urls(self) -> list[URLPattern]:
        def view(func: Any, suffix: str) -> URLPattern:
            return path(
                f"<path:object_id>/{suffix}/",
                self.admin_site.admin_view(func),
                name=f"notification_templates_template_{suffix.replace('-', '_')}",
            )

        return [
            view(self.settings_view, "settings"),
            view(self.preview_view, "preview"),
            view(self.test_send_view, "test-send"),
            view(self.diff_view, "diff"),
            path(
                "<path:object_id>/rollback/<int:number>/",
                self.admin_site.admin_view(self.rollback_view),
                name="notification_templates_template_rollback",
            ),
            *super().get_urls(),
        ]

    def _template_or_404(self, request: HttpRequest, object_id: str) -> Template:
        template = self.get_object(request, object_id)
        if template is None or not self.has_view_permission(request, template):
            raise Http404("No such template.")
        return template

    def settings_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        """The plain change form (name, description, channel)."""
        return super().changeform_view(request, object_id, extra_context={"editor_url": self._editor_url(object_id)})

    def _editor_url(self, object_id: Any) -> str:
        return reverse("admin:notification_templates_template_change", args=[object_id])

    def change_view(
        self, request: HttpRequest, object_id: str, form_url: str = "", extra_context: Any = None
    ) -> HttpResponse:
        template = self._template_or_404(request, object_id)
        if request.method == "POST":
            if not self.has_change_permission(request, template):
                raise PermissionDenied
            return self._editor_save(request, template)
        source = None
        from_version = request.GET.get("from_version", "")
        versions = template.versions.select_related("layout")
        if from_version.isdigit():
            source = versions.filter(number=int(from_version)).first()
        if source is None:
            source = versions.order_by("-number").first()
        return self._editor_response(request, template, source=source, errors={}, data=None)

    def _editor_save(self, request: HttpRequest, template: Template) -> HttpResponse:
        draft = editor.parse_draft(template, request.POST)
        errors = editor.validate_draft(template, draft)
        publish = request.POST.get("_action") == "publish"
        if errors:
            self.message_user(
                request,
                "Nothing was saved: fix the fields marked below."
                if not publish
                else "Not published: fix the fields marked below.",
                messages.ERROR,
            )
            return self._editor_response(request, template, source=None, errors=errors, data=request.POST)
        try:
            saved = template_save(
                environment=template.environment,
                key=template.key,
                sample_payload=draft.sample_payload,
                content=draft.content,
                urls=draft.urls,
                body_format=draft.body_format,
                layout=draft.layout,
                note=draft.note,
                created_by=request.user,
                publish=publish,
                check_render=True,
            )
        except ApiError as exc:
            details = exc.details if isinstance(exc.details, dict) else {}
            errors = {str(k): str(v) for k, v in details.items()} or {"template": str(exc.detail)}
            self.message_user(request, f"Nothing was saved: {exc.detail}", messages.ERROR)
            return self._editor_response(request, template, source=None, errors=errors, data=request.POST)
        # Content is always given, so a version is always written or (unchanged: skipped) reused.
        version = saved.version
        assert version is not None
        verb = "Published" if publish else "Saved draft"
        self.log_change(request, template, f"{verb} version {version.number}. {draft.note}".strip())
        self.message_user(request, f"{verb}: {template.key} version {version.number}.", messages.SUCCESS)
        return HttpResponseRedirect(self._editor_url(template.pk))

    def _editor_response(
        self,
        request: HttpRequest,
        template: Template,
        *,
        source: TemplateVersion | None,
        errors: dict[str, str],
        data: Any,
    ) -> HttpResponse:
        versions = list(template_versions(template=template))
        changes = version_changes(versions=versions)
        # Versions older than the published one were replaced by it: "superseded", not "draft".
        published_number = next((v.number for v in versions if v.pk == template.published_version_id), None)
        fields = editor.editor_fields(template, source, errors, data)
        layouts = list(EmailLayout.objects.filter(environment_id=template.environment_id).order_by("key"))
        if data is not None:
            chosen_layout = data.get("layout", "")
            body_format = data.get("body_format", "markdown")
            sample_text = data.get("sample_payload", "")
            note = data.get("note", "")
        else:
            if source is not None:
                chosen_layout = str(source.layout_id or "")
                body_format = source.body_format
            else:
                default = next((layout for layout in layouts if layout.is_default), None)
                chosen_layout = str(default.pk) if default else ""
                body_format = TemplateVersion.BodyFormat.MARKDOWN
            sample_text = json.dumps(template.sample_payload or {}, indent=2, ensure_ascii=False)
            note = ""
        known: set[str] = set()
        for language in fields["languages"]:
            known.update(row["error_key"] for row in language["fields"])
        known.update(row["error_key"] for row in fields["url_fields"])
        known.update({"sample_payload", "layout", "body_format"})
        other_errors = {key: value for key, value in errors.items() if key not in known}
        context = {
            **self.admin_site.each_context(request),
            "opts": self.model._meta,
            "title": f"Edit “{template.name}”",
            "subtitle": template.key,
            "template_obj": template,
            "channel": template.channel,
            "source": source,
            "versions": [
                {
                    "version": version,
                    "changes": changes.get(version.number, []),
                    "is_published": template.published_version_id == version.pk,
                    "is_superseded": published_number is not None and version.number < published_number,
                }
                for version in versions
            ],
            "layouts": layouts,
            "chosen_layout": chosen_layout,
            "body_format": body_format,
            "sample_text": sample_text,
            "note": note,
            "errors": errors,
            "other_errors": other_errors,
            "variables": template_variables(template=template),
            "subscribers": list(
                Subscriber.objects.filter(environment_id=template.environment_id)
                .order_by("subscriber_id")
                .values_list("subscriber_id", flat=True)[:100]
            ),
            "can_change": self.has_change_permission(request, template),
            "can_test_send": template.channel in TEST_SEND_CHANNELS,
            "preview_url": reverse("admin:notification_templates_template_preview", args=[template.pk]),
            "test_send_url": reverse("admin:notification_templates_template_test_send", args=[template.pk]),
            "diff_url": reverse("admin:notification_templates_template_diff", args=[template.pk]),
            "settings_url": reverse("admin:notification_templates_template_settings", args=[template.pk]),
            "history_url": reverse("admin:notification_templates_template_history", args=[template.pk]),
            "media": forms.Media(
                js=["clarion/admin/template-editor.js"], css={"all": ["clarion/admin/template-editor.css"]}
            ),
            **fields,
        }
        request.current_app = self.admin_site.name
        return allow_email_preview_styles(
            TemplateResponse(request, "admin/notification_templates/template/editor.html", context)
        )

    def preview_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        template = self._template_or_404(request, object_id)
        draft = editor.parse_draft(template, request.POST)
        result = editor.preview_draft(
            template,
            draft,
            language=request.POST.get("preview_locale") or None,
            subscriber_id=request.POST.get("preview_subscriber", "").strip(),
        )
        return JsonResponse(editor.preview_json(template, result))

    def test_send_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        template = self._template_or_404(request, object_id)
        if not self.has_change_permission(request, template):
            raise PermissionDenied
        draft = editor.parse_draft(template, request.POST)
        errors = editor.validate_draft(template, draft)
        if errors:
            return JsonResponse({"ok": False, "message": "Fix the marked fields first.", "errors": errors}, status=422)
        try:
            message = template_test_send(
                version=editor.draft_version(template, draft),
                to=request.POST.get("test_to", ""),
                subscriber_id=request.POST.get("test_subscriber", "").strip(),
                locale=request.POST.get("preview_locale") or None,
            )
        except ApiError as exc:
            details = exc.details if isinstance(exc.details, dict) else {}
            return JsonResponse({"ok": False, "message": str(exc.detail), "errors": details}, status=422)
        sent = message.status in {"sent", "delivered", "queued", "sending"}
        text = (
            f"Sent to {message.recipient} via {message.provider or 'the default backend'} ({message.status})."
            if sent
            else f"Not sent to {message.recipient}: {message.error or message.status}."
        )
        return JsonResponse({"ok": sent, "message": text, "status": message.status, "message_id": message.pk})

    def rollback_view(self, request: HttpRequest, object_id: str, number: int) -> HttpResponse:
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        template = self._template_or_404(request, object_id)
        if not self.has_change_permission(request, template):
            raise PermissionDenied
        try:
            version = template_rollback(template=template, version_number=number, created_by=request.user)
        except ApiError as exc:
            self.message_user(request, f"Could not roll back: {exc.detail}", messages.ERROR)
        else:
            self.log_change(request, template, f"Rolled back to version {number} (published version {version.number}).")
            self.message_user(
                request,
                f"Rolled back: version {version.number} (a copy of version {number}) is now published.",
                messages.SUCCESS,
            )
        return HttpResponseRedirect(self._editor_url(template.pk))

    def diff_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        template = self._template_or_404(request, object_id)
        numbers = [request.GET.get("a", ""), request.GET.get("b", "")]
        if not all(number.isdigit() for number in numbers):
            self.message_user(request, "Choose two versions to compare.", messages.WARNING)
            return HttpResponseRedirect(self._editor_url(template.pk))
        a, b = sorted(int(number) for number in numbers)
        try:
            rows = template_version_diff(template=template, a=a, b=b)
        except ApiError as exc:
            self.message_user(request, str(exc.detail), messages.ERROR)
            return HttpResponseRedirect(self._editor_url(template.pk))
        differ = difflib.HtmlDiff(tabsize=2)
        tables = [
            {
                **row,
                "table": mark_safe(
                    differ.make_table(
                        row["before"].splitlines() or [""],
                        row["after"].splitlines() or [""],
                        fromdesc=f"version {a}",
                        todesc=f"version {b}",
                    )
                ),
            }
            for row in rows
        ]
        context = {
            **self.admin_site.each_context(request),
            "opts": self.model._meta,
            "title": f"{template.key}: version {a} → version {b}",
            "template_obj": template,
            "a": a,
            "b": b,
            "rows": tables,
            "changed_count": sum(1 for row in rows if row["changed"]),
            "editor_url": self._editor_url(template.pk),
            "media": forms.Media(css={"all": ["clarion/admin/template-editor.css"]}),
        }
        request.current_app = self.admin_site.name
        return TemplateResponse(request, "admin/notification_templates/template/diff.html", context)
