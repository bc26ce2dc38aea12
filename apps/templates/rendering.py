"""Render a TemplateVersion for a subscriber's locale in the Jinja sandbox."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from django.conf import settings

from apps.core.sandbox import render_string
from apps.templates.models import TemplateVersion

TRANSLATED_FIELDS = ("subject", "title", "body")


def supported_languages() -> list[str]:
    return [code for code, _ in settings.LANGUAGES]


def resolve_language(locale: str | None) -> str:
    """``fr-CA`` → ``fr`` when only ``fr`` is available; unknown → the default language."""
    languages = supported_languages()
    if locale:
        normalized = locale.replace("_", "-").lower()
        if normalized in languages:
            return normalized
        base = normalized.split("-")[0]
        if base in languages:
            return base
    return settings.MODELTRANSLATION_DEFAULT_LANGUAGE


@dataclass(frozen=True)
class RenderedContent:
    locale: str
    subject: str = ""
    title: str = ""
    body: str = ""
    action_url: str = ""
    # field -> language actually used (differs from ``locale`` when a translation fell back)
    fallbacks: dict[str, str] = field(default_factory=dict)


def build_render_context(
    *,
    payload: dict[str, Any] | None,
    subscriber: dict[str, Any] | None,
    actor: Any,
    step: dict[str, Any] | None = None,
    steps: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The one context shape every template sees (engine, preview, admin).

    ``subscriber`` is plain data (``Subscriber.as_context()`` or a dict). ``actor`` may be a
    dict, a subscriber id string (becomes ``{"subscriber_id": ...}``) or None (``{}``).
    ``step`` describes the step being rendered (``{"id": ...}``, plus e.g. digest results);
    ``steps`` holds earlier steps' results by step id.
    """
    if actor is None:
        actor_context: Any = {}
    elif isinstance(actor, str | int):
        actor_context = {"subscriber_id": str(actor)}
    else:
        actor_context = actor
    return {
        "payload": payload if payload is not None else {},
        "subscriber": subscriber if subscriber is not None else {},
        "actor": actor_context,
        "step": step if step is not None else {},
        "steps": steps if steps is not None else {},
    }


def translated_source(version: TemplateVersion, field_name: str, language: str) -> tuple[str, str]:
    """The source text of a translated field in ``language``, falling back to the default."""
    value = getattr(version, f"{field_name}_{language}", None) or ""
    if value:
        return value, language
    default = settings.MODELTRANSLATION_DEFAULT_LANGUAGE
    return getattr(version, f"{field_name}_{default}", None) or "", default


def render_version(
    *, version: TemplateVersion, locale: str | None, context: dict[str, Any], strict: bool = False
) -> RenderedContent:
    """Render every field. ``context`` must be plain data (dicts, lists, scalars).

    Email bodies are HTML and autoescaped; everything else is plain text.
    Raises ``apps.core.sandbox.SandboxError`` with a readable message on failure.
    """
    language = resolve_language(locale)
    channel = version.template.channel
    rendered: dict[str, str] = {}
    fallbacks: dict[str, str] = {}
    for name in TRANSLATED_FIELDS:
        source, used = translated_source(version, name, language)
        if used != language and source:
            fallbacks[name] = used
        autoescape = channel == "email" and name == "body"
        rendered[name] = render_string(source, context, autoescape=autoescape, strict=strict)
    action_url = render_string(version.action_url, context, strict=strict) if version.action_url else ""
    return RenderedContent(locale=language, action_url=action_url, fallbacks=fallbacks, **rendered)
