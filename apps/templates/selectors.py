"""Reads for templates. Everything is scoped to one environment."""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from typing import Any

from django.conf import settings
from django.db.models import F, Max, Q, QuerySet
from django.utils import timezone

from apps.core.errors import NotFound, Unprocessable
from apps.core.sandbox import SandboxError, lenient
from apps.templates.models import EmailLayout, Template, TemplateVersion
from apps.templates.rendering import (
    CHANNEL_FIELDS,
    TRANSLATED_FIELDS,
    URL_FIELDS,
    FieldErrors,
    RenderedContent,
    build_render_context,
    default_language,
    render_version,
    supported_languages,
)
from apps.tenancy.models import Environment

SAMPLE_SUBSCRIBER: dict[str, Any] = {
    "subscriber_id": "sample-subscriber",
    "email": "ada@example.com",
    "phone": "+15555550100",
    "first_name": "Ada",
    "last_name": "Lovelace",
    "avatar": "",
    "locale": "en",
    "timezone": "Europe/London",
    "data": {},
}
SAMPLE_ACTOR: dict[str, Any] = {
    "subscriber_id": "sample-actor",
    "first_name": "Grace",
    "last_name": "Hopper",
    "email": "grace@example.com",
    "avatar": "",
}


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
        template_list(environment=environment)
        .select_related("published_version__created_by", "published_version__layout")
        .filter(key=key)
        .first()
    )
    if template is None:
        raise NotFound(f"No template with key {key!r}.", code="template_not_found", details={"key": key})
    if template.published_version is not None:
        template.published_version.template = template  # no query when the version reads its template
    return template


def template_versions(*, template: Template) -> QuerySet[TemplateVersion]:
    """Versions newest first."""
    return (
        TemplateVersion.objects.filter(template=template)
        .select_related("created_by", "template", "layout")
        .order_by("-number")
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
    ).select_related("template", "layout")
    return {version.template.key: version for version in versions}


def pinned_versions(*, pks: Iterable[int]) -> dict[int, TemplateVersion]:
    """``{pk: TemplateVersion}`` for versions fixed earlier (a run's pins), whatever is published now."""
    pks = set(pks)
    if not pks:
        return {}
    return TemplateVersion.objects.select_related("template", "layout").in_bulk(pks)


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


def _sample_digest(payload: dict[str, Any], actor: dict[str, Any]) -> dict[str, Any]:
    """Two events as a digest step sees them, plus the fields a category digest adds for each held
    message (``subject``, ``body``, ``workflow``: docs/workflows.md), so templates using either publish."""
    now = timezone.now()
    return {
        "count": 2,
        "key": "sample",
        "events": [
            {
                "payload": payload,
                "actor": actor,
                "transaction_id": f"sample-{number}",
                "created_at": now.isoformat(),
                "subject": f"Sample message {number}",
                "body": f"<p>The body of sample message {number}.</p>",
                "workflow": "sample-workflow",
            }
            for number in (1, 2)
        ],
    }


def sample_render_context(
    *,
    template: Template,
    payload: dict[str, Any] | None = None,
    subscriber: dict[str, Any] | None = None,
    actor: Any = None,
) -> dict[str, Any]:
    """The context previews and validation render with: the template's sample payload (or
    ``payload``), a sample (or given) subscriber and actor, a sample digest of two events and,
    for email, sample preference / unsubscribe links.

    Data the sample defines is strict (unknown keys are errors under ``strict``); free-form data
    (an empty sample payload, ``subscriber.data``, ``actor``, ``steps``) is lenient."""
    payload = template.sample_payload if payload is None else payload
    payload_context = payload if payload else lenient(payload or {})
    subscriber_context = dict(subscriber if subscriber is not None else SAMPLE_SUBSCRIBER)
    subscriber_context["data"] = lenient(subscriber_context.get("data") or {})
    actor_context = lenient(actor if isinstance(actor, dict) else SAMPLE_ACTOR)
    public_url = str(getattr(settings, "PUBLIC_URL", "") or "http://127.0.0.1:8000").rstrip("/")
    context = build_render_context(
        payload=payload_context,
        subscriber=subscriber_context,
        actor=actor_context,
        step=lenient({"id": "preview"}),
        steps=lenient({}),
        digest=_sample_digest(payload_context, actor_context),
        preferences_url=f"{public_url}/preferences/sample/" if template.channel == "email" else None,
        unsubscribe_url=f"{public_url}/unsubscribe/sample" if template.channel == "email" else None,
    )
    return context


def template_preview(
    *,
    version: TemplateVersion,
    payload: dict[str, Any],
    subscriber: dict[str, Any],
    actor: Any,
    locale: str | None,
    strict: bool = False,
    sample: bool = False,
) -> RenderedContent:
    """Render ``version`` with sample data, in the same context shape as the engine.

    With ``sample`` the context is :func:`sample_render_context` (lenient free-form data, sample
    digest and footer links); ``subscriber`` / ``payload`` then override the samples when given.
    A rendering failure is an Unprocessable with code ``template_render`` (``details`` maps each
    failing field, e.g. ``"fr.body"``, to its message).
    """
    if sample:
        context = sample_render_context(
            template=version.template, payload=payload, subscriber=subscriber or None, actor=actor
        )
    else:
        context = build_render_context(payload=payload, subscriber=subscriber, actor=actor, step={"id": "preview"})
    try:
        return render_version(version=version, locale=locale, context=context, strict=strict)
    except FieldErrors as exc:
        raise Unprocessable(
            f"The template could not be rendered: {exc}", code="template_render", details=exc.errors
        ) from exc
    except SandboxError as exc:
        raise Unprocessable(
            f"The template could not be rendered: {exc}", code="template_render", details={"error": str(exc)}
        ) from exc


# --- variables, history, diffs, translations ------------------------------------------------------


def _flatten(prefix: str, value: Any, out: list[dict[str, Any]], depth: int = 0) -> None:
    if isinstance(value, dict) and value and depth < 6:
        for key, item in value.items():
            name = f"{prefix}.{key}" if str(key).isidentifier() else f"{prefix}[{key!r}]"
            _flatten(name, item, out, depth + 1)
        return
    if isinstance(value, list) and value and depth < 6:
        out.append({"name": prefix, "example": f"list of {len(value)}"})
        _flatten(f"{prefix}[0]", value[0], out, depth + 1)
        return
    example = "" if value is None else str(value)
    out.append({"name": prefix, "example": example[:80]})


def template_variables(*, template: Template) -> list[dict[str, Any]]:
    """The variables a template can use, grouped: the sample payload's keys, subscriber fields,
    actor, digest fields and (email) footer links. Each is ``{"group", "name", "example"}``."""
    groups: list[tuple[str, list[dict[str, Any]]]] = []
    payload: list[dict[str, Any]] = []
    _flatten("payload", template.sample_payload or {}, payload)
    groups.append(("payload", [row for row in payload if row["name"] != "payload"]))
    subscriber = [
        {"name": f"subscriber.{key}", "example": "" if isinstance(value, dict) else str(value)}
        for key, value in SAMPLE_SUBSCRIBER.items()
    ]
    subscriber.append({"name": "subscriber.data.<key>", "example": "custom subscriber data"})
    groups.append(("subscriber", subscriber))
    groups.append(("actor", [{"name": f"actor.{key}", "example": str(value)} for key, value in SAMPLE_ACTOR.items()]))
    digest = [
        {"name": "digest.count", "example": "2"},
        {"name": "digest.key", "example": "sample"},
        {"name": "digest.events", "example": "list of events"},
        {"name": "digest.events[0].payload", "example": "the event's payload"},
        {"name": "digest.events[0].actor", "example": "the event's actor"},
        {"name": "digest.events[0].transaction_id", "example": "sample-1"},
        {"name": "digest.events[0].created_at", "example": "ISO 8601"},
        {"name": "digest.events[0].subject", "example": "a held message's subject (category digest)"},
        {"name": "digest.events[0].body", "example": "a held message's body (category digest)"},
        {"name": "digest.events[0].workflow", "example": "a held message's workflow key (category digest)"},
    ]
    groups.append(("digest", digest))
    if template.channel == "email":
        groups.append(
            (
                "links",
                [
                    {"name": "preferences_url", "example": "the subscriber's preference center"},
                    {"name": "unsubscribe_url", "example": "one-click unsubscribe"},
                ],
            )
        )
    return [{"group": group, **row} for group, rows in groups for row in rows]


def _version_fields(version: TemplateVersion) -> dict[str, str]:
    """Every field a person can change in a version, flattened: ``{"en.body": ..., "layout": ...}``."""
    fields = {
        f"{language}.{name}": getattr(version, f"{name}_{language}", None) or ""
        for language in supported_languages()
        for name in TRANSLATED_FIELDS
    }
    fields.update({name: getattr(version, name) or "" for name in URL_FIELDS})
    fields["body_format"] = version.body_format
    fields["layout"] = version.layout.key if version.layout_id and version.layout else ""
    return fields


def version_changes(
    *, versions: list[TemplateVersion], previous: TemplateVersion | None = None
) -> dict[int, list[str]]:
    """For each version (newest first, as ``template_versions`` returns them), the fields it
    changed compared with the version before it: ``{3: ["en.subject", "fr.body"], 1: []}``."""
    ordered = sorted(versions, key=lambda version: version.number)
    changes: dict[int, list[str]] = {}
    before = _version_fields(previous) if previous is not None else None
    for version in ordered:
        current = _version_fields(version)
        if before is None:
            changes[version.number] = [name for name, value in current.items() if value and name != "body_format"]
        else:
            changes[version.number] = [name for name in current if current[name] != before.get(name)]
        before = current
    return changes


def template_version_diff(*, template: Template, a: int, b: int) -> list[dict[str, Any]]:
    """Field-by-field comparison of two versions: ``[{"field", "before", "after", "changed",
    "diff"}]`` for every field that is non-empty in either, ``diff`` a unified diff."""
    first = template_version_get(template=template, number=a)
    second = template_version_get(template=template, number=b)
    before, after = _version_fields(first), _version_fields(second)
    rows = []
    for name in before:
        old, new = before[name], after[name]
        if not old and not new:
            continue
        diff = "\n".join(
            difflib.unified_diff(old.splitlines(), new.splitlines(), fromfile=f"v{a}", tofile=f"v{b}", lineterm="", n=2)
        )
        rows.append({"field": name, "before": old, "after": new, "changed": old != new, "diff": diff})
    return rows


def missing_translations(*, version: TemplateVersion | None, channel: str) -> dict[str, list[str]]:
    """``{language: [fields]}``: fields the default language fills and another leaves empty
    (they fall back to the default language)."""
    if version is None:
        return {}
    default = default_language()
    fields = [name for name in CHANNEL_FIELDS.get(channel, ()) if name in TRANSLATED_FIELDS]
    missing: dict[str, list[str]] = {}
    for language in supported_languages():
        if language == default:
            continue
        empty = [
            name
            for name in fields
            if getattr(version, f"{name}_{default}", None) and not getattr(version, f"{name}_{language}", None)
        ]
        if empty:
            missing[language] = empty
    return missing


def missing_translation_q(language: str, *, prefix: str = "published_version__") -> Q:
    """Templates whose (published) version has a field in the default language and not in ``language``."""
    default = default_language()
    condition = Q()
    for name in TRANSLATED_FIELDS:
        condition |= ~Q(**{f"{prefix}{name}_{default}": ""}) & Q(**{f"{prefix}{name}_{language}": ""})
    return condition


# --- layouts --------------------------------------------------------------------------------------


def layout_list(*, environment: Environment) -> QuerySet[EmailLayout]:
    return EmailLayout.objects.filter(environment=environment).order_by("key")


def layout_get(*, environment: Environment, key: str) -> EmailLayout:
    layout = EmailLayout.objects.filter(environment=environment, key=key).first()
    if layout is None:
        raise NotFound(f"No email layout with key {key!r}.", code="layout_not_found", details={"key": key})
    return layout


SAMPLE_LAYOUT_BODY = {
    "en": "# Your weekly summary\n\nHi {{ subscriber.first_name }}, here is what happened.\n\n"
    "- 3 new comments\n- 1 mention\n\n[Open the app](https://example.com)",
    "fr": "# Votre résumé\n\nBonjour {{ subscriber.first_name }}, voici ce qui s'est passé.\n\n"
    "- 3 nouveaux commentaires\n- 1 mention\n\n[Ouvrir l'application](https://example.com)",
    "de": "# Ihre Zusammenfassung\n\nHallo {{ subscriber.first_name }}, das ist passiert.\n\n"
    "- 3 neue Kommentare\n- 1 Erwähnung\n\n[App öffnen](https://example.com)",
}


def layout_preview(*, layout: EmailLayout, locale: str | None) -> RenderedContent:
    """A sample Markdown email rendered in ``layout`` (previews of the layout editor)."""
    template = Template(environment_id=layout.environment_id, key="layout-preview", channel="email")
    version = TemplateVersion(
        template=template,
        number=0,
        body_format=TemplateVersion.BodyFormat.MARKDOWN,
        preheader_en="A preview of the layout",
    )
    version.layout = layout
    for language in supported_languages():
        setattr(version, f"subject_{language}", "Sample email")
        setattr(version, f"body_{language}", SAMPLE_LAYOUT_BODY.get(language, SAMPLE_LAYOUT_BODY["en"]))
    return template_preview(version=version, payload={}, subscriber={}, actor=None, locale=locale, sample=True)
