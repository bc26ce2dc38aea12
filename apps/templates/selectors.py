"""Reads for templates. Everything is scoped to one environment."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from django.db.models import F, Max, QuerySet

from apps.core.errors import NotFound, Unprocessable
from apps.core.sandbox import SandboxError
from apps.templates.models import Template, TemplateVersion
from apps.templates.rendering import RenderedContent, build_render_context, render_version
from apps.tenancy.models import Environment


def template_list(*, environment: Environment, channel: str | None = None) -> QuerySet[Template]:
    """Templates of the environment with the published version and ``latest_number`` annotated."""
    queryset = (
        Template.objects.filter(environment=environment)
        .select_related("published_version")
        .annotate(latest_number=Max("versions__number"))
    )
    if channel:
        queryset = queryset.filter(channel=channel)
    return queryset


def template_get(*, environment: Environment, key: str) -> Template:
    """One template with its published version (and that version's author) in one query."""
    template = (
        template_list(environment=environment).select_related("published_version__created_by").filter(key=key).first()
    )
    if template is None:
        raise NotFound(f"No template with key {key!r}.", code="template_not_found", details={"key": key})
    if template.published_version is not None:
        template.published_version.template = template  # no query when the version reads its template
    return template


def template_versions(*, template: Template) -> QuerySet[TemplateVersion]:
    """Versions newest first."""
    return (
        TemplateVersion.objects.filter(template=template).select_related("created_by", "template").order_by("-number")
    )


def template_version_get(*, template: Template, number: int | None = None) -> TemplateVersion:
    """Version ``number`` of the template, or the latest when ``number`` is None."""
    versions = template_versions(template=template)
    version = versions.first() if number is None else versions.filter(number=number).first()
    if version is None:
        if number is None:
            raise NotFound(f"Template {template.key!r} has no versions yet.", code="version_not_found")
        raise NotFound(
            f"Template {template.key!r} has no version {number}.", code="version_not_found", details={"version": number}
        )
    return version


def published_versions_for_keys(*, environment: Environment | int, keys: Iterable[str]) -> dict[str, TemplateVersion]:
    """``{key: published TemplateVersion}`` for each key that has one, in one query.

    ``version.template`` is loaded too (``render_version`` reads its channel), so rendering a
    chunk of messages costs no further queries.
    """
    keys = {key for key in keys if key}
    if not keys:
        return {}
    versions = TemplateVersion.objects.filter(
        template__environment=environment,
        template__key__in=keys,
        template__published_version=F("pk"),
    ).select_related("template")
    return {version.template.key: version for version in versions}


def preview_subscriber_context(*, environment: Environment, subscriber_id: str) -> dict[str, Any]:
    """The template context of a stored subscriber, for previews."""
    from apps.subscribers.models import Subscriber

    subscriber = Subscriber.objects.filter(environment=environment, subscriber_id=subscriber_id).first()
    if subscriber is None:
        raise NotFound(
            f"No subscriber with id {subscriber_id!r}.",
            code="subscriber_not_found",
            details={"subscriber_id": subscriber_id},
        )
    return subscriber.as_context()


def template_preview(
    *,
    version: TemplateVersion,
    payload: dict[str, Any],
    subscriber: dict[str, Any],
    actor: Any,
    locale: str | None,
    strict: bool = False,
) -> RenderedContent:
    """Render ``version`` with sample data, in the same context shape as the engine.

    A rendering failure is an Unprocessable with code ``template_render``.
    """
    context = build_render_context(payload=payload, subscriber=subscriber, actor=actor, step={"id": "preview"})
    try:
        return render_version(version=version, locale=locale, context=context, strict=strict)
    except SandboxError as exc:
        raise Unprocessable(
            f"The template could not be rendered: {exc}", code="template_render", details={"error": str(exc)}
        ) from exc
