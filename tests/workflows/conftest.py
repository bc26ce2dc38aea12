from __future__ import annotations

from typing import Any

import pytest

from apps.templates.models import Template
from apps.tenancy.models import Environment
from apps.workflows.models import Workflow
from apps.workflows.services import workflow_upsert
from tests.factories import TemplateFactory, TemplateVersionFactory


def published_template(environment: Environment, key: str, channel: str, **content: Any) -> Template:
    template = TemplateFactory(environment=environment, key=key, channel=channel)
    version = TemplateVersionFactory(template=template, number=1, **content)
    template.published_version = version
    template.save(update_fields=["published_version"])
    return template


def make_workflow(
    environment: Environment, key: str, steps: list[dict[str, Any]], category_key: str | None = None
) -> Workflow:
    kwargs: dict[str, Any] = {}
    if category_key:
        kwargs["category_key"] = category_key
    workflow, _ = workflow_upsert(environment=environment, key=key, name=key, steps=steps, publish=True, **kwargs)
    return workflow


@pytest.fixture
def comment_workflow(tenant: Any) -> Workflow:
    """in-app now, wait 10 minutes, email only if the in-app message is still unread."""
    env = tenant.environment
    published_template(
        env,
        "comment-in-app",
        "in_app",
        title_en="New comment on {{ payload.post_title }}",
        title_fr="Nouveau commentaire sur {{ payload.post_title }}",
        body_en="{{ payload.comment }}",
    )
    published_template(
        env,
        "comment-email",
        "email",
        subject_en="{{ subscriber.first_name }}, new comment on {{ payload.post_title }}",
        subject_de="{{ subscriber.first_name }}, neuer Kommentar zu {{ payload.post_title }}",
        body_en="<p>{{ payload.comment }}</p>",
    )
    return make_workflow(
        env,
        "comment-created",
        [
            {"id": "inbox", "type": "in_app", "template": "comment-in-app"},
            {"id": "wait", "type": "delay", "for": "10m"},
            {"id": "mail", "type": "email", "template": "comment-email", "if": "not steps.inbox.read"},
        ],
    )
