"""Writes for templates: define a template, add immutable versions, publish, delete.

Content is passed as ``{"en": {"subject": "...", "title": "...", "body": "..."}, "fr": {...}}``.
Every source is compiled in the sandbox before anything is stored, so a published version
always compiles.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError as DjangoValidationError
from django.core.validators import validate_slug
from django.db import IntegrityError, transaction
from django.db.models import Max

from apps.core.errors import Conflict, NotFound, Unprocessable
from apps.core.sandbox import MAX_SOURCE_CHARS, SandboxError, validate_template
from apps.preferences.models import CHANNELS
from apps.templates.models import Template, TemplateVersion
from apps.templates.rendering import TRANSLATED_FIELDS, supported_languages
from apps.tenancy.models import Environment

Content = dict[str, dict[str, str]]

# For each channel: groups of fields; the default language must fill at least one field of
# every group ("email needs a subject and a body", "in-app needs a title or a body").
REQUIRED_FIELDS: dict[str, tuple[tuple[str, ...], ...]] = {
    "email": (("subject",), ("body",)),
    "in_app": (("title", "body"),),
    "push": (("title", "body"),),
    "sms": (("body",),),
    "chat": (("body",),),
}


def _field_max_length(field_name: str) -> int | None:
    return TemplateVersion._meta.get_field(field_name).max_length


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
    if len(key) > Template._meta.get_field("key").max_length:
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
) -> tuple[Template, bool]:
    """Create the template ``key`` or update its name / channel / description.

    ``None`` keeps the current value (on creation: name defaults to the key, channel is required).
    Changing the channel of a template that already has versions is a Conflict: its content
    was written and validated for the old channel.
    """
    _validate_key(key)
    if channel is not None:
        _validate_channel(channel)

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
        if changed:
            template.save(update_fields=[*changed, "updated_at"])
    return template, created


def _steps_reference(steps: Any, key: str) -> bool:
    """Does a workflow step list (nested branches / escalation channels included) use ``key``?"""

    def walk(node: Any) -> Iterator[Any]:
        if isinstance(node, dict):
            yield node
            for value in node.values():
                yield from walk(value)
        elif isinstance(node, list):
            for item in node:
                yield from walk(item)

    return any(node.get("template") == key for node in walk(steps))


def template_references(*, template: Template) -> list[str]:
    """Keys of the environment's workflows whose draft or published version uses the template."""
    from apps.workflows.models import Workflow

    workflows = Workflow.objects.filter(environment_id=template.environment_id).select_related("published_version")
    found: list[str] = []
    for workflow in workflows.only("key", "draft_steps", "published_version__steps"):
        published = workflow.published_version.steps if workflow.published_version else []
        if _steps_reference(workflow.draft_steps, template.key) or _steps_reference(published, template.key):
            found.append(workflow.key)
    return sorted(found)


def template_delete(*, template: Template) -> None:
    """Delete a template and its versions, unless a workflow (draft or published) uses it."""
    workflows = template_references(template=template)
    if workflows:
        raise Conflict(
            f"Template {template.key!r} is used by workflow(s): {', '.join(workflows)}. "
            "Remove it from those workflows first.",
            code="template_in_use",
            details={"workflows": workflows},
        )
    with transaction.atomic():
        # Clear the pointer first so deleting the versions never trips over it.
        Template.objects.filter(pk=template.pk).update(published_version=None)
        template.delete()


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
            errors[language] = "Must be an object of fields (subject, title, body)."
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


def _content_sources(content: Content, action_url: str) -> list[tuple[str, str]]:
    sources = [(f"{language}.{name}", text) for language, fields in content.items() for name, text in fields.items()]
    sources.append(("action_url", action_url))
    return sources


def template_content_validate(*, channel: str, content: Content | None, action_url: str = "") -> Content:
    """Validate content for ``channel``; return it normalized (every language, every field).

    Raises Unprocessable: ``invalid_content`` (shape), ``template_syntax`` (details map
    ``"fr.body"`` to ``"line 2: ..."``) or ``template_incomplete`` (a required field of the
    default language is empty).
    """
    normalized = _normalized_content(content)
    if action_url and len(action_url) > TemplateVersion._meta.get_field("action_url").max_length:
        raise Unprocessable("The action URL is too long.", code="invalid_content", details={"action_url": "Too long."})
    errors = _syntax_errors(_content_sources(normalized, action_url))
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


def _latest_version(template: Template) -> TemplateVersion | None:
    return TemplateVersion.objects.filter(template=template).order_by("-number").first()


def template_version_create(
    *,
    template: Template,
    content: Content,
    action_url: str = "",
    note: str = "",
    created_by: Any = None,
    publish: bool = False,
    skip_if_unchanged: bool = False,
) -> TemplateVersion:
    """Add the next numbered, immutable version of ``template`` (and publish it if asked).

    With ``skip_if_unchanged`` an identical copy of the latest version is not stored again; the
    latest version is returned instead (so repeated ``PUT`` calls are idempotent).
    """
    normalized = template_content_validate(channel=template.channel, content=content, action_url=action_url)
    action_url = action_url or ""
    note = (note or "")[: TemplateVersion._meta.get_field("note").max_length]

    if skip_if_unchanged:
        latest = _latest_version(template)
        if latest is not None and version_content(latest) == normalized and latest.action_url == action_url:
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
                        action_url=action_url,
                        note=note,
                        created_by=created_by,
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
    """Point ``template`` at one of its versions (default: the latest). The version must compile."""
    versions = TemplateVersion.objects.filter(template=template)
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
    errors = _syntax_errors(_content_sources(version_content(version), version.action_url))
    if errors:
        raise Unprocessable(f"Version {version.number} does not compile.", code="template_syntax", details=errors)
    _set_published(template, version)
    return template


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
) -> SavedTemplate:
    """Upsert the template and, when ``content`` is given, add a version — all or nothing.

    Identical content does not create another version. ``publish`` without content publishes
    the latest version.
    """
    template, created = template_upsert(
        environment=environment, key=key, name=name, channel=channel, description=description
    )
    version: TemplateVersion | None = None
    if content is not None:
        version = template_version_create(
            template=template,
            content=content,
            action_url=action_url,
            note=note,
            created_by=created_by,
            publish=publish,
            skip_if_unchanged=True,
        )
    elif publish:
        template_publish(template=template)
        version = template.published_version
    return SavedTemplate(template=template, created=created, version=version)
