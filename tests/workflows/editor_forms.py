"""Reading the workflow editor's HTML form as a browser submits it (no JavaScript)."""

from __future__ import annotations

from html.parser import HTMLParser
from typing import Any


class FormReader(HTMLParser):
    """The name/value pairs of the form ``form_id``, as a browser would submit them."""

    def __init__(self, form_id: str) -> None:
        super().__init__()
        self.form_id = form_id
        self.inside = False
        self.pairs: list[tuple[str, str]] = []
        self.select: str | None = None
        self.select_value: str | None = None
        self.first_option: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = {name: value or "" for name, value in attrs}
        if tag == "form":
            self.inside = attributes.get("id") == self.form_id
            return
        if not self.inside or "disabled" in attributes:
            return
        name = attributes.get("name")
        if tag == "input" and name:
            kind = attributes.get("type", "text")
            if kind == "checkbox":
                if "checked" in attributes:
                    self.pairs.append((name, attributes.get("value") or "on"))
            elif kind != "submit":
                self.pairs.append((name, attributes.get("value", "")))
        elif tag == "select" and name:
            self.select, self.select_value, self.first_option = name, None, None
        elif tag == "option" and self.select is not None:
            value = attributes.get("value", "")
            if self.first_option is None:
                self.first_option = value
            if "selected" in attributes:
                self.select_value = value

    def handle_endtag(self, tag: str) -> None:
        if tag == "form":
            self.inside = False
        elif tag == "select" and self.select is not None:
            value = self.select_value if self.select_value is not None else self.first_option
            self.pairs.append((self.select, value or ""))
            self.select = None


def form_pairs(html: str, form_id: str = "wf-form") -> dict[str, Any]:
    reader = FormReader(form_id)
    reader.feed(html)
    return dict(reader.pairs)


def card_html(html: str, path: str) -> str:
    """The markup of one step card (up to the next card, nested or not)."""
    start = html.index(f'data-path="{path}"')
    following = html.find('<li class="wf-card', start)
    return html[start : following if following != -1 else len(html)]
