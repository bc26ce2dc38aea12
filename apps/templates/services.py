"""Writes for templates: define a template, add immutable versions, publish, delete.

Content is passed as ``{"en": {"subject": "...", "title": "...", "body": "..."}, "fr": {...}}``.
Every source is compiled in the sandbox before anything is stored, so a published version
always compiles.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Final

from django.conf import settings
from django.core.exceptions import ValidationError as DjangoValidationError
from django.core.validators import EmailValidator as DjangoEmailValidator
from django.core.validators import validate_slug
from django.db import IntegrityError, transaction
from django.db.models import Field, Max, Model, RestrictedError

from apps.core.channels import CHANNELS
from apps.core.errors import Conflict, NotFound, Unprocessable
from apps.core.sandbox import MAX_SOURCE_CHARS, SandboxError, time_limit, validate_template
from apps.templates.models import EmailLayout, Template, TemplateVersion
from apps.templates.rendering import (
    HEX_COLOR,
    LAYOUT_TRANSLATED_FIELDS,
    TRANSLATED_FIELDS,
    URL_FIELDS,
    FieldErrors,
    render_version,
    supported_languages,
)
from apps.tenancy.models import Environment

Content = dict[str, dict[str, str]]


class _Unset:
    def __repr__(self) -> str:
        return "UNSET"


UNSET: Final = _Unset()
MAX_SAMPLE_BYTES = 64 * 1024

# For each channel: groups of fields; the default language must fill at least one field of
# every group ("email needs a subject and a body", "in-app needs a title or a body").
REQUIRED_FIELDS: dict[str, tuple[tuple[str, ...], ...]] = {
    "email": (("subject",), ("body",)),
    "in_app": (("title", "body"),),
    "push": (("title", "body"),),
    "sms": (("body",),),
    "chat": (("body",),),
    "webhook": (("body",),),
}


def _field_max_length(field_name: str, model: type[Model] = TemplateVersion) -> int | None:
    field = model._meta.get_field(field_name)
    return field.max_length if isinstance(field, Field) else None


def default_language() -> str:
    return settings.MODELTRANSLATION_DEFAULT_LANGUAGE


# --- templates ----------------------------------------------------------------------------------


def _validate_key(key: str) -> None:
    try:
        validate_slug(key)
    except DjangoValidationError as exc:
        raise Unprocessable(
            "A template key may contain only letters, numbers, hyphens and underscores.",
            code="invalid_key",
            details={"key": key},
        ) from exc
    limit = _field_max_length("key", Template)
    if limit is not None and len(key) > limit:
        raise Unprocessable("The template key is too long (100 characters at most).", code="invalid_key")


def _validate_channel(channel: str) -> None:
    if channel not in CHANNELS:
        raise Unprocessable(
            f"Unknown channel {channel!r}. Use one of: {', '.join(CHANNELS)}.",
            code="invalid_channel",
            details={"channel": channel},
        )


def template_upsert(
    *,
    environment: Environment,
    key: str,
    name: str | None = None,
    channel: str | None = None,
    description: str | None = None,
    sample_payload: dict[str, Any] | None = None,
    tracking: str | None = None,
) -> tuple[Template, bool]:
    """Create the template ``key`` or update its name / channel / description / sample payload /
    email open and click tracking (``Template.Tracking``).

    ``None`` keeps the current value (on creation: name defaults to the key, channel is required).
    Changing the channel of a template that already has versions is a Conflict: its content
    was written and validated for the old channel.
    """
    _validate_key(key)
    if channel is not None:
        _validate_channel(channel)
    if sample_payload is not None:
        _validate_sample(sample_payload)
    if tracking is not None and tracking not in Template.Tracking.values:
        raise Unprocessable(
            f"tracking must be one of {', '.join(Template.Tracking.values)}.",
            code="invalid_tracking",
            details={"tracking": "Unknown value."},
        )

    template = Template.objects.filter(environment=environment, key=key).first()
    created = False
    if template is None:
        if channel is None:
            raise Unprocessable("A new template needs a channel.", code="channel_required")
        try:
            with transaction.atomic():
                template = Template.objects.create(
                    environment=environment,
                    key=key,
                    name=name or key,
                    channel=channel,
                    description=description or "",
                    sample_payload=sample_payload or {},
                    tracking=tracking or Template.Tracking.INHERIT,
                )
                created = True
        except IntegrityError:
            # Somebody created it concurrently: update theirs instead.
            template = Template.objects.get(environment=environment, key=key)

    if not created:
        changed: list[str] = []
        if channel is not None and channel != template.channel:
            if template.versions.exists():
                raise Conflict(
                    f"Template {key!r} already has versions for channel {template.channel!r}; "
                    "create a new template for another channel.",
                    code="template_channel_locked",
                    details={"channel": template.channel},
                )
            template.channel = channel
            changed.append("channel")
        if name is not None and name != template.name:
            template.name = name
            changed.append("name")
        if description is not None and description != template.description:
            template.description = description
            changed.append("description")
        if sample_payload is not None and sample_payload != template.sample_payload:
            template.sample_payload = sample_payload
            changed.append("sample_payload")
        if tracking is not None and tracking != template.tracking:
            template.tracking = tracking
            changed.append("tracking")
        if changed:
            template.save(update_fields=[*changed, "updated_at"])
    return template, created


def _validate_sample(sample_payload: Any) -> None:
    if not isinstance(sample_payload, dict):
        raise Unprocessable(
            "The sample payload must be a JSON object.",
            code="invalid_sample",
            details={"sample_payload": "Not an object."},
        )
    if len(json.dumps(sample_payload, default=str)) > MAX_SAMPLE_BYTES:
        raise Unprocessable(
            f"The sample payload is larger than {MAX_SAMPLE_BYTES} bytes.",
            code="invalid_sample",
            details={"sample_payload": "Too large."},
        )


def template_references(*, template: Template) -> list[str]:
    """Keys of the workflows whose published version uses the template (the reference rows
    ``workflow_publish`` writes). One query."""
    keys = template.workflow_references.values_list("workflow__key", flat=True)
    return sorted(set(keys))


def template_delete(*, template: Template) -> None:
    """Delete a template and its versions, unless a workflow's published version uses it."""
    try:
        with transaction.atomic():
            # Clear the pointer first so deleting the versions never trips over it.
            Template.objects.filter(pk=template.pk).update(published_version=None)
            template.delete()
    except RestrictedError as exc:  # reference rows (apps.workflows) keep a template in use
        workflows = template_references(template=template)
        raise Conflict(
            f"Template {template.key!r} is used by workflow(s): {', '.join(workflows)}. "
            "Remove it from those workflows first.",
            code="template_in_use",
            details={"workflows": workflows},
        ) from exc


# --- versions ------------------------------------------------------------------------------------


def _normalized_content(content: Content | None) -> Content:
    """Check the shape and return ``{language: {field: text}}`` for every supported language."""
    languages = supported_languages()
    content = content or {}
    errors: dict[str, str] = {}
    if not isinstance(content, dict):
        raise Unprocessable("Content must be an object keyed by language.", code="invalid_content")
    for language, fields in content.items():
        if language not in languages:
            errors[str(language)] = f"Unknown language. Use one of: {', '.join(languages)}."
            continue
        if not isinstance(fields, dict):
            errors[language] = f"Must be an object of fields ({', '.join(TRANSLATED_FIELDS)})."
            continue
        for field_name, text in fields.items():
            where = f"{language}.{field_name}"
            if field_name not in TRANSLATED_FIELDS:
                errors[where] = f"Unknown field. Use one of: {', '.join(TRANSLATED_FIELDS)}."
            elif text is not None and not isinstance(text, str):
                errors[where] = "Must be a string."
            else:
                limit = _field_max_length(field_name) or MAX_SOURCE_CHARS
                if text and len(text) > min(limit, MAX_SOURCE_CHARS):
                    errors[where] = f"Longer than {min(limit, MAX_SOURCE_CHARS)} characters."
    if errors:
        raise Unprocessable("The template content is invalid.", code="invalid_content", details=errors)
    return {
        language: {name: (content.get(language) or {}).get(name) or "" for name in TRANSLATED_FIELDS}
        for language in languages
    }


def _syntax_errors(sources: Iterable[tuple[str, str]]) -> dict[str, str]:
    errors: dict[str, str] = {}
    for where, source in sources:
        if not source:
            continue
        try:
            validate_template(source)
        except SandboxError as exc:
            errors[where] = str(exc)
    return errors


def _content_sources(content: Content, urls: dict[str, str] | str) -> list[tuple[str, str]]:
    if isinstance(urls, str):
        urls = {"action_url": urls}
    sources = [(f"{language}.{name}", text) for language, fields in content.items() for name, text in fields.items()]
    sources.extend((name, urls.get(name) or "") for name in URL_FIELDS)
    return sources


def template_content_validate(
    *, channel: str, content: Content | None, action_url: str = "", urls: dict[str, str] | None = None
) -> Content:
    """Validate content for ``channel``; return it normalized (every language, every field).

    ``urls`` holds the untranslated URL fields (``action_url``, ``primary_action_url``,
    ``secondary_action_url``); ``action_url`` alone is accepted for older callers.
    Raises Unprocessable: ``invalid_content`` (shape), ``template_syntax`` (details map
    ``"fr.body"`` to ``"line 2: ..."``) or ``template_incomplete`` (a required field of the
    default language is empty).
    """
    normalized = _normalized_content(content)
    urls = {"action_url": action_url, **(urls or {})}
    for name in URL_FIELDS:
        limit = _field_max_length(name)
        if urls.get(name) and limit is not None and len(urls[name]) > limit:
            raise Unprocessable("The URL is too long.", code="invalid_content", details={name: "Too long."})
    errors = _syntax_errors(_content_sources(normalized, urls))
    if errors:
        raise Unprocessable(
            "The template does not compile. See details for each field.", code="template_syntax", details=errors
        )

    language = default_language()
    missing: dict[str, str] = {}
    for group in REQUIRED_FIELDS.get(channel, ()):
        if not any(normalized[language][name].strip() for name in group):
            where = f"{language}.{group[0]}"
            wanted = " or ".join(group)
            missing[where] = f"A {channel.replace('_', '-')} template needs a {wanted} in {language}."
    for kind in ("primary", "secondary"):
        label = any(normalized[lang][f"{kind}_action_label"].strip() for lang in normalized)
        if label and not (urls.get(f"{kind}_action_url") or "").strip():
            missing[f"{kind}_action_url"] = f"The {kind} button has a label but no URL."
    if missing:
        raise Unprocessable(
            "Required content is missing in the default language.", code="template_incomplete", details=missing
        )
    return normalized


def version_content(version: TemplateVersion) -> Content:
    """The stored content of a version in the same shape ``template_version_create`` takes."""
    return {
        language: {name: getattr(version, f"{name}_{language}", None) or "" for name in TRANSLATED_FIELDS}
        for language in supported_languages()
    }


def version_options(version: TemplateVersion) -> dict[str, Any]:
    """The untranslated settings of a version: URLs, body format and layout key."""
    return {
        **{name: getattr(version, name) or "" for name in URL_FIELDS},
        "body_format": version.body_format,
        "layout": version.layout.key if version.layout_id and version.layout else None,
    }


def _latest_version(template: Template) -> TemplateVersion | None:
    return TemplateVersion.objects.filter(template=template).select_related("layout").order_by("-number").first()


def default_layout(*, environment_id: int) -> EmailLayout | None:
    return EmailLayout.objects.filter(environment_id=environment_id, is_default=True).first()


def build_version(
    *,
    template: Template,
    content: Content,
    urls: dict[str, str] | None = None,
    body_format: str = "",
    layout: EmailLayout | _Unset | None = UNSET,
) -> TemplateVersion:
    """An unsaved TemplateVersion with this content (for previews and validation of drafts)."""
    urls = urls or {}
    version = TemplateVersion(
        template=template,
        number=0,
        body_format=body_format or TemplateVersion.BodyFormat.MARKDOWN,
        **{name: (urls.get(name) or "") for name in URL_FIELDS},
        **{f"{name}_{language}": text for language, fields in content.items() for name, text in fields.items()},
    )
    if isinstance(layout, _Unset):
        layout = default_layout(environment_id=template.environment_id) if template.channel == "email" else None
    version.layout = layout
    return version


def _render_errors(error: SandboxError) -> dict[str, str]:
    return dict(error.errors) if isinstance(error, FieldErrors) else {"template": str(error)}


def template_render_check(*, version: TemplateVersion, payload: dict[str, Any] | None = None) -> dict[str, str]:
    """Render every language of ``version`` strictly against the template's sample data.

    Returns ``{"fr.body": "line 2: unknown variable …", "layout.footer": …}`` (empty when it
    renders). Unknown variables are errors wherever the sample defines the data: the sample
    payload (when there is one), the subscriber's fields and the digest; free-form data
    (``subscriber.data``, ``actor``, ``steps``, an empty sample payload) renders leniently.
    """
    from apps.templates.selectors import sample_render_context

    context = sample_render_context(template=version.template, payload=payload)
    errors: dict[str, str] = {}
    with time_limit():  # one limit for all languages, not one per language
        for language in supported_languages():
            own = any(getattr(version, f"{name}_{language}", None) for name in TRANSLATED_FIELDS)
            if not own and language != default_language():
                continue
            try:
                render_version(version=version, locale=language, context=context, strict=True)
            except SandboxError as exc:
                for where, message in _render_errors(exc).items():
                    errors.setdefault(where, message)
    return errors


def _raise_render_errors(errors: dict[str, str], number: int | None = None) -> None:
    if errors:
        which = f"Version {number}" if number else "The template"
        raise Unprocessable(
            f"{which} does not render with the sample data. See details for each field.",
            code="template_render",
            details=errors,
        )


def template_version_create(
    *,
    template: Template,
    content: Content,
    action_url: str = "",
    note: str = "",
    created_by: Any = None,
    publish: bool = False,
    skip_if_unchanged: bool = False,
    urls: dict[str, str] | None = None,
    body_format: str = "",
    layout: EmailLayout | _Unset | None = UNSET,
    check_render: bool = False,
) -> TemplateVersion:
    """Add the next numbered, immutable version of ``template`` (and publish it if asked).

    ``urls`` holds ``primary_action_url`` / ``secondary_action_url`` (and ``action_url``);
    ``layout`` defaults to the environment's default layout for email templates. A version that
    is published here (or with ``check_render``) must render against the sample data
    (``template_render``). With ``skip_if_unchanged`` an identical copy of the latest version is
    not stored again; the latest version is returned instead (so repeated ``PUT`` calls are
    idempotent).
    """
    urls = {"action_url": action_url or "", **{k: v or "" for k, v in (urls or {}).items()}}
    normalized = template_content_validate(channel=template.channel, content=content, urls=urls)
    note = (note or "")[: TemplateVersion._meta.get_field("note").max_length]
    if body_format and body_format not in TemplateVersion.BodyFormat.values:
        raise Unprocessable(
            "The body format must be markdown or html.", code="invalid_content", details={"body_format": body_format}
        )
    if layout is not None and not isinstance(layout, _Unset) and layout.environment_id != template.environment_id:
        raise Unprocessable("That layout belongs to another environment.", code="layout_not_found")
    draft = build_version(template=template, content=normalized, urls=urls, body_format=body_format, layout=layout)
    if publish or check_render:
        _raise_render_errors(template_render_check(version=draft))

    if skip_if_unchanged:
        latest = _latest_version(template)
        if (
            latest is not None
            and version_content(latest) == normalized
            and version_options(latest) == version_options(draft)
        ):
            if publish and template.published_version_id != latest.pk:
                template_publish(template=template, version_number=latest.number)
            return latest

    columns = {f"{name}_{language}": text for language, fields in normalized.items() for name, text in fields.items()}
    with transaction.atomic():
        version: TemplateVersion | None = None
        for attempt in range(2):
            number = (TemplateVersion.objects.filter(template=template).aggregate(n=Max("number"))["n"] or 0) + 1
            try:
                with transaction.atomic():  # a savepoint: a lost race leaves the outer transaction usable
                    version = TemplateVersion.objects.create(
                        template=template,
                        number=number,
                        note=note,
                        created_by=created_by,
                        body_format=draft.body_format,
                        layout=draft.layout,
                        **{name: urls.get(name) or "" for name in URL_FIELDS},
                        **columns,
                    )
                break
            except IntegrityError as exc:
                if attempt == 1:
                    raise Conflict(
                        "Another version was being saved at the same time; try again.", code="version_conflict"
                    ) from exc
        assert version is not None
        if publish:
            _set_published(template, version)
    return version


def _set_published(template: Template, version: TemplateVersion) -> None:
    template.published_version = version
    template.save(update_fields=["published_version", "updated_at"])


def template_publish(*, template: Template, version_number: int | None = None) -> Template:
    """Point ``template`` at one of its versions (default: the latest).

    The version must compile and render against the template's sample data (``template_render``
    with the failing fields in ``details``)."""
    versions = TemplateVersion.objects.filter(template=template).select_related("layout")
    if version_number is None:
        version = versions.order_by("-number").first()
        if version is None:
            raise Unprocessable(f"Template {template.key!r} has no versions to publish.", code="template_no_versions")
    else:
        version = versions.filter(number=version_number).first()
        if version is None:
            raise NotFound(
                f"Template {template.key!r} has no version {version_number}.",
                code="version_not_found",
                details={"version": version_number},
            )
    errors = _syntax_errors(_content_sources(version_content(version), version_options(version)))
    if errors:
        raise Unprocessable(f"Version {version.number} does not compile.", code="template_syntax", details=errors)
    version.template = template
    _raise_render_errors(template_render_check(version=version), version.number)
    _set_published(template, version)
    return template


def template_rollback(*, template: Template, version_number: int, created_by: Any = None) -> TemplateVersion:
    """Publish a NEW version equal to version ``version_number`` (history only ever grows)."""
    source = TemplateVersion.objects.filter(template=template, number=version_number).select_related("layout").first()
    if source is None:
        raise NotFound(
            f"Template {template.key!r} has no version {version_number}.",
            code="version_not_found",
            details={"version": version_number},
        )
    options = version_options(source)
    return template_version_create(
        template=template,
        content=version_content(source),
        urls={name: options[name] for name in URL_FIELDS},
        body_format=source.body_format,
        layout=source.layout,
        note=f"Rollback to version {source.number}",
        created_by=created_by,
        publish=True,
    )


# --- layouts --------------------------------------------------------------------------------------


def layout_upsert(
    *,
    environment: Environment,
    key: str,
    name: str | None = None,
    header: dict[str, str] | None = None,
    footer: dict[str, str] | None = None,
    brand_color: str | None = None,
    logo_url: str | None = None,
    css: str | None = None,
    show_unsubscribe: bool | None = None,
    is_default: bool | None = None,
) -> tuple[EmailLayout, bool]:
    """Create or update the email layout ``key``. ``header`` / ``footer`` are ``{language: html}``
    (sandboxed Jinja); ``None`` keeps a value. ``is_default`` takes the default from any other
    layout of the environment."""
    _validate_key(key)
    errors: dict[str, str] = {}
    languages = supported_languages()
    for part_name, part in (("header", header), ("footer", footer)):
        if part is None:
            continue
        if not isinstance(part, dict):
            errors[part_name] = "Must be an object keyed by language."
            continue
        for language, text in part.items():
            if language not in languages:
                errors[f"{language}.{part_name}"] = f"Unknown language. Use one of: {', '.join(languages)}."
            elif not isinstance(text, str):
                errors[f"{language}.{part_name}"] = "Must be a string."
            elif len(text) > MAX_SOURCE_CHARS:
                errors[f"{language}.{part_name}"] = f"Longer than {MAX_SOURCE_CHARS} characters."
    if brand_color is not None and not HEX_COLOR.match(brand_color):
        errors["brand_color"] = "Use a hex colour such as #4f46e5."
    if logo_url and not re.match(r"^https?://", logo_url):
        errors["logo_url"] = "Use an http(s) URL."
    if css is not None and len(css) > MAX_SOURCE_CHARS:
        errors["css"] = f"Longer than {MAX_SOURCE_CHARS} characters."
    if errors:
        raise Unprocessable("The layout is invalid.", code="invalid_layout", details=errors)
    sources = [
        (f"{language}.{part_name}", text)
        for part_name, part in (("header", header), ("footer", footer))
        for language, text in (part or {}).items()
    ]
    syntax = _syntax_errors(sources)
    if syntax:
        raise Unprocessable("The layout does not compile.", code="template_syntax", details=syntax)

    with transaction.atomic():
        layout = EmailLayout.objects.select_for_update().filter(environment=environment, key=key).first()
        created = layout is None
        if layout is None:
            layout = EmailLayout(environment=environment, key=key, name=name or key)
        if name is not None:
            layout.name = name
        for part_name, part in (("header", header), ("footer", footer)):
            for language, text in (part or {}).items():
                setattr(layout, f"{part_name}_{language}", text)
        for attribute, value in (
            ("brand_color", brand_color),
            ("logo_url", logo_url),
            ("css", css),
            ("show_unsubscribe", show_unsubscribe),
            ("is_default", is_default),
        ):
            if value is not None:
                setattr(layout, attribute, value)
        if layout.is_default:
            EmailLayout.objects.filter(environment=environment, is_default=True).exclude(pk=layout.pk).update(
                is_default=False
            )
        layout.save()
    return layout, created


def layout_content(layout: EmailLayout) -> dict[str, dict[str, str]]:
    return {
        part: {language: getattr(layout, f"{part}_{language}", None) or "" for language in supported_languages()}
        for part in LAYOUT_TRANSLATED_FIELDS
    }


def layout_delete(*, layout: EmailLayout) -> None:
    """Delete a layout no template version uses (history must keep rendering the same)."""
    used = sorted(set(TemplateVersion.objects.filter(layout=layout).values_list("template__key", flat=True).distinct()))
    if used:
        raise Conflict(
            f"Layout {layout.key!r} is used by template(s): {', '.join(used)}.",
            code="layout_in_use",
            details={"templates": used},
        )
    layout.delete()


# --- one call for the API's PUT ------------------------------------------------------------------


@dataclass(frozen=True)
class SavedTemplate:
    template: Template
    created: bool
    version: TemplateVersion | None  # the version written (or reused) by this call


@transaction.atomic
def template_save(
    *,
    environment: Environment,
    key: str,
    name: str | None = None,
    channel: str | None = None,
    description: str | None = None,
    content: Content | None = None,
    action_url: str = "",
    note: str = "",
    publish: bool = False,
    created_by: Any = None,
    sample_payload: dict[str, Any] | None = None,
    urls: dict[str, str] | None = None,
    body_format: str = "",
    layout: EmailLayout | _Unset | None = UNSET,
    check_render: bool = False,
) -> SavedTemplate:
    """Upsert the template and, when ``content`` is given, add a version — all or nothing.

    Identical content does not create another version. ``publish`` without content publishes
    the latest version. ``check_render``: the new content must render against the sample data
    even when it is not published (the admin editor).
    """
    template, created = template_upsert(
        environment=environment,
        key=key,
        name=name,
        channel=channel,
        description=description,
        sample_payload=sample_payload,
    )
    version: TemplateVersion | None = None
    with time_limit():  # validating a new version and publishing it share one render limit
        if content is not None:
            version = template_version_create(
                template=template,
                content=content,
                action_url=action_url,
                note=note,
                created_by=created_by,
                publish=publish,
                skip_if_unchanged=True,
                urls=urls,
                body_format=body_format,
                layout=layout,
                check_render=check_render,
            )
        elif publish:
            template_publish(template=template)
            version = template.published_version
    return SavedTemplate(template=template, created=created, version=version)


# --- test sends -----------------------------------------------------------------------------------

TEST_SEND_CHANNELS = ("email", "sms", "push", "chat", "webhook")


def template_test_send(
    *,
    version: TemplateVersion,
    to: str = "",
    subscriber_id: str = "",
    locale: str | None = None,
    payload: dict[str, Any] | None = None,
) -> Any:
    """Render ``version`` (saved, or a draft from ``build_version``) with the sample data and send
    it once through the environment's real integrations (``message_send_now``).

    ``to`` is an address (email, phone number, chat/webhook URL…); ``subscriber_id`` renders as
    that stored subscriber and sends to their address. Returns the Message (its status says
    whether the provider took it)."""
    from apps.delivery.services import message_send_now, subscriber_recipient
    from apps.subscribers.models import Subscriber
    from apps.templates.selectors import sample_render_context

    template = version.template
    if template.channel not in TEST_SEND_CHANNELS:
        raise Unprocessable(
            "In-app messages are created by workflows: trigger the workflow to see this one in an inbox.",
            code="test_send_unsupported",
            details={"channel": template.channel},
        )
    subscriber = None
    if subscriber_id:
        subscriber = Subscriber.objects.filter(
            environment_id=template.environment_id, subscriber_id=subscriber_id
        ).first()
        if subscriber is None:
            raise NotFound(
                f"No subscriber with id {subscriber_id!r}.",
                code="subscriber_not_found",
                details={"subscriber_id": subscriber_id},
            )
    recipient = (to or "").strip()
    if not recipient and subscriber is not None:
        recipient = subscriber_recipient(subscriber=subscriber, channel=template.channel)
    if not recipient:
        raise Unprocessable(
            "Give an address to send to, or a subscriber.", code="recipient_required", details={"to": "Required."}
        )
    if template.channel == "email":
        try:
            DjangoEmailValidator()(recipient)
        except DjangoValidationError as exc:
            raise Unprocessable(
                f"{recipient!r} is not an email address.", code="invalid_recipient", details={"to": "Not an email."}
            ) from exc
    context = sample_render_context(
        template=template, payload=payload, subscriber=subscriber.as_context() if subscriber else None
    )
    language = locale or (subscriber.locale if subscriber else None)
    try:
        rendered = render_version(version=version, locale=language, context=context)
    except SandboxError as exc:
        raise Unprocessable(
            f"The template could not be rendered: {exc}", code="template_render", details=_render_errors(exc)
        ) from exc
    data: dict[str, Any] = {"test": True}
    if rendered.text:
        data["text"] = rendered.text
    if rendered.action_url:
        data["action_url"] = rendered.action_url
    return message_send_now(
        environment_id=template.environment_id,
        channel=template.channel,
        recipient=recipient,
        subject=rendered.subject if template.channel == "email" else rendered.title,
        body=rendered.body,
        data=data,
        subscriber_id=subscriber.pk if subscriber else None,
        template_version_id=version.pk,
        locale=rendered.locale,
    )
