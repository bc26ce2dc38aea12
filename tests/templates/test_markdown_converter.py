"""One Markdown converter per thread, reset before each use: nothing of one render reaches the next."""

from __future__ import annotations

import threading

import pytest

from apps.core import sandbox
from apps.core.sandbox import SandboxError, time_limit
from apps.templates import rendering
from apps.templates.rendering import markdown_to_html


def test_the_converter_is_built_once_per_thread() -> None:
    markdown_to_html("first")
    converter = rendering._converters.converter
    markdown_to_html("second")
    assert rendering._converters.converter is converter

    seen: list[object] = []
    thread = threading.Thread(target=lambda: (markdown_to_html("x"), seen.append(rendering._converters.converter)))
    thread.start()
    thread.join()
    assert seen and seen[0] is not converter


def test_definitions_of_one_render_do_not_leak_into_the_next() -> None:
    with_definitions = (
        "See [the doc][d] and HTML[^1].\n\n[d]: https://example.com/secret\n[^1]: a note\n\n*[HTML]: Hyper"
    )
    assert "https://example.com/secret" in markdown_to_html(with_definitions)

    later = markdown_to_html("See [the doc][d] and HTML[^1].")
    assert "example.com/secret" not in later
    assert "a note" not in later
    assert "<abbr" not in later


def test_a_render_stopped_by_its_deadline_leaves_the_converter_usable(monkeypatch: pytest.MonkeyPatch) -> None:
    ticks = iter(range(1_000_000))
    monkeypatch.setattr(sandbox, "_clock", lambda: next(ticks) * 10.0)  # every check is past the deadline
    with pytest.raises(SandboxError), time_limit(1.0):
        markdown_to_html("[" * 50 + "half a *document*")
    monkeypatch.undo()

    assert markdown_to_html("**bold** [link](https://example.com)") == (
        '<p><strong>bold</strong> <a href="https://example.com">link</a></p>'
    )
