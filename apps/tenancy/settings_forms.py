"""Form parts of the environment's settings page in the admin: the allowed origins as a list of
inputs (one per origin, each with its own error), and the branding JSON as fields (product name, a
colour picker, a logo URL with a preview). See docs/console.md, "Settings"."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from django import forms
from django.utils.datastructures import MultiValueDict
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString

from apps.tenancy.origins import origin_entry_valid

ORIGIN_RULE = "scheme://host[:port] with http or https, no path; or a subdomain wildcard such as https://*.example.com"

# The keys of ``Environment.branding`` the pages read (apps.preferences.pages.branding, the default
# email layout): each canonical key, then the older alias read when it is missing.
BRAND_KEYS = {"product_name": "name", "primary_color": "color", "logo_url": "logo"}
DEFAULT_BRAND_COLOR = "#4f46e5"  # what the preference center shows without a colour
HEX_COLOR = re.compile(r"^#(?:[0-9a-fA-F]{3}|[0-9a-fA-F]{6})$")
LOGO_MAX_LENGTH = 2000
# A host as browsers put it in an Origin header: ASCII labels (an IDN in its xn-- form) or an IP
# literal. ``origin_entry_valid`` parses with urlsplit, which also takes "*example.com" or "ex ample";
# no browser sends those, so the inbox matcher could never match such an entry.
_ORIGIN_HOST = re.compile(r"^(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)*$")
_IP_LITERAL = re.compile(r"^\[[0-9a-f:.]+\]$")


def origin_entry_error(entry: Any) -> str | None:
    """Why an ``allowed_origins`` entry could never match a browser's origin, or ``None``."""
    if not isinstance(entry, str):
        return "Not text."
    if not origin_entry_valid(entry):
        return f"Not an origin: use {ORIGIN_RULE}."
    text = entry.strip().rstrip("/").lower()
    host = urlsplit(text.replace("://*.", "://", 1)).netloc.rsplit("@", 1)[-1]
    host = host[: host.index("]") + 1] if host.startswith("[") and "]" in host else host.split(":", 1)[0]
    if not (_ORIGIN_HOST.match(host) or _IP_LITERAL.match(host)):
        return "Not a host a browser sends: letters, digits, hyphens and dots (an IDN as xn--…), or an IP address."
    return None


class OriginListWidget(forms.Widget):
    """One text input per origin and an empty one to add another. Without JavaScript this is the
    whole editor (save to get a new empty row); ``settings-forms.js`` adds Add and Remove buttons."""

    def __init__(self, attrs: dict[str, Any] | None = None) -> None:
        super().__init__(attrs)
        self.row_errors: dict[str, str] = {}  # set by the field's validation, per submitted value

    def value_from_datadict(self, data: Mapping[str, Any], files: Any, name: str) -> list[Any]:
        values: list[Any] = data.getlist(name) if isinstance(data, MultiValueDict) else [data.get(name, [])]
        if len(values) == 1 and not isinstance(values[0], str):
            values = list(values[0]) if isinstance(values[0], list | tuple) else [values[0]]
        if len(values) == 1 and isinstance(values[0], str) and values[0].strip().startswith("["):
            try:  # a pasted JSON list (the field used to be a JSON textarea)
                parsed = json.loads(values[0])
            except ValueError:
                return values
            return parsed if isinstance(parsed, list) else values
        return values

    def value_omitted_from_data(self, data: Mapping[str, Any], files: Any, name: str) -> bool:
        return name not in data

    def render(self, name: str, value: Any, attrs: dict[str, Any] | None = None, renderer: Any = None) -> SafeString:
        rows = list(value) if isinstance(value, list | tuple) else [value] if value else []
        rows = [row for row in rows if row not in ("", None)] + [""]
        base_id = (attrs or {}).get("id") or f"id_{name}"
        items = []
        for index, row in enumerate(rows):
            text = row if isinstance(row, str) else json.dumps(row)
            error = self.row_errors.get(text.strip(), "")
            input_id = base_id if index == 0 else f"{base_id}_{index}"
            items.append(
                format_html(
                    '<li class="clarion-origin-row{}"><input type="text" name="{}" id="{}" value="{}" size="50" '
                    'maxlength="500" placeholder="https://app.example.com" aria-label="Allowed origin {}"{}>{}</li>',
                    " clarion-origin-invalid" if error else "",
                    name,
                    input_id,
                    text,
                    index + 1,
                    format_html(' aria-invalid="true" aria-describedby="{}_error"', input_id) if error else "",
                    format_html(' <span class="clarion-origin-error" id="{}_error">{}</span>', input_id, error)
                    if error
                    else "",
                )
            )
        return format_html(
            '<div class="clarion-origin-list" data-name="{}"><ul class="clarion-origin-rows">{}</ul></div>',
            name,
            format_html_join("", "{}", ((item,) for item in items)),
        )


class OriginListField(forms.Field):
    """A list of allowed origins, each checked with the inbox matcher's own rules
    (``origin_entry_valid``): an entry the matcher would never match is refused with its row."""

    widget = OriginListWidget

    def to_python(self, value: Any) -> list[Any]:
        if value in (None, ""):
            return []
        values = value if isinstance(value, list) else [value]
        return [v.strip() if isinstance(v, str) else v for v in values if not (isinstance(v, str) and not v.strip())]

    def validate(self, value: list[Any]) -> None:
        super().validate(value)
        errors: dict[str, str] = {}
        for entry in value:
            error = origin_entry_error(entry)
            if error:
                errors[entry if isinstance(entry, str) else json.dumps(entry)] = error
        if isinstance(self.widget, OriginListWidget):  # each row's error beside it
            self.widget.row_errors = errors
        if errors:
            raise forms.ValidationError(
                [
                    forms.ValidationError("“%(entry)s”: %(why)s", params={"entry": key, "why": why})
                    for key, why in errors.items()
                ]
            )

    def clean(self, value: Any) -> list[str]:
        entries = super().clean(value)
        normalized: list[str] = []
        for entry in entries:
            entry = entry.rstrip("/").lower()
            if entry not in normalized:
                normalized.append(entry)
        return normalized

    def has_changed(self, initial: Any, data: Any) -> bool:
        try:
            return self.clean(data) != list(initial or [])
        except forms.ValidationError:
            return True


class ColorInput(forms.TextInput):
    input_type = "color"


class LogoUrlInput(forms.URLInput):
    """The URL and, under it, a preview of the image (no referrer sent to the logo's host)."""

    def render(self, name: str, value: Any, attrs: dict[str, Any] | None = None, renderer: Any = None) -> SafeString:
        field = super().render(name, value, attrs, renderer)
        src = value if isinstance(value, str) and value.startswith("https://") else ""
        return format_html(
            '{}<div class="clarion-logo-preview-box"><img class="clarion-logo-preview" src="{}" alt="Logo preview" '
            'referrerpolicy="no-referrer" data-for="{}"{}></div>',
            field,
            src,
            (attrs or {}).get("id", ""),
            "" if src else SafeString(" hidden"),
        )


def branding_initial(branding: Any) -> dict[str, Any]:
    """The form's starting values from the stored JSON (canonical key, else its alias)."""
    data = branding if isinstance(branding, dict) else {}
    values = {key: data.get(key) or data.get(alias) or "" for key, alias in BRAND_KEYS.items()}
    color = str(values["primary_color"])
    if HEX_COLOR.match(color) and len(color) == 4:  # the colour picker needs #rrggbb
        color = "#" + "".join(c * 2 for c in color[1:])
    return {
        "brand_product_name": str(values["product_name"]),
        "brand_primary_color": color.lower() if HEX_COLOR.match(color) else DEFAULT_BRAND_COLOR,
        "brand_color_default": not HEX_COLOR.match(color),
        "brand_logo_url": str(values["logo_url"]),
    }


def branding_other_keys(branding: Any) -> dict[str, Any]:
    """Keys the form does not edit: kept as they are when the form saves."""
    data = branding if isinstance(branding, dict) else {}
    managed = set(BRAND_KEYS) | set(BRAND_KEYS.values())
    return {key: value for key, value in data.items() if key not in managed}


def branding_merge(stored: Any, *, product_name: str, primary_color: str | None, logo_url: str) -> dict[str, Any]:
    """The JSON to store: the other keys untouched, the edited ones under their canonical names
    (an alias is dropped, since the form showed its value and saved it canonically)."""
    merged = branding_other_keys(stored)
    if product_name:
        merged["product_name"] = product_name
    if primary_color:
        merged["primary_color"] = primary_color
    if logo_url:
        merged["logo_url"] = logo_url
    return merged
