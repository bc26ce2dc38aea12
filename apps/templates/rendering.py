"""Render a TemplateVersion for a subscriber's locale in the Jinja sandbox.

Email: the body (Markdown with variables, or raw HTML) is rendered, converted to HTML, wrapped in
the version's layout (header, logo, brand colour, footer with preference / unsubscribe links),
its CSS inlined with css-inline, and a plain-text part is generated. Every other channel renders
plain text. In-app versions also render their primary / secondary action buttons.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import lru_cache, wraps
from typing import Any

import css_inline
import jinja2
import markdown
from django.conf import settings
from inscriptis import get_text
from inscriptis.css_profiles import CSS_PROFILES
from inscriptis.model.config import ParserConfig
from markdown.htmlparser import HTMLExtractor
from markupsafe import Markup

from apps.core.sandbox import (
    MAX_OUTPUT_CHARS,
    SandboxError,
    check_deadline,
    render_string,
    template_variables,
    time_limit,
)
from apps.templates.models import EmailLayout, TemplateVersion

TRANSLATED_FIELDS = ("subject", "title", "body", "preheader", "primary_action_label", "secondary_action_label")
URL_FIELDS = ("action_url", "primary_action_url", "secondary_action_url")
LAYOUT_TRANSLATED_FIELDS = ("header", "footer")

# What a person edits, per channel (the editor shows these, validation renders these).
CHANNEL_FIELDS: dict[str, tuple[str, ...]] = {
    "email": ("subject", "preheader", "body"),
    "sms": ("body",),
    "push": ("title", "body"),
    "in_app": (
        "title",
        "body",
        "action_url",
        "primary_action_label",
        "primary_action_url",
        "secondary_action_label",
        "secondary_action_url",
    ),
    "chat": ("body",),
    "webhook": ("body",),
}

DEFAULT_BRAND_COLOR = "#4f46e5"
HEX_COLOR = re.compile(r"^#[0-9a-fA-F]{6}$")
MARKDOWN_EXTENSIONS = ["extra", "sane_lists", "nl2br"]
MAX_EMAIL_HTML_CHARS = 4 * MAX_OUTPUT_CHARS  # after Markdown
MAX_EMAIL_HTML_DEPTH = 200  # elements that must be closed; css-inline crashes some 10,000 deep
MAX_INLINING_WORK = 2_000_000  # CSS selectors × HTML elements

FOOTER_LABELS = {
    "en": ("Manage email preferences", "Unsubscribe"),
    "fr": ("Gérer mes préférences", "Se désabonner"),
    "de": ("E-Mail-Einstellungen verwalten", "Abmelden"),
}


def supported_languages() -> list[str]:
    return [code for code, _ in settings.LANGUAGES]


def default_language() -> str:
    return settings.MODELTRANSLATION_DEFAULT_LANGUAGE


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
    body: str = ""  # email: the final HTML (layout, inlined CSS); other channels: plain text
    action_url: str = ""
    # field -> language actually used (differs from ``locale`` when a translation fell back)
    fallbacks: dict[str, str] = field(default_factory=dict)
    text: str = ""  # email: the plain-text alternative
    preheader: str = ""
    actions: list[dict[str, str]] = field(default_factory=list)  # in-app buttons: label, url, kind
    layout: str = ""  # key of the email layout used


def build_render_context(
    *,
    payload: dict[str, Any] | None,
    subscriber: dict[str, Any] | None,
    actor: Any,
    step: dict[str, Any] | None = None,
    steps: dict[str, Any] | None = None,
    digest: dict[str, Any] | None = None,
    preferences_url: str | None = None,
    unsubscribe_url: str | None = None,
) -> dict[str, Any]:
    """The one context shape every template sees (engine, preview, admin).

    ``subscriber`` is plain data (``Subscriber.as_context()`` or a dict). ``actor`` may be a
    dict, a subscriber id string (becomes ``{"subscriber_id": ...}``) or None (``{}``).
    ``step`` describes the step being rendered (``{"id": ...}``, plus e.g. digest results);
    ``steps`` holds earlier steps' results by step id. ``digest`` (after a digest step) is
    ``{"count", "key", "events": [{"payload", "actor", "transaction_id", "created_at"}]}``.
    ``preferences_url`` / ``unsubscribe_url`` (email) are shown by the layout footer when given.
    """
    if actor is None:
        actor_context: Any = {}
    elif isinstance(actor, str | int):
        actor_context = {"subscriber_id": str(actor)}
    else:
        actor_context = actor
    context = {
        "payload": payload if payload is not None else {},
        "subscriber": subscriber if subscriber is not None else {},
        "actor": actor_context,
        "step": step if step is not None else {},
        "steps": steps if steps is not None else {},
    }
    if digest is not None:
        context["digest"] = digest
    if preferences_url:
        context["preferences_url"] = preferences_url
    if unsubscribe_url:
        context["unsubscribe_url"] = unsubscribe_url
    return context


def translated_source(version: Any, field_name: str, language: str) -> tuple[str, str]:
    """The source text of a translated field in ``language``, falling back to the default."""
    value = getattr(version, f"{field_name}_{language}", None) or ""
    if value:
        return value, language
    default = settings.MODELTRANSLATION_DEFAULT_LANGUAGE
    return getattr(version, f"{field_name}_{default}", None) or "", default


class FieldErrors(SandboxError):
    """Rendering failed in one or more fields: ``errors`` maps ``"fr.body"`` / ``"action_url"`` /
    ``"layout.footer"`` to a readable message."""

    def __init__(self, errors: dict[str, str]) -> None:
        self.errors = errors
        where, message = next(iter(errors.items()))
        super().__init__(f"{where}: {message}")


# Names of the render context that are the same for every recipient of one event's step.
RECIPIENT_INDEPENDENT_NAMES = frozenset({"payload", "actor", "step"})


@lru_cache(maxsize=4096)
def reads_only_event(source: str) -> bool:
    """Whether the template reads nothing but the event (payload, actor) and the step: then its
    output is the same for every recipient, and a fan-out renders it once."""
    try:
        return template_variables(source) <= RECIPIENT_INDEPENDENT_NAMES
    except SandboxError:
        return False


def render_version(
    *,
    version: TemplateVersion,
    locale: str | None,
    context: dict[str, Any],
    strict: bool = False,
    layout: EmailLayout | bool | None = True,
    memo: dict[tuple[str, str], str] | None = None,
) -> RenderedContent:
    """Render every field. ``context`` must be plain data (dicts, lists, scalars).

    Email bodies are autoescaped, converted from Markdown when ``body_format`` says so, wrapped in
    the version's layout (``layout=False`` skips it; an EmailLayout overrides it) and CSS-inlined.
    Raises ``apps.core.sandbox.SandboxError`` (a :class:`FieldErrors`, naming every failing field)
    with a readable message on failure. The whole render shares one sandbox time limit.
    """
    language = resolve_language(locale)
    channel = version.template.channel
    rendered: dict[str, str] = {}
    fallbacks: dict[str, str] = {}
    errors: dict[str, str] = {}

    def render(name: str, source: str, autoescape: bool) -> str:
        if not source:
            return ""
        if memo is None or not reads_only_event(source):
            return render_string(source, context, autoescape=autoescape, strict=strict)
        key = (name, source)
        if key not in memo:
            memo[key] = render_string(source, context, autoescape=autoescape, strict=strict)
        return memo[key]

    with time_limit():
        for name in TRANSLATED_FIELDS:
            source, used = translated_source(version, name, language)
            if used != language and source:
                fallbacks[name] = used
            autoescape = channel == "email" and name == "body"
            try:
                rendered[name] = render(name, source, autoescape)
            except SandboxError as exc:
                errors[f"{used}.{name}"] = str(exc)
        urls: dict[str, str] = {}
        for name in URL_FIELDS:
            source = getattr(version, name, "") or ""
            try:
                urls[name] = render(name, source, False)
            except SandboxError as exc:
                errors[name] = str(exc)
        if errors:
            raise FieldErrors(errors)

        text = ""
        layout_key = ""
        body = rendered["body"]
        if channel == "email":
            chosen = version.layout if layout is True else (layout or None)
            layout_key = chosen.key if chosen is not None else ""
            body, text = render_email(
                body=body,
                body_format=getattr(version, "body_format", TemplateVersion.BodyFormat.HTML),
                subject=rendered["subject"],
                preheader=rendered["preheader"],
                layout=chosen,
                language=language,
                context=context,
                strict=strict,
                memo=memo,
            )

    actions = []
    if channel == "in_app":
        for kind in ("primary", "secondary"):
            label = rendered[f"{kind}_action_label"].strip()
            if label:
                actions.append({"label": label, "url": urls[f"{kind}_action_url"].strip(), "kind": kind})
    return RenderedContent(
        locale=language,
        subject=rendered["subject"],
        title=rendered["title"],
        body=body,
        action_url=urls["action_url"],
        fallbacks=fallbacks,
        text=text,
        preheader=rendered["preheader"],
        actions=actions,
        layout=layout_key,
    )


# --- email -----------------------------------------------------------------------------------------

_SHELL = """<!DOCTYPE html>
<html lang="{{ language }}">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="x-apple-disable-message-reformatting">
<title>{{ subject }}</title>
<style>{{ css }}</style>
</head>
<body class="clarion-body">
{% if preheader %}<div class="clarion-preheader">{{ preheader }}</div>{% endif %}
<table role="presentation" class="clarion-wrapper" width="100%" cellpadding="0" cellspacing="0">
<tr><td align="center">
<table role="presentation" class="clarion-container" width="100%" cellpadding="0" cellspacing="0">
<tr><td class="clarion-header">
{% if logo_url %}<img class="clarion-logo" src="{{ logo_url }}" alt="{{ name }}" height="36">{% endif %}
{{ header }}
</td></tr>
<tr><td class="clarion-content">
{{ content }}
</td></tr>
<tr><td class="clarion-footer">
{{ footer }}
{% if preferences_url or unsubscribe_url %}<p class="clarion-unsubscribe">
{% if preferences_url %}<a href="{{ preferences_url }}">{{ labels[0] }}</a>{% endif %}
{% if preferences_url and unsubscribe_url %} · {% endif %}
{% if unsubscribe_url %}<a href="{{ unsubscribe_url }}">{{ labels[1] }}</a>{% endif %}
</p>{% endif %}
</td></tr>
</table>
</td></tr>
</table>
</body>
</html>
"""

_BASE_CSS = """
body { margin: 0; padding: 0; background-color: #f3f4f6; }
.clarion-body { font-family: -apple-system, 'Segoe UI', Helvetica, Arial, sans-serif; color: #1f2937; }
.clarion-preheader { display: none; max-height: 0; overflow: hidden; mso-hide: all; font-size: 1px; color: #f3f4f6; }
.clarion-wrapper { background-color: #f3f4f6; padding: 24px 0; }
.clarion-container { background-color: #ffffff; border-radius: 8px; border-top: 4px solid BRAND; max-width: 600px;
  width: 100%; }
.clarion-header { padding: 24px 32px 0 32px; font-size: 14px; color: #374151; }
.clarion-logo { display: block; border: 0; margin-bottom: 8px; }
.clarion-content { padding: 16px 32px 24px 32px; font-size: 16px; line-height: 1.55; }
.clarion-content h1, .clarion-content h2 { color: #111827; line-height: 1.25; }
.clarion-content a { color: BRAND; }
.clarion-content blockquote { border-left: 3px solid #e5e7eb; margin: 0 0 12px 0; padding: 4px 12px; color: #4b5563; }
.clarion-content a.button, .clarion-content .button a { display: inline-block; background-color: BRAND; color: #ffffff;
  padding: 10px 18px; border-radius: 6px; text-decoration: none; font-weight: 600; }
.clarion-footer { padding: 16px 32px 24px 32px; font-size: 12px; line-height: 1.5; color: #6b7280;
  border-top: 1px solid #e5e7eb; }
.clarion-footer a { color: #6b7280; text-decoration: underline; }
"""

_INLINER = css_inline.CSSInliner(load_remote_stylesheets=False, keep_at_rules=True, keep_link_tags=False)
_TEXT_CONFIG = ParserConfig(css=CSS_PROFILES["strict"], display_links=True)


@lru_cache(maxsize=1)
def _shell() -> jinja2.Template:
    # Our own trusted markup (not user-written): a plain autoescaping Jinja environment.
    return jinja2.Environment(autoescape=True, trim_blocks=True, lstrip_blocks=True).from_string(_SHELL)


def brand_color(value: str | None) -> str:
    return value if value and HEX_COLOR.match(value) else DEFAULT_BRAND_COLOR


def _checks_deadline(func: Callable[..., Any]) -> Callable[..., Any]:
    @wraps(func)
    def checked(*args: Any, **kwargs: Any) -> Any:
        check_deadline()
        return func(*args, **kwargs)

    return checked


# Python-Markdown is superlinear on some inputs (2,000 "[" take seconds, "<a" repeated takes
# minutes in its HTML block parser), and payload text reaches it. Every processor call checks the
# render's deadline, so such a body fails its render instead of holding a worker; each single call
# is linear in the body's size.
HTMLExtractor.parse_starttag = _checks_deadline(HTMLExtractor.parse_starttag)


def _deadline_checked_converter() -> markdown.Markdown:
    converter = markdown.Markdown(extensions=MARKDOWN_EXTENSIONS, output_format="html")
    for registry in (
        converter.preprocessors,
        converter.parser.blockprocessors,
        converter.treeprocessors,
        converter.inlinePatterns,
        converter.postprocessors,
    ):
        for processor in registry:
            for name in ("run", "test", "handleMatch"):
                method = getattr(processor, name, None)
                if method is not None:
                    setattr(processor, name, _checks_deadline(method))
    return converter


# A converter is costly to build (its extensions, and a deadline check around every processor:
# about a third of an email's render) and not thread-safe, so each thread keeps one and resets it
# before each use, as Python-Markdown documents.
_converters = threading.local()


def markdown_to_html(source: str) -> str:
    converter: markdown.Markdown | None = getattr(_converters, "converter", None)
    if converter is None:
        converter = _converters.converter = _deadline_checked_converter()
    converter.reset()
    return converter.convert(source)


_TAG_START = re.compile(r"<(/?)([a-zA-Z][a-zA-Z0-9:-]*)")
_VOID_TAGS = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "param", "source", "track"}
_VOID_TAGS |= {"wbr"}
# End tags a parser may imply: not counted as nesting (their parents are).
_OPTIONAL_END_TAGS = {"html", "head", "body", "p", "li", "dt", "dd", "tr", "td", "th", "thead", "tbody", "tfoot"}
_OPTIONAL_END_TAGS |= {"option", "optgroup", "rt", "rp", "colgroup"}


def _between(text: str, opening: str, closing: str) -> Iterator[tuple[int, int]]:
    """Spans between each ``opening`` and the next ``closing``, found in linear time (a regex such
    as ``<style>(.*?)</style>`` rescans to the end for every unclosed opening)."""
    position = 0
    while (start := text.find(opening, position)) != -1:
        end = text.find(closing, start + len(opening))
        if end == -1:
            yield start + len(opening), len(text)
            return
        yield start + len(opening), end
        position = end + len(closing)


def _css_selectors(html: str) -> int:
    lower = html.lower()
    selectors = 0
    for start, end in _between(lower, "<style", "</style"):
        block = html[start:end]
        kept, position = [], 0
        for comment_start, comment_end in _between(block, "/*", "*/"):
            kept.append(block[position : comment_start - 2])
            position = comment_end + 2
        kept.append(block[position:])
        for chunk in "".join(kept).split("{")[:-1]:
            prelude = chunk.rsplit("}", 1)[-1].strip()
            if prelude and not prelude.startswith("@"):
                selectors += prelude.count(",") + 1
    return selectors


def _check_inlining_work(html: str) -> None:
    """css-inline holds the GIL while it runs (seconds for many selectors times many elements) and
    crashes the process on HTML nested some ten thousand elements deep: refuse both beforehand."""
    depth = deepest = elements = 0
    for closing, name in _TAG_START.findall(html):
        name = name.lower()
        nests = name not in _VOID_TAGS and name not in _OPTIONAL_END_TAGS
        if closing:
            depth = max(depth - 1, 0) if nests else depth
            continue
        elements += 1
        if nests:
            depth += 1
            deepest = max(deepest, depth)
    if deepest > MAX_EMAIL_HTML_DEPTH:
        raise FieldErrors({"body": f"the email's HTML nests more than {MAX_EMAIL_HTML_DEPTH} elements deep"})
    selectors = _css_selectors(html)
    if selectors * elements > MAX_INLINING_WORK:
        raise FieldErrors(
            {
                "layout.css": f"too much CSS to inline: {selectors} selectors for {elements} HTML elements "
                f"(selectors × elements at most {MAX_INLINING_WORK:,})"
            }
        )


def html_to_text(html: str) -> str:
    if not html.strip():
        return ""
    text = get_text(html, _TEXT_CONFIG)
    return re.sub(r"\n{3,}", "\n\n", "\n".join(line.rstrip() for line in text.splitlines())).strip()


def _memoized(memo: dict[tuple[str, str], str] | None, kind: str, source: str, convert: Callable[[str], str]) -> str:
    """``convert(source)``, kept in ``memo`` (when given) under ``(kind, source)``: a pure function of
    its input, so a recipient whose input came out the same reuses another's result."""
    if memo is None:
        return convert(source)
    key = (kind, source)
    if key not in memo:
        memo[key] = convert(source)
    return memo[key]


@lru_cache(maxsize=1024)
def reads_nothing(source: str) -> bool:
    """Whether a template reads no variable (and calls no global): its output depends on its source alone."""
    try:
        return not template_variables(source)
    except SandboxError:
        return False


@lru_cache(maxsize=128)
def _constant_part(source: str, strict: bool) -> str:
    return render_string(source, {}, autoescape=True, strict=strict)


def _layout_part(source: str, context: dict[str, Any], strict: bool) -> str:
    """A layout's header or footer. Most read nothing (the default layout's are plain text with the
    product's name): rendered once per process, not once per email. A failed render is not kept."""
    if source and reads_nothing(source):
        return _constant_part(source, strict)
    return render_string(source, context, autoescape=True, strict=strict)


@lru_cache(maxsize=256)
def _layout_text(html: str) -> str:
    """The plain text of a layout's header or footer: the same few inputs over and over (_layout_part)."""
    return html_to_text(html)


def render_email(
    *,
    body: str,
    body_format: str,
    subject: str,
    preheader: str,
    layout: EmailLayout | None,
    language: str,
    context: dict[str, Any],
    strict: bool = False,
    memo: dict[tuple[str, str], str] | None = None,
) -> tuple[str, str]:
    """``body`` is the rendered (autoescaped) body source → (final HTML, plain text).

    ``memo`` (one event's step, see ``render_version``): the Markdown and the plain text of a body
    that came out the same for another recipient are taken from there instead of converted again."""
    try:
        content = (
            _memoized(memo, "markdown", body, markdown_to_html)
            if body_format == TemplateVersion.BodyFormat.MARKDOWN
            else body
        )
    except SandboxError as exc:
        raise FieldErrors({"body": f"the Markdown could not be converted: {exc}"}) from exc
    if len(content) > MAX_EMAIL_HTML_CHARS:
        raise FieldErrors({"body": f"the email's HTML is larger than {MAX_EMAIL_HTML_CHARS} characters"})
    text = _memoized(memo, "text", content, html_to_text)
    if layout is None:
        if preheader:
            hidden = '<div style="display:none;max-height:0;overflow:hidden;mso-hide:all">{}</div>'
            content = str(Markup(hidden).format(preheader)) + content
        return content, text

    parts: dict[str, str] = {}
    errors: dict[str, str] = {}
    for name in LAYOUT_TRANSLATED_FIELDS:
        source, _used = translated_source(layout, name, language)
        try:
            parts[name] = _layout_part(source, context, strict)
        except SandboxError as exc:
            errors[f"layout.{name}"] = str(exc)
    if errors:
        raise FieldErrors(errors)
    color = brand_color(layout.brand_color)
    preferences_url = context.get("preferences_url") if layout.show_unsubscribe else None
    unsubscribe_url = context.get("unsubscribe_url") if layout.show_unsubscribe else None
    html = _shell().render(
        language=language,
        subject=subject,
        preheader=preheader,
        css=Markup(_BASE_CSS.replace("BRAND", color) + "\n" + (layout.css or "").replace("</", "<\\/")),
        logo_url=layout.logo_url,
        name=layout.name,
        header=Markup(parts["header"]),
        content=Markup(content),
        footer=Markup(parts["footer"]),
        preferences_url=preferences_url,
        unsubscribe_url=unsubscribe_url,
        labels=FOOTER_LABELS.get(language, FOOTER_LABELS["en"]),
    )
    check_deadline()
    _check_inlining_work(html)
    try:
        html = _INLINER.inline(html)
    except (css_inline.InlineError, ValueError) as exc:
        raise FieldErrors({"layout.css": f"the CSS could not be inlined: {exc}"}) from exc
    footer_text = _layout_text(parts["footer"])
    links = []
    if preferences_url:
        links.append(f"{FOOTER_LABELS.get(language, FOOTER_LABELS['en'])[0]}: {preferences_url}")
    if unsubscribe_url:
        links.append(f"{FOOTER_LABELS.get(language, FOOTER_LABELS['en'])[1]}: {unsubscribe_url}")
    text_parts = [_layout_text(parts["header"]), text, "-- ", footer_text, "\n".join(links)]
    if not (footer_text or links):
        text_parts = text_parts[:2]
    return html, "\n\n".join(part for part in text_parts if part).strip()


# --- SMS -------------------------------------------------------------------------------------------

_GSM7_BASIC = set(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿"
    "abcdefghijklmnopqrstuvwxyzäöñüà"
)
_GSM7_EXTENDED = set("^{}\\[~]|€\f")


def sms_segments(text: str) -> dict[str, Any]:
    """Characters, encoding (GSM-7 or UCS-2) and the number of SMS segments ``text`` takes."""
    if all(char in _GSM7_BASIC or char in _GSM7_EXTENDED for char in text):
        units = sum(2 if char in _GSM7_EXTENDED else 1 for char in text)
        single, multi, encoding = 160, 153, "GSM-7"
    else:
        units = sum(2 if ord(char) > 0xFFFF else 1 for char in text)  # UTF-16 code units
        single, multi, encoding = 70, 67, "UCS-2"
    segments = 0 if units == 0 else 1 if units <= single else -(-units // multi)
    return {"characters": len(text), "units": units, "segments": segments, "encoding": encoding}
