"""Seed the demo environment: create what is missing, never touch what exists.

`make run` seeds on every start, so a product manager's published template edits, a changed
workflow or a subscriber switched to French must survive a restart: each piece of the demo is
created once, when it does not exist, and left alone afterwards.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from django.contrib.auth import get_user_model
from django.db import transaction

from apps.core.errors import NotFound
from apps.demo import content
from apps.preferences.selectors import category_get
from apps.preferences.services import category_upsert
from apps.subscribers.selectors import subscriber_get
from apps.subscribers.services import subscriber_upsert
from apps.templates.models import EmailLayout
from apps.templates.selectors import layout_get, template_get
from apps.templates.services import layout_upsert, template_upsert, template_version_create
from apps.tenancy.models import Environment
from apps.tenancy.services import environment_create
from apps.workflows.selectors import workflow_get
from apps.workflows.services import workflow_upsert


@dataclass
class DemoSeed:
    environment: Environment
    # The raw API keys, only when the environment was created by this call (they are never stored).
    keys: dict[str, str] = field(default_factory=dict)
    created: list[str] = field(default_factory=list)


@transaction.atomic
def demo_seed(*, environment_slug: str | None) -> DemoSeed:
    """The demo environment ``environment_slug`` (created when there is none) with whatever of its
    content is missing. ``created`` names what this call created; an empty list means nothing changed."""
    environment = Environment.objects.filter(slug=environment_slug).first() if environment_slug else None
    if environment is None:
        made = environment_create(name=content.ENVIRONMENT_NAME, project_name=content.PROJECT_NAME)
        environment = made.environment
        seed = DemoSeed(
            environment=environment,
            keys={
                "environment_slug": environment.slug,
                "secret_key": made.secret_key.raw,
                "publishable_key": made.publishable_key.raw,
                "inbox_hmac_secret": environment.inbox_hmac_secret,
            },
            created=[f"environment {environment.slug}"],
        )
    else:
        seed = DemoSeed(environment=environment)
    _seed_content(seed)
    return seed


def _seed_content(seed: DemoSeed) -> None:
    environment = seed.environment
    try:
        subscriber_get(environment=environment, subscriber_id=content.SUBSCRIBER_ID)
    except NotFound:
        subscriber_upsert(environment=environment, subscriber_id=content.SUBSCRIBER_ID, **content.SUBSCRIBER)
        seed.created.append(f"subscriber {content.SUBSCRIBER_ID}")

    try:
        category_get(environment=environment, key=content.CATEGORY["key"])
    except NotFound:
        category_upsert(environment=environment, **content.CATEGORY)
        seed.created.append(f"category {content.CATEGORY['key']}")

    layout = _demo_layout(seed)

    for spec in content.TEMPLATES:
        try:
            template_get(environment=environment, key=spec["key"])
            continue
        except NotFound:
            pass
        template, _ = template_upsert(
            environment=environment,
            key=spec["key"],
            name=spec["name"],
            channel=spec["channel"],
            sample_payload=dict(content.PAYLOAD),
        )
        template_version_create(
            template=template,
            content=spec["content"],
            body_format=spec.get("body_format", ""),
            layout=layout if spec["channel"] == "email" else None,
            note="Demo content",
            publish=True,
        )
        seed.created.append(f"template {spec['key']}")

    try:
        workflow_get(environment=environment, key=content.WORKFLOW_KEY)
    except NotFound:
        workflow_upsert(environment=environment, **content.WORKFLOW, publish=True)
        seed.created.append(f"workflow {content.WORKFLOW_KEY}")


def _demo_layout(seed: DemoSeed) -> EmailLayout:
    """The demo's own email layout (only the demo environment has it). It becomes the environment's
    default only in a new demo environment: an existing one keeps the default someone chose."""
    try:
        return layout_get(environment=seed.environment, key=content.LAYOUT_KEY)
    except NotFound:
        pass
    new_environment = bool(seed.keys)
    layout, _ = layout_upsert(
        environment=seed.environment, key=content.LAYOUT_KEY, **content.LAYOUT, is_default=new_environment
    )
    seed.created.append(f"layout {content.LAYOUT_KEY}")
    return layout


def demo_admin_ensure(*, username: str, password: str) -> bool:
    """Create the superuser ``username`` with ``password`` unless that user exists. True if created."""
    user_model = get_user_model()
    if user_model.objects.filter(username=username).exists():
        return False
    user_model.objects.create_superuser(username=username, email="admin@example.com", password=password)
    return True
