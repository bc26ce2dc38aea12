from __future__ import annotations

from typing import Any

import pytest

from apps.core import sandbox
from apps.templates.models import Template, TemplateVersion
from apps.templates.services import template_upsert, template_version_create
from apps.tenancy.models import Environment
from tests.templates.limits import CountingClock


def make_template(
    environment: Environment,
    key: str = "comment-in-app",
    *,
    channel: str = "in_app",
    content: dict[str, dict[str, str]] | None = None,
    publish: bool = True,
    action_url: str = "",
) -> tuple[Template, TemplateVersion]:
    """A template through the real services, with one version (published by default)."""
    template, _ = template_upsert(environment=environment, key=key, name=key.title(), channel=channel)
    version = template_version_create(
        template=template,
        content=content
        or {
            "en": {"subject": "New comment", "title": "Hi {{ subscriber.first_name }}", "body": "{{ payload.text }}"},
            "fr": {"subject": "Nouveau commentaire", "title": "Salut {{ subscriber.first_name }}"},
        },
        action_url=action_url,
        publish=publish,
    )
    template.refresh_from_db()
    return template, version


@pytest.fixture
def template_factory() -> Any:
    return make_template


@pytest.fixture
def counting_clock(monkeypatch: pytest.MonkeyPatch) -> CountingClock:
    """The sandbox's clock, moving 1 ms per deadline check (see ``tests/templates/limits.py``)."""
    clock = CountingClock()
    monkeypatch.setattr(sandbox, "_clock", clock)
    return clock
