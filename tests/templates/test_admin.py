from __future__ import annotations

import pytest
from django.urls import reverse

from apps.templates.models import Template, TemplateVersion
from apps.templates.services import template_version_create
from apps.workflows.services import workflow_upsert
from tests.templates.conftest import make_template

VERSION_ADD = reverse("admin:notification_templates_templateversion_add")
VERSION_LIST = reverse("admin:notification_templates_templateversion_changelist")
TEMPLATE_LIST = reverse("admin:notification_templates_template_changelist")
TEMPLATE_ADD = reverse("admin:notification_templates_template_add")


def version_form(template: Template, **overrides: str) -> dict[str, str]:
    data = {"template": str(template.pk), "action_url": "", "note": "", "_save": "Save"}
    for language in ("en", "fr", "de"):
        for name in ("subject", "title", "body"):
            data[f"{name}_{language}"] = ""
    data.update(overrides)
    return data


def test_changelists_and_add_pages_open(admin_client, tenant):
    template, version = make_template(tenant.environment)

    for url in (
        TEMPLATE_LIST,
        TEMPLATE_ADD,
        reverse("admin:notification_templates_template_change", args=[template.pk]),
        VERSION_LIST,
        VERSION_ADD,
        f"{VERSION_ADD}?template={template.pk}",
        reverse("admin:notification_templates_templateversion_change", args=[version.pk]),
    ):
        response = admin_client.get(url)
        assert response.status_code == 200, url


def test_changelist_shows_published_version(admin_client, tenant):
    template, _ = make_template(tenant.environment, "welcome")
    template_version_create(template=template, content={"en": {"body": "v2"}})

    content = admin_client.get(TEMPLATE_LIST).content.decode()

    assert "welcome" in content
    assert "v1" in content  # published
    assert "v2" in content  # latest


def test_add_form_prefills_from_latest_version(admin_client, tenant):
    template, _ = make_template(tenant.environment)
    template_version_create(template=template, content={"en": {"title": "Latest title {{ payload.x }}"}})

    response = admin_client.get(f"{VERSION_ADD}?template={template.pk}")

    form = response.context["adminform"].form
    assert form.initial["template"] == template.pk
    assert form.initial["title_en"] == "Latest title {{ payload.x }}"
    assert "Latest title {{ payload.x }}" in response.content.decode()


def test_add_form_prefills_from_a_given_version(admin_client, tenant):
    template, v1 = make_template(tenant.environment)
    template_version_create(template=template, content={"en": {"title": "newer"}})

    form = admin_client.get(f"{VERSION_ADD}?from_version={v1.pk}").context["adminform"].form

    assert form.initial["title_fr"] == "Salut {{ subscriber.first_name }}"


def test_create_version_through_the_add_form(admin_client, admin_user, tenant):
    template, _ = make_template(tenant.environment)

    response = admin_client.post(
        VERSION_ADD,
        version_form(
            template,
            title_en="Hello {{ subscriber.first_name }}",
            title_fr="Bonjour {{ subscriber.first_name }}",
            body_de="Hallo",
            note="friendlier",
            publish="on",
        ),
    )

    assert response.status_code == 302, response.context["adminform"].form.errors if response.context else ""
    version = TemplateVersion.objects.get(template=template, number=2)
    assert (version.title_en, version.title_fr, version.body_de) == (
        "Hello {{ subscriber.first_name }}",
        "Bonjour {{ subscriber.first_name }}",
        "Hallo",
    )
    assert version.note == "friendlier"
    assert version.created_by == admin_user
    template.refresh_from_db()
    assert template.published_version_id == version.pk


def test_add_form_without_publish_leaves_the_published_version(admin_client, tenant):
    template, v1 = make_template(tenant.environment)

    admin_client.post(VERSION_ADD, version_form(template, body_en="draft"))

    template.refresh_from_db()
    assert template.versions.count() == 2
    assert template.published_version_id == v1.pk


def test_add_form_shows_syntax_errors_on_the_field(admin_client, tenant):
    template, _ = make_template(tenant.environment)

    response = admin_client.post(VERSION_ADD, version_form(template, title_en="ok", body_fr="a\n{% if %}"))

    assert response.status_code == 200
    errors = response.context["adminform"].form.errors
    assert "body_fr" in errors
    assert errors["body_fr"][0].startswith("line 2:")
    assert template.versions.count() == 1


def test_add_form_requires_the_channels_fields(admin_client, tenant):
    template, _ = make_template(
        tenant.environment, "mail", channel="email", content={"en": {"subject": "s", "body": "b"}}
    )

    response = admin_client.post(VERSION_ADD, version_form(template, body_en="no subject"))

    assert response.status_code == 200
    assert "subject_en" in response.context["adminform"].form.errors
    assert template.versions.count() == 1


def test_existing_versions_are_read_only(admin_client, tenant):
    template, version = make_template(tenant.environment)
    url = reverse("admin:notification_templates_templateversion_change", args=[version.pk])

    page = admin_client.get(url)
    content = page.content.decode()
    assert 'name="body_en"' not in content  # no inputs: read-only
    assert "Hi {{ subscriber.first_name }}" in content
    assert "Edit from this version" in content
    assert "Publish this version" in content

    response = admin_client.post(url, version_form(template, body_en="tampered"))
    assert response.status_code == 403
    version.refresh_from_db()
    assert version.body_en == "{{ payload.text }}"

    delete = reverse("admin:notification_templates_templateversion_delete", args=[version.pk])
    assert admin_client.post(delete, {"post": "yes"}).status_code == 403
    assert TemplateVersion.objects.filter(pk=version.pk).exists()


def test_publish_button_on_a_version(admin_client, tenant):
    template, _ = make_template(tenant.environment)
    v2 = template_version_create(template=template, content={"en": {"body": "two"}})
    url = reverse("admin:notification_templates_templateversion_publish", args=[v2.pk])

    assert admin_client.get(url).status_code == 405
    response = admin_client.post(url)

    assert response.status_code == 302
    template.refresh_from_db()
    assert template.published_version_id == v2.pk


def test_publish_action_on_versions(admin_client, tenant):
    template, v1 = make_template(tenant.environment)
    other, _ = make_template(tenant.environment, "other", publish=False)
    v2 = template_version_create(template=template, content={"en": {"body": "two"}})
    other_v1 = other.versions.get()

    admin_client.post(VERSION_LIST, {"action": "publish_selected", "_selected_action": [v2.pk, other_v1.pk]})

    template.refresh_from_db()
    other.refresh_from_db()
    assert template.published_version_id == v2.pk
    assert other.published_version_id == other_v1.pk

    # two versions of one template: refused, nothing changes
    admin_client.post(VERSION_LIST, {"action": "publish_selected", "_selected_action": [v1.pk, v2.pk]})
    template.refresh_from_db()
    assert template.published_version_id == v2.pk


def test_publish_latest_action_on_templates(admin_client, tenant):
    template, _ = make_template(tenant.environment, publish=False)
    v2 = template_version_create(template=template, content={"en": {"body": "two"}})
    empty = Template.objects.create(environment=tenant.environment, key="empty", name="Empty", channel="sms")

    response = admin_client.post(
        TEMPLATE_LIST, {"action": "publish_latest", "_selected_action": [template.pk, empty.pk]}, follow=True
    )

    template.refresh_from_db()
    assert template.published_version_id == v2.pk
    messages = [str(m) for m in response.context["messages"]]
    assert any("empty" in m and "no versions" in m for m in messages)


def test_create_template_through_admin(admin_client, tenant):
    response = admin_client.post(
        TEMPLATE_ADD,
        {
            "environment": tenant.environment.pk,
            "key": "new-template",
            "name": "New",
            "channel": "push",
            "description": "",
            "versions-TOTAL_FORMS": "0",
            "versions-INITIAL_FORMS": "0",
            "versions-MIN_NUM_FORMS": "0",
            "versions-MAX_NUM_FORMS": "1000",
        },
    )

    assert response.status_code == 302, response.content
    assert Template.objects.get(environment=tenant.environment, key="new-template").channel == "push"


def test_template_used_by_a_workflow_cannot_be_deleted_in_admin(admin_client, tenant):
    template, _ = make_template(tenant.environment, "welcome")
    workflow_upsert(
        environment=tenant.environment,
        key="signup",
        name="Signup",
        steps=[{"id": "m", "type": "in_app", "template": "welcome"}],
        publish=True,
    )
    url = reverse("admin:notification_templates_template_delete", args=[template.pk])

    page = admin_client.get(url)
    assert "signup" in page.content.decode()
    admin_client.post(url, {"post": "yes"})

    assert Template.objects.filter(pk=template.pk).exists()


def test_unused_template_is_deleted_in_admin(admin_client, tenant):
    template, _ = make_template(tenant.environment, "welcome")
    url = reverse("admin:notification_templates_template_delete", args=[template.pk])

    assert admin_client.post(url, {"post": "yes"}).status_code == 302

    assert not Template.objects.filter(pk=template.pk).exists()


@pytest.mark.parametrize("url", [TEMPLATE_LIST, VERSION_LIST, VERSION_ADD])
def test_admin_needs_staff(client, url):
    response = client.get(url)
    assert response.status_code == 302
    assert "/login/" in response["Location"]
