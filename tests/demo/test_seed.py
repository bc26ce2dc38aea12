"""``manage.py seed_demo`` (run by every `make run`) creates what is missing of the demo and never
overwrites what exists: published template edits, workflow changes and a subscriber's language
survive a restart (issue 12)."""

from __future__ import annotations

import io
import json
import stat
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command
from rest_framework.test import APIClient

from apps.preferences.models import Category
from apps.subscribers.models import Subscriber
from apps.templates.models import EmailLayout, Template, TemplateVersion
from apps.templates.rendering import render_version
from apps.templates.selectors import sample_render_context
from apps.templates.services import layout_upsert, template_version_create
from apps.tenancy.models import Environment
from apps.tenancy.services import environment_create
from apps.workflows.models import Workflow, WorkflowVersion
from apps.workflows.services import workflow_upsert


@pytest.fixture
def var_dir(settings: Any, tmp_path: Path) -> Path:
    settings.VAR_DIR = tmp_path
    return tmp_path


def seed() -> str:
    out = io.StringIO()
    call_command("seed_demo", stdout=out)
    return out.getvalue()


def demo_json(var_dir: Path) -> dict[str, str]:
    return json.loads((var_dir / "demo.json").read_text())


def test_first_run_creates_the_demo_and_a_private_demo_json(var_dir: Path, db: Any) -> None:
    output = seed()

    demo = demo_json(var_dir)
    assert stat.S_IMODE((var_dir / "demo.json").stat().st_mode) == 0o600
    assert set(demo) == {
        "environment_slug",
        "secret_key",
        "publishable_key",
        "inbox_hmac_secret",
        "subscriber_id",
        "admin_username",
        "admin_password",
    }
    environment = Environment.objects.get(slug=demo["environment_slug"])
    assert demo["inbox_hmac_secret"] == environment.inbox_hmac_secret
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {demo['secret_key']}")
    assert client.get("/api/v1/workflows/comment-created").status_code == 200
    assert get_user_model().objects.get(username="admin").check_password(demo["admin_password"])
    assert "created environment" in output and "workflow comment-created" in output


def test_seeded_templates_have_sample_payloads_so_the_first_preview_is_not_blank(var_dir: Path, db: Any) -> None:
    seed()
    for template in Template.objects.all():
        assert template.sample_payload == {"post_title": "Hello", "comment": "First!", "author": "Grace"}
        # What the editor's first preview renders: the published version with the sample context.
        context = sample_render_context(template=template)
        rendered = render_version(version=template.published_version, locale="en", context=context)
        assert "Hello" in rendered.title + rendered.subject
        assert "Grace" in rendered.title + rendered.body


def test_the_demo_layout_is_the_demo_environments_alone(var_dir: Path, db: Any) -> None:
    seed()
    demo = Environment.objects.get(slug=demo_json(var_dir)["environment_slug"])
    email = Template.objects.get(environment=demo, key="comment-email")
    assert email.published_version.layout.key == "demo"
    assert EmailLayout.objects.get(environment=demo, is_default=True).key == "demo"

    other = environment_create(name="production", project_name="Acme").environment
    assert list(EmailLayout.objects.filter(environment=other).values_list("key", flat=True)) == ["default"]


def test_a_restart_keeps_every_edit(var_dir: Path, db: Any) -> None:
    seed()
    demo = demo_json(var_dir)
    environment = Environment.objects.get(slug=demo["environment_slug"])
    # A product manager publishes new copy, a developer changes the workflow, the demo user
    # switches to French, someone renames the category and edits the demo layout.
    in_app = Template.objects.get(environment=environment, key="comment-in-app")
    edited = template_version_create(
        template=in_app, content={"en": {"title": "Edited by the PM", "body": "x"}}, publish=True
    )
    steps = [{"id": "inbox", "type": "in_app", "template": "comment-in-app"}]
    workflow_upsert(environment=environment, key="comment-created", steps=steps, publish=True)
    Subscriber.objects.filter(environment=environment, subscriber_id="demo-user").update(locale="fr")
    Category.objects.filter(environment=environment, key="comments").update(name="Remarks")
    layout_upsert(environment=environment, key="demo", footer={"en": "Edited footer"})
    counts = (TemplateVersion.objects.count(), WorkflowVersion.objects.count(), EmailLayout.objects.count())

    output = seed()

    assert "nothing changed" in output
    assert demo_json(var_dir) == demo  # the same keys and login
    in_app.refresh_from_db()
    assert in_app.published_version_id == edited.pk
    assert Workflow.objects.get(environment=environment).published_version.steps == steps
    assert Subscriber.objects.get(environment=environment, subscriber_id="demo-user").locale == "fr"
    assert Category.objects.get(environment=environment, key="comments").name == "Remarks"
    assert EmailLayout.objects.get(environment=environment, key="demo").footer_en == "Edited footer"
    assert (TemplateVersion.objects.count(), WorkflowVersion.objects.count(), EmailLayout.objects.count()) == counts


def test_what_was_deleted_comes_back_and_nothing_else_changes(var_dir: Path, db: Any) -> None:
    seed()
    environment = Environment.objects.get(slug=demo_json(var_dir)["environment_slug"])
    Workflow.objects.filter(environment=environment).delete()
    Template.objects.filter(environment=environment, key="comment-email").delete()
    in_app_versions = TemplateVersion.objects.filter(template__key="comment-in-app").count()

    output = seed()

    assert "template comment-email" in output and "workflow comment-created" in output
    assert "template comment-in-app" not in output
    assert TemplateVersion.objects.filter(template__key="comment-in-app").count() == in_app_versions
    assert Workflow.objects.get(environment=environment).published_version is not None


def test_an_admin_user_made_elsewhere_keeps_its_password(var_dir: Path, db: Any) -> None:
    get_user_model().objects.create_superuser(username="admin", email="a@example.com", password="theirs")

    seed()

    demo = demo_json(var_dir)
    assert demo["admin_username"] == "admin" and demo["admin_password"] == ""  # not a made-up one
    assert get_user_model().objects.get(username="admin").check_password("theirs")
