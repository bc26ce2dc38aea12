"""The editor's sample digest carries every documented digest variable, so a category digest
template written as docs/workflows.md says publishes (issue 12)."""

from __future__ import annotations

import pytest

from apps.core.errors import Unprocessable
from apps.templates.selectors import sample_render_context, template_preview, template_variables
from apps.templates.services import template_upsert, template_version_create

DIGEST_BODY = "{% for ev in digest.events %}{{ ev.subject }} ({{ ev.workflow }}): {{ ev.body }} {% endfor %}"


def test_a_digest_template_over_held_messages_publishes_and_previews(tenant, settings):
    settings.PUBLIC_URL = "http://127.0.0.1:8100"
    template, _ = template_upsert(environment=tenant.environment, key="social-digest", channel="email")
    version = template_version_create(
        template=template,
        content={"en": {"subject": "{{ digest.count }} new", "body": DIGEST_BODY}},
        body_format="html",
        layout=None,
        publish=True,
    )
    template.refresh_from_db()
    assert template.published_version_id == version.pk

    rendered = template_preview(version=version, payload={}, subscriber={}, actor=None, locale="en", sample=True)
    assert "Sample message 1 (sample-workflow):" in rendered.body
    assert "Sample message 2" in rendered.body
    # The sample footer links follow CLARION_PUBLIC_URL, like the real ones.
    context = sample_render_context(template=template)
    assert context["preferences_url"] == "http://127.0.0.1:8100/preferences/sample/"


def test_the_variable_picker_lists_the_held_message_fields(tenant):
    template, _ = template_upsert(environment=tenant.environment, key="social-digest", channel="email")
    names = {row["name"] for row in template_variables(template=template)}
    assert {"digest.events[0].subject", "digest.events[0].body", "digest.events[0].workflow"} <= names


def test_an_undocumented_digest_field_is_still_refused(tenant):
    template, _ = template_upsert(environment=tenant.environment, key="social-digest", channel="email")
    body = "{% for ev in digest.events %}{{ ev.nonexistent }}{% endfor %}"
    with pytest.raises(Unprocessable) as refused:
        template_version_create(template=template, content={"en": {"subject": "x", "body": body}}, publish=True)
    assert "nonexistent" in str(refused.value.details)
