from __future__ import annotations

import pytest
from django.db import connection, transaction

from apps.core.errors import Conflict, NotFound, Unprocessable
from apps.templates import services
from apps.templates.models import Template, TemplateVersion
from apps.templates.services import (
    template_delete,
    template_publish,
    template_references,
    template_save,
    template_upsert,
    template_version_create,
    version_content,
)
from apps.workflows.models import Workflow
from apps.workflows.services import workflow_publish, workflow_upsert
from tests.templates.conftest import make_template

EN = {"en": {"title": "Hello", "body": "{{ payload.text }}"}}


# --- template_upsert --------------------------------------------------------------------------


def test_upsert_creates_then_updates(tenant):
    template, created = template_upsert(environment=tenant.environment, key="welcome", name="Welcome", channel="email")
    assert created is True
    assert (template.key, template.name, template.channel, template.description) == ("welcome", "Welcome", "email", "")

    again, created = template_upsert(
        environment=tenant.environment, key="welcome", name="Welcome!", channel="email", description="Sent on signup"
    )
    assert created is False
    assert again.pk == template.pk
    template.refresh_from_db()
    assert (template.name, template.description) == ("Welcome!", "Sent on signup")


def test_upsert_none_keeps_current_values(tenant):
    template_upsert(environment=tenant.environment, key="welcome", name="Welcome", channel="sms", description="d")

    template, _ = template_upsert(environment=tenant.environment, key="welcome")

    assert (template.name, template.channel, template.description) == ("Welcome", "sms", "d")


def test_upsert_needs_channel_on_creation_and_a_valid_key(tenant):
    with pytest.raises(Unprocessable) as missing:
        template_upsert(environment=tenant.environment, key="welcome", name="Welcome")
    assert missing.value.error_code == "channel_required"
    with pytest.raises(Unprocessable) as bad_key:
        template_upsert(environment=tenant.environment, key="not a slug!", name="x", channel="email")
    assert bad_key.value.error_code == "invalid_key"
    with pytest.raises(Unprocessable) as bad_channel:
        template_upsert(environment=tenant.environment, key="ok", name="x", channel="pigeon")
    assert bad_channel.value.error_code == "invalid_channel"
    assert not Template.objects.exists()


def test_channel_may_change_until_the_first_version(tenant):
    template, _ = template_upsert(environment=tenant.environment, key="t", name="T", channel="sms")
    template, _ = template_upsert(environment=tenant.environment, key="t", name="T", channel="in_app")
    assert template.channel == "in_app"
    template_version_create(template=template, content=EN)

    with pytest.raises(Conflict) as exc:
        template_upsert(environment=tenant.environment, key="t", name="T", channel="email")

    assert exc.value.status_code == 409
    assert exc.value.error_code == "template_channel_locked"
    template.refresh_from_db()
    assert template.channel == "in_app"


def test_same_key_in_two_environments_are_separate_templates(tenant, other_tenant):
    ours, _ = template_upsert(environment=tenant.environment, key="t", name="Ours", channel="sms")
    theirs, created = template_upsert(environment=other_tenant.environment, key="t", name="Theirs", channel="email")

    assert created is True
    assert ours.pk != theirs.pk
    ours.refresh_from_db()
    assert (ours.name, ours.channel) == ("Ours", "sms")


# --- versions ---------------------------------------------------------------------------------


def test_version_numbers_increase_per_template(tenant):
    a, _ = template_upsert(environment=tenant.environment, key="a", name="A", channel="in_app")
    b, _ = template_upsert(environment=tenant.environment, key="b", name="B", channel="in_app")

    numbers_a = [template_version_create(template=a, content=EN).number for _ in range(3)]
    numbers_b = [template_version_create(template=b, content=EN).number for _ in range(2)]

    assert numbers_a == [1, 2, 3]
    assert numbers_b == [1, 2]


def test_version_stores_every_language_and_metadata(tenant, admin_user):
    template, _ = template_upsert(environment=tenant.environment, key="a", name="A", channel="email")

    version = template_version_create(
        template=template,
        content={"en": {"subject": "S {{ payload.x }}", "body": "B"}, "de": {"subject": "Betreff"}},
        action_url="https://x.test/{{ payload.id }}",
        note="first draft",
        created_by=admin_user,
    )

    version.refresh_from_db()
    empty = dict.fromkeys(
        ("subject", "title", "body", "preheader", "primary_action_label", "secondary_action_label"), ""
    )
    assert version_content(version) == {
        "en": {**empty, "subject": "S {{ payload.x }}", "body": "B"},
        "fr": empty,
        "de": {**empty, "subject": "Betreff"},
    }
    assert (version.action_url, version.note, version.created_by) == (
        "https://x.test/{{ payload.id }}",
        "first draft",
        admin_user,
    )


def test_new_versions_never_change_older_ones_or_the_published_pointer(tenant):
    template, v1 = make_template(tenant.environment, content={"en": {"body": "one"}})

    v2 = template_version_create(template=template, content={"en": {"body": "two"}})

    v1.refresh_from_db()
    template.refresh_from_db()
    assert v1.body_en == "one"
    assert v2.body_en == "two"
    assert template.published_version_id == v1.pk


def test_create_with_publish_points_the_template_at_it(tenant):
    template, _ = make_template(tenant.environment)

    v2 = template_version_create(template=template, content={"en": {"body": "two"}}, publish=True)

    template.refresh_from_db()
    assert template.published_version_id == v2.pk


def test_syntax_errors_are_reported_per_language_and_field(tenant):
    template, _ = template_upsert(environment=tenant.environment, key="a", name="A", channel="email")

    with pytest.raises(Unprocessable) as exc:
        template_version_create(
            template=template,
            content={
                "en": {"subject": "ok", "body": "fine {{ payload.x }}"},
                "fr": {"subject": "{{ oops", "body": "ligne 1\n{% if x %}pas fermé"},
            },
            action_url="{{ }",
        )

    error = exc.value
    assert error.status_code == 422
    assert error.error_code == "template_syntax"
    assert set(error.details) == {"fr.subject", "fr.body", "action_url"}
    assert error.details["fr.body"].startswith("line 2:")
    assert not TemplateVersion.objects.exists()


@pytest.mark.parametrize(
    ("channel", "content", "missing"),
    [
        ("email", {"en": {"body": "b"}}, "en.subject"),
        ("email", {"en": {"subject": "s"}}, "en.body"),
        ("email", {"fr": {"subject": "s", "body": "b"}}, "en.subject"),
        ("in_app", {"en": {"subject": "only a subject"}}, "en.title"),
        ("push", {"en": {"body": "   "}}, "en.title"),
        ("sms", {"en": {"title": "t"}}, "en.body"),
        ("chat", {}, "en.body"),
    ],
)
def test_default_language_needs_the_channels_fields(tenant, channel, content, missing):
    template, _ = template_upsert(environment=tenant.environment, key="a", name="A", channel=channel)

    with pytest.raises(Unprocessable) as exc:
        template_version_create(template=template, content=content)

    assert exc.value.error_code == "template_incomplete"
    assert missing in exc.value.details


@pytest.mark.parametrize(
    ("channel", "content"),
    [
        ("email", {"en": {"subject": "s", "body": "b"}}),
        ("in_app", {"en": {"title": "t"}}),
        ("in_app", {"en": {"body": "b"}}),
        ("push", {"en": {"title": "t"}}),
        ("sms", {"en": {"body": "b"}}),
        ("chat", {"en": {"body": "b"}}),
    ],
)
def test_minimal_content_per_channel_is_accepted(tenant, channel, content):
    template, _ = template_upsert(environment=tenant.environment, key="a", name="A", channel=channel)

    assert template_version_create(template=template, content=content).number == 1


@pytest.mark.parametrize(
    ("content", "where"),
    [
        ({"en": {"body": "b"}, "xx": {"body": "b"}}, "xx"),
        ({"en": {"body": "b", "footer": "f"}}, "en.footer"),
        ({"en": "body"}, "en"),
        ({"en": {"body": 3}}, "en.body"),
        ({"en": {"body": "b", "title": "t" * 501}}, "en.title"),
    ],
)
def test_malformed_content_is_refused(tenant, content, where):
    template, _ = template_upsert(environment=tenant.environment, key="a", name="A", channel="in_app")

    with pytest.raises(Unprocessable) as exc:
        template_version_create(template=template, content=content)

    assert exc.value.error_code == "invalid_content"
    assert where in exc.value.details


def test_skip_if_unchanged_reuses_the_latest_version(tenant):
    template, v1 = make_template(tenant.environment, content=EN, publish=False)

    same = template_version_create(template=template, content=EN, skip_if_unchanged=True, publish=True)
    changed = template_version_create(template=template, content={"en": {"body": "new"}}, skip_if_unchanged=True)

    template.refresh_from_db()
    assert same.pk == v1.pk
    assert template.published_version_id == v1.pk
    assert changed.number == 2


class _Competitor:
    """Insert a version with the number we just computed, right after our ``MAX(number)`` read:
    what another request committing between our read and our insert looks like."""

    def __init__(self, template, times):
        self.template = template
        self.times = times
        self.busy = False

    def __call__(self, execute, sql, params, many, context):
        result = execute(sql, params, many, context)
        if self.times and not self.busy and "MAX(" in sql and "templateversion" in sql:
            self.times -= 1
            self.busy = True
            try:
                taken = TemplateVersion.objects.filter(template=self.template).count() + 1
                TemplateVersion.objects.create(template=self.template, number=taken, body_en="competitor")
            finally:
                self.busy = False
        return result


def test_number_race_is_retried_once(tenant):
    template, _ = make_template(tenant.environment)

    with connection.execute_wrapper(_Competitor(template, times=1)), transaction.atomic():
        version = template_version_create(template=template, content={"en": {"body": "mine"}})

    assert version.number == 3
    assert list(template.versions.order_by("number").values_list("number", "body_en")) == [
        (1, "{{ payload.text }}"),
        (2, "competitor"),
        (3, "mine"),
    ]


def test_number_race_twice_is_a_conflict(tenant):
    template, _ = make_template(tenant.environment)

    with connection.execute_wrapper(_Competitor(template, times=2)), pytest.raises(Conflict) as exc:
        template_version_create(template=template, content={"en": {"body": "mine"}})

    assert exc.value.error_code == "version_conflict"
    assert not template.versions.filter(body_en="mine").exists()


# --- publish ----------------------------------------------------------------------------------


def test_publish_defaults_to_the_latest_version(tenant):
    template, _ = make_template(tenant.environment, publish=False)
    template_version_create(template=template, content=EN)
    v3 = template_version_create(template=template, content=EN)

    template_publish(template=template)

    template.refresh_from_db()
    assert template.published_version_id == v3.pk


def test_publish_a_specific_older_version(tenant):
    template, v1 = make_template(tenant.environment, publish=False)
    template_version_create(template=template, content=EN, publish=True)

    template_publish(template=template, version_number=1)

    template.refresh_from_db()
    assert template.published_version_id == v1.pk


def test_publish_unknown_version_or_empty_template(tenant):
    template, _ = make_template(tenant.environment)
    empty, _ = template_upsert(environment=tenant.environment, key="empty", name="E", channel="sms")

    with pytest.raises(NotFound):
        template_publish(template=template, version_number=9)
    with pytest.raises(Unprocessable) as exc:
        template_publish(template=empty)
    assert exc.value.error_code == "template_no_versions"


def test_publish_refuses_a_version_that_does_not_compile(tenant):
    """Versions written around the services (e.g. imported rows) are checked again on publish."""
    template, v1 = make_template(tenant.environment)
    broken = TemplateVersion.objects.create(template=template, number=2, body_en="{% for %}")

    with pytest.raises(Unprocessable) as exc:
        template_publish(template=template, version_number=broken.number)

    assert exc.value.error_code == "template_syntax"
    assert "en.body" in exc.value.details
    template.refresh_from_db()
    assert template.published_version_id == v1.pk


# --- template_save (the API's PUT) --------------------------------------------------------------


def test_template_save_is_all_or_nothing(tenant):
    with pytest.raises(Unprocessable):
        template_save(
            environment=tenant.environment, key="new", name="New", channel="sms", content={"en": {"body": "{{"}}
        )

    assert not Template.objects.filter(key="new").exists()


def test_template_save_publish_without_content_publishes_latest(tenant):
    template, _ = make_template(tenant.environment, publish=False)

    saved = template_save(environment=tenant.environment, key=template.key, publish=True)

    assert saved.created is False
    assert saved.version is not None
    template.refresh_from_db()
    assert template.published_version_id == saved.version.pk


# --- delete -----------------------------------------------------------------------------------


def _workflow(environment, key, *, draft=None, published=None):
    """A workflow with a draft, or published through ``workflow_publish`` (which writes the
    template references)."""
    workflow = Workflow.objects.create(environment=environment, key=key, name=key, draft_steps=published or draft or [])
    if published is not None:
        workflow_publish(workflow=workflow)
    return workflow


def test_delete_removes_template_and_versions(tenant):
    template, _ = make_template(tenant.environment)
    template_version_create(template=template, content=EN)

    template_delete(template=template)

    assert not Template.objects.exists()
    assert not TemplateVersion.objects.exists()


@pytest.mark.parametrize(
    "published",
    [
        [{"id": "inbox", "type": "in_app", "template": "comment-in-app"}],
        [
            {
                "id": "route",
                "type": "branch",
                "branches": [{"if": "payload.x", "steps": [{"id": "s", "type": "sms", "template": "other"}]}],
                "else": [{"id": "e", "type": "in_app", "template": "comment-in-app"}],
            }
        ],
        [{"id": "reach", "type": "escalate", "channels": [{"channel": "in_app", "template": "comment-in-app"}]}],
    ],
)
def test_delete_is_refused_while_a_workflow_uses_the_template(tenant, published):
    template, _ = make_template(tenant.environment)
    make_template(tenant.environment, "other", channel="sms", content={"en": {"body": "Hi"}})
    _workflow(tenant.environment, "comment-created", published=published)

    with pytest.raises(Conflict) as exc:
        template_delete(template=template)

    assert exc.value.error_code == "template_in_use"
    assert exc.value.details == {"workflows": ["comment-created"]}
    assert Template.objects.filter(pk=template.pk).exists()
    assert template_references(template=template) == ["comment-created"]


def test_used_by_follows_the_published_version_not_the_draft(tenant):
    template, _ = make_template(tenant.environment)
    make_template(tenant.environment, "other", channel="in_app")
    workflow = _workflow(tenant.environment, "w", published=[{"id": "i", "type": "in_app", "template": "other"}])
    assert template_references(template=template) == []

    # A draft is not a use: the references are written when a version is published.
    workflow_upsert(
        environment=tenant.environment, key="w", steps=[{"id": "i", "type": "in_app", "template": template.key}]
    )
    assert template_references(template=template) == []
    workflow_publish(workflow=Workflow.objects.get(pk=workflow.pk))
    assert template_references(template=template) == ["w"]
    assert Workflow.objects.get(pk=workflow.pk).template_references.count() == 1  # "other" is no longer used

    with pytest.raises(Conflict):
        template_delete(template=template)


def test_other_environments_workflows_do_not_block_delete(tenant, other_tenant):
    template, _ = make_template(tenant.environment)
    make_template(other_tenant.environment, template.key)
    make_template(tenant.environment, "something-else")
    _workflow(other_tenant.environment, "w", published=[{"id": "i", "type": "in_app", "template": template.key}])
    _workflow(tenant.environment, "unrelated", published=[{"id": "i", "type": "in_app", "template": "something-else"}])
    _workflow(tenant.environment, "drafty", draft=[{"id": "i", "type": "in_app", "template": template.key}])

    template_delete(template=template)

    assert not Template.objects.filter(pk=template.pk).exists()


def test_services_module_exposes_required_fields_for_every_channel():
    from apps.preferences.models import CHANNELS

    assert set(services.REQUIRED_FIELDS) == set(CHANNELS)
