"""The admin template editor: reads the editor's form into a draft, validates it, previews it.

The same POST data (the editor form, sent as ``FormData``) drives the live preview, the test send
and the save, so what a person sees in the preview is what gets stored. Writes go through
``services``; nothing here touches the database directly.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.http import QueryDict

from apps.core.errors import ApiError
from apps.core.sandbox import SandboxError, time_limit
from apps.templates import selectors, services
from apps.templates.models import EmailLayout, Template, TemplateVersion
from apps.templates.rendering import (
    CHANNEL_FIELDS,
    TRANSLATED_FIELDS,
    URL_FIELDS,
    RenderedContent,
    default_language,
    render_version,
    resolve_language,
    sms_segments,
    supported_languages,
)

FIELD_LABELS = {
    "subject": "Subject",
    "preheader": "Preheader (the preview text after the subject)",
    "title": "Title",
    "body": "Body",
    "action_url": "Action URL (opened when the message is clicked)",
    "primary_action_label": "Primary button label",
    "primary_action_url": "Primary button URL",
    "secondary_action_label": "Secondary button label",
    "secondary_action_url": "Secondary button URL",
}
BODY_LABELS = {
    "email": "Body (Markdown with variables, or HTML)",
    "sms": "Text",
    "chat": "Text",
    "push": "Body",
    "in_app": "Body",
    "webhook": "Body (JSON or text sent to the webhook)",
}
TEXTAREA_FIELDS = {"body"}


def field_label(channel: str, name: str) -> str:
    return BODY_LABELS.get(channel, "Body") if name == "body" else FIELD_LABELS.get(name, name)


def translated_fields(channel: str) -> list[str]:
    return [name for name in CHANNEL_FIELDS.get(channel, ("body",)) if name in TRANSLATED_FIELDS]


def url_fields(channel: str) -> list[str]:
    return [name for name in CHANNEL_FIELDS.get(channel, ()) if name in URL_FIELDS]


@dataclass
class Draft:
    """What the editor form says, parsed; ``errors`` are shape errors (e.g. invalid JSON)."""

    content: dict[str, dict[str, str]]
    urls: dict[str, str]
    body_format: str
    layout: EmailLayout | None
    sample_payload: dict[str, Any]
    note: str
    errors: dict[str, str] = field(default_factory=dict)


def parse_draft(template: Template, data: QueryDict) -> Draft:
    errors: dict[str, str] = {}
    content = {
        language: {name: data.get(f"{name}_{language}", "").replace("\r\n", "\n") for name in TRANSLATED_FIELDS}
        for language in supported_languages()
    }
    urls = {name: data.get(name, "").strip() for name in URL_FIELDS}
    body_format = data.get("body_format", "") or TemplateVersion.BodyFormat.MARKDOWN
    if body_format not in TemplateVersion.BodyFormat.values:
        errors["body_format"] = "Choose Markdown or HTML."
        body_format = TemplateVersion.BodyFormat.MARKDOWN
    layout = None
    layout_id = data.get("layout", "")
    if template.channel == "email" and layout_id:
        layout = EmailLayout.objects.filter(environment_id=template.environment_id, pk=layout_id).first()
        if layout is None:
            errors["layout"] = "That layout does not exist in this environment."
    sample_payload: dict[str, Any] = template.sample_payload or {}
    raw_sample = data.get("sample_payload")
    if raw_sample is not None:
        try:
            parsed = json.loads(raw_sample or "{}")
        except json.JSONDecodeError as exc:
            errors["sample_payload"] = f"Not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})."
        else:
            if isinstance(parsed, dict):
                sample_payload = parsed
            else:
                errors["sample_payload"] = "The sample payload must be a JSON object: { ... }."
    return Draft(
        content=content,
        urls=urls,
        body_format=body_format,
        layout=layout,
        sample_payload=sample_payload,
        note=data.get("note", "").strip(),
        errors=errors,
    )


def draft_version(template: Template, draft: Draft) -> TemplateVersion:
    """An unsaved version of the draft (the template's sample payload replaced by the draft's)."""
    preview_template = Template(
        pk=template.pk,
        environment_id=template.environment_id,
        key=template.key,
        channel=template.channel,
        sample_payload=draft.sample_payload,
    )
    return services.build_version(
        template=preview_template,
        content=draft.content,
        urls=draft.urls,
        body_format=draft.body_format,
        layout=draft.layout,
    )


def validate_draft(template: Template, draft: Draft) -> dict[str, str]:
    """Every problem with the draft, keyed like the API's details: ``"fr.body"``, ``"action_url"``,
    ``"layout.footer"``, ``"sample_payload"``. Empty when it can be saved and published."""
    errors = dict(draft.errors)
    if errors:
        return errors
    try:
        services.template_content_validate(channel=template.channel, content=draft.content, urls=draft.urls)
    except ApiError as exc:
        details = exc.details if isinstance(exc.details, dict) else {}
        return {str(key): str(value) for key, value in details.items()} or {"template": str(exc.detail)}
    return services.template_render_check(version=draft_version(template, draft))


@dataclass
class PreviewResult:
    rendered: RenderedContent | None
    errors: dict[str, str]
    language: str


def preview_draft(template: Template, draft: Draft, *, language: str | None, subscriber_id: str = "") -> PreviewResult:
    """Render the draft for the preview: strictly first (to report unknown variables next to the
    fields), then leniently so the preview still shows something while the person types."""
    language = resolve_language(language)
    errors = dict(draft.errors)
    subscriber = None
    if subscriber_id:
        try:
            subscriber = selectors.preview_subscriber_context(
                environment=template.environment, subscriber_id=subscriber_id
            )
        except ApiError as exc:
            errors["preview_subscriber"] = str(exc.detail)
    version = draft_version(template, draft)
    try:
        services.template_content_validate(channel=template.channel, content=draft.content, urls=draft.urls)
    except ApiError as exc:
        details = exc.details if isinstance(exc.details, dict) else {}
        if exc.error_code == "template_syntax":
            errors.update({str(key): str(value) for key, value in details.items()})
            return PreviewResult(rendered=None, errors=errors, language=language)
        errors.update({str(key): str(value) for key, value in details.items()})
    context = selectors.sample_render_context(template=version.template, subscriber=subscriber)
    rendered = None
    with time_limit():  # the strict and the lenient attempt share one limit
        for strict in (True, False):
            try:
                rendered = render_version(version=version, locale=language, context=context, strict=strict)
                break
            except SandboxError as exc:
                if strict:
                    errors.update(services._render_errors(exc))
                else:
                    errors.setdefault("template", str(exc))
    return PreviewResult(rendered=rendered, errors=errors, language=language)


def preview_json(template: Template, result: PreviewResult) -> dict[str, Any]:
    rendered = result.rendered
    data: dict[str, Any] = {"ok": not result.errors, "errors": result.errors, "language": result.language}
    if rendered is not None:
        data["rendered"] = {
            "subject": rendered.subject,
            "preheader": rendered.preheader,
            "title": rendered.title,
            "body": rendered.body,
            "text": rendered.text,
            "action_url": rendered.action_url,
            "actions": rendered.actions,
            "fallbacks": rendered.fallbacks,
            "layout": rendered.layout,
            "sms": sms_segments(rendered.body) if template.channel == "sms" else {},
        }
    return data


def editor_fields(template: Template, source: Any, errors: dict[str, str], data: QueryDict | None) -> dict[str, Any]:
    """The per-language field structure the editor template loops over."""
    default = default_language()
    language_names = dict(settings.LANGUAGES)

    def value_of(input_name: str, stored: str) -> str:
        return data.get(input_name, "") if data is not None else stored

    languages = []
    for code in supported_languages():
        fields = []
        for name in translated_fields(template.channel):
            input_name = f"{name}_{code}"
            stored = getattr(source, input_name, "") if source is not None else ""
            default_value = value_of(f"{name}_{default}", getattr(source, f"{name}_{default}", "") if source else "")
            fields.append(
                {
                    "name": name,
                    "input_name": input_name,
                    "label": field_label(template.channel, name),
                    "value": value_of(input_name, stored or ""),
                    "textarea": name in TEXTAREA_FIELDS,
                    "error_key": f"{code}.{name}",
                    "error": errors.get(f"{code}.{name}", ""),
                    "fallback": default_value if code != default else "",
                }
            )
        missing = sum(1 for row in fields if code != default and row["fallback"] and not row["value"])
        languages.append(
            {
                "code": code,
                "name": language_names.get(code, code),
                "is_default": code == default,
                "fields": fields,
                "missing": missing,
            }
        )
    urls = [
        {
            "name": name,
            "input_name": name,
            "label": field_label(template.channel, name),
            "value": value_of(name, getattr(source, name, "") if source is not None else ""),
            "error_key": name,
            "error": errors.get(name, ""),
        }
        for name in url_fields(template.channel)
    ]
    return {"languages": languages, "url_fields": urls, "default_language_name": language_names.get(default, default)}
