"""The admin template editor (server side): the page, validation on save, publish, the live
preview endpoint, test send, rollback, diffs, the missing-translations filter and layouts."""

from __future__ import annotations

import json

import pytest
from django.contrib.admin.models import LogEntry
from django.core import mail
from django.urls import reverse

from apps.templates.models import EmailLayout, Template, TemplateVersion
from apps.templates.services import layout_upsert, template_upsert, template_version_create
from tests.factories import SubscriberFactory
from tests.templates.conftest import make_template

SAMPLE = {"author": "Grace", "post": "Hello"}


def editor_url(template: Template) -> str:
    return reverse("admin:notification_templates_template_change", args=[template.pk])


def form_data(template: Template, **fields: str) -> dict[str, str]:
    data = {"sample_payload": json.dumps(SAMPLE), "note": "", "_action": "save"}
    for language in ("en", "fr", "de"):
        for name in ("subject", "title", "body", "preheader", "primary_action_label", "secondary_action_label"):
            data[f"{name}_{language}"] = ""
    for name in ("action_url", "primary_action_url", "secondary_action_url"):
        data[name] = ""
    data.update(fields)
    return data


@pytest.fixture
def in_app(tenant):
    template, _ = template_upsert(environment=tenant.environment, key="comment", channel="in_app")
    template_version_create(
        template=template, content={"en": {"title": "{{ payload.author }} commented"}}, publish=True
    )
    return template


def test_editor_page_shows_channel_fields_languages_variables_and_history(admin_client, in_app):
    response = admin_client.get(editor_url(in_app))

    assert response.status_code == 200
    page = response.content.decode()
    for name in ("title_en", "body_fr", "primary_action_label_de", "primary_action_url", "sample_payload"):
        assert f'name="{name}"' in page
    assert 'name="subject_en"' not in page  # email-only field
    assert 'data-insert="subscriber.first_name"' in page and 'data-insert="digest.count"' in page
    assert "clarion/admin/template-editor.js" in page
    assert "cdn" not in page.lower() and "googleapis" not in page
    assert 'value="{{ payload.author }} commented"' in page
    assert "Not translated: falls back to English" in page


def test_save_with_an_unknown_variable_shows_it_inline_and_saves_nothing(admin_client, in_app):
    response = admin_client.post(editor_url(in_app), form_data(in_app, title_en="{{ payload.autor }}"))

    assert response.status_code == 200
    page = response.content.decode()
    assert "unknown variable: nothing called “autor”" in page
    assert 'data-error-for="en.title"' in page
    assert 'value="{{ payload.autor }}"' in page  # the person's edit is kept
    assert in_app.versions.count() == 1


def test_syntax_errors_and_bad_sample_json_are_inline(admin_client, in_app):
    response = admin_client.post(
        editor_url(in_app), form_data(in_app, title_en="ok", body_fr="{% if %}", sample_payload="{oops")
    )
    assert response.status_code == 200
    assert "Not valid JSON" in response.content.decode()
    response = admin_client.post(editor_url(in_app), form_data(in_app, title_en="ok", body_fr="{% if %}"))
    assert "line 1" in response.content.decode()
    assert in_app.versions.count() == 1


def test_save_draft_then_publish(admin_client, admin_user, in_app):
    fields = {"title_en": "{{ payload.author }} replied", "title_fr": "{{ payload.author }} a répondu"}
    response = admin_client.post(editor_url(in_app), form_data(in_app, note="replied", **fields))
    assert response.status_code == 302
    in_app.refresh_from_db()
    draft = in_app.versions.get(number=2)
    assert (draft.title_fr, draft.note, draft.created_by) == ("{{ payload.author }} a répondu", "replied", admin_user)
    assert in_app.published_version.number == 1
    assert in_app.sample_payload == SAMPLE

    admin_client.post(editor_url(in_app), form_data(in_app, _action="publish", **fields))
    in_app.refresh_from_db()
    assert in_app.published_version.number == 2  # identical content: the draft itself is published
    log = LogEntry.objects.filter(object_id=str(in_app.pk)).order_by("id")
    assert [entry.change_message for entry in log] == ["Saved draft version 2. replied", "Published version 2."]
    assert log[0].user == admin_user


def test_preview_endpoint_renders_the_unsaved_form(admin_client, in_app):
    url = reverse("admin:notification_templates_template_preview", args=[in_app.pk])
    data = form_data(
        in_app,
        title_en="{{ payload.author }} on {{ payload.post }}",
        title_fr="Salut",
        primary_action_label_en="Open",
        primary_action_url="https://x.test/{{ payload.post }}",
        preview_locale="fr",
    )
    body = admin_client.post(url, data).json()
    assert body["ok"] and body["language"] == "fr"
    assert body["rendered"]["title"] == "Salut"
    assert body["rendered"]["actions"] == [{"label": "Open", "url": "https://x.test/Hello", "kind": "primary"}]
    assert body["rendered"]["fallbacks"] == {"primary_action_label": "en"}

    data.update(title_fr="{{ payload.nope }}")
    body = admin_client.post(url, data).json()
    assert not body["ok"] and "nope" in body["errors"]["fr.title"]
    assert body["rendered"]["title"] == ""  # still previewed, leniently
    assert admin_client.get(url).status_code == 405


def test_preview_as_a_stored_subscriber(admin_client, tenant, in_app):
    SubscriberFactory(environment=tenant.environment, subscriber_id="u1", first_name="Zoe")
    url = reverse("admin:notification_templates_template_preview", args=[in_app.pk])
    body = admin_client.post(url, form_data(in_app, title_en="Hi {{ subscriber.first_name }}", preview_subscriber="u1"))
    assert body.json()["rendered"]["title"] == "Hi Zoe"
    missing = admin_client.post(url, form_data(in_app, title_en="x", preview_subscriber="ghost")).json()
    assert "ghost" in missing["errors"]["preview_subscriber"]


def test_test_send_from_the_editor(admin_client, tenant, settings):
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    template, _ = template_upsert(environment=tenant.environment, key="mail", channel="email")
    url = reverse("admin:notification_templates_template_test_send", args=[template.pk])
    data = form_data(template, subject_en="Hi {{ payload.author }}", body_en="**bold**", test_to="pm@example.com")

    body = admin_client.post(url, data).json()

    assert body["ok"], body
    assert "pm@example.com" in body["message"]
    (sent,) = mail.outbox
    assert sent.subject == "Hi Grace" and "<strong>bold</strong>" in sent.alternatives[0][0]
    bad = admin_client.post(url, form_data(template, subject_en="{{ x.y }}", body_en="b", test_to="a@b.c"))
    assert bad.status_code == 422


def test_rollback_and_diff_pages(admin_client, in_app):
    template_version_create(template=in_app, content={"en": {"title": "Two"}}, publish=True)
    rollback = reverse("admin:notification_templates_template_rollback", args=[in_app.pk, 1])
    assert admin_client.get(rollback).status_code == 405
    assert admin_client.post(rollback).status_code == 302
    in_app.refresh_from_db()
    assert in_app.published_version.number == 3
    assert in_app.published_version.title_en == "{{ payload.author }} commented"

    diff = admin_client.get(reverse("admin:notification_templates_template_diff", args=[in_app.pk]) + "?a=3&b=2")
    page = diff.content.decode()
    assert diff.status_code == 200
    assert "version 2 and version 3" in page and 'class="diff"' in page and "en.title" in page


def test_missing_translations_filter_and_column(admin_client, tenant):
    make_template(
        tenant.environment, "complete", content={"en": {"title": "T"}, "fr": {"title": "T"}, "de": {"title": "T"}}
    )
    make_template(tenant.environment, "no-german", content={"en": {"title": "T"}, "fr": {"title": "T"}})
    changelist = reverse("admin:notification_templates_template_changelist")

    german = admin_client.get(changelist + "?missing_translation=de").content.decode()
    french = admin_client.get(changelist + "?missing_translation=fr").content.decode()
    anything = admin_client.get(changelist).content.decode()

    assert "no-german" in german and ">complete<" not in german
    assert "no-german" not in french
    assert "de ✗" in anything and "fr ✓" in anything


def test_layout_admin_saves_through_services_and_previews(admin_client, tenant):
    layout, _ = layout_upsert(environment=tenant.environment, key="brand", name="Brand", footer={"en": "Foot"})
    change = reverse("admin:notification_templates_emaillayout_change", args=[layout.pk])
    assert admin_client.get(change).status_code == 200
    response = admin_client.post(
        change,
        {
            "name": "Brand",
            "header_en": "<b>Acme</b>",
            "footer_en": "Acme Inc",
            "footer_fr": "Acme SA",
            "brand_color": "#123456",
            "logo_url": "",
            "css": "",
            "show_unsubscribe": "on",
            "is_default": "on",
            "_save": "Save",
        },
    )
    assert response.status_code == 302, response.context["adminform"].form.errors if response.context else ""
    layout.refresh_from_db()
    assert (layout.footer_fr, layout.brand_color, layout.is_default) == ("Acme SA", "#123456", True)

    preview = reverse("admin:notification_templates_emaillayout_preview", args=[layout.pk])
    body = admin_client.post(preview, {"footer_fr": "Pied {{ subscriber.first_name }}", "preview_locale": "fr"}).json()
    assert body["ok"] and "Pied Ada" in body["rendered"]["body"] and "Pied Ada" in body["rendered"]["text"]
    broken = admin_client.post(preview, {"footer_en": "{{ nope.x }}"}).json()
    assert broken["ok"] is False

    make = reverse("admin:notification_templates_emaillayout_add")
    assert admin_client.get(make).status_code == 200
    template, _ = template_upsert(environment=tenant.environment, key="mail", channel="email")
    template_version_create(template=template, content={"en": {"subject": "S", "body": "B"}})
    delete = reverse("admin:notification_templates_emaillayout_delete", args=[layout.pk])
    admin_client.post(delete, {"post": "yes"})
    assert EmailLayout.objects.filter(pk=layout.pk).exists()  # used by a version
    assert TemplateVersion.objects.get(template=template).layout_id == layout.pk


def test_translation_tabs_come_from_our_static_files_not_a_cdn(admin_client, tenant):
    template, version = make_template(tenant.environment)
    layout, _ = layout_upsert(environment=tenant.environment, key="brand")
    for url in (
        reverse("admin:notification_templates_templateversion_add") + f"?template={template.pk}",
        reverse("admin:notification_templates_templateversion_change", args=[version.pk]),
        reverse("admin:notification_templates_emaillayout_change", args=[layout.pk]),
    ):
        page = admin_client.get(url).content.decode()
        assert "clarion/admin/translation-tabs.js" in page, url
        assert "code.jquery.com" not in page and "googleapis" not in page and "//cdn" not in page, url
