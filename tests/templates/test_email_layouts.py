"""Email rendering: Markdown or HTML bodies, layouts (CSS inlined), plain-text part, preheader;
in-app buttons; SMS segments; validation against the sample payload; rollback and diffs."""

from __future__ import annotations

import pytest
from django.core import mail

from apps.core.errors import ApiError, Conflict
from apps.templates.models import TemplateVersion
from apps.templates.rendering import build_render_context, render_version, sms_segments
from apps.templates.selectors import (
    missing_translations,
    template_variables,
    template_version_diff,
    version_changes,
)
from apps.templates.services import (
    layout_delete,
    layout_upsert,
    template_publish,
    template_rollback,
    template_test_send,
    template_upsert,
    template_version_create,
)
from tests.factories import SubscriberFactory

CONTEXT = build_render_context(
    payload={"post": "Roadmap <2027>", "count": 3},
    subscriber={"first_name": "Ada"},
    actor=None,
    preferences_url="https://clarion.test/preferences/tok/",
    unsubscribe_url="https://clarion.test/unsubscribe/tok",
)
MARKDOWN = "Hi **{{ subscriber.first_name }}**,\n\n{{ payload.count }} comments on *{{ payload.post }}*.\n\n[Open](https://app.test/p)"


def _layout(environment, key="brand", **kwargs):
    defaults = {
        "name": "Brand",
        "header": {"en": "<strong>Acme</strong>", "fr": "<strong>Acme FR</strong>"},
        "footer": {"en": "Acme Inc, 1 Main St", "fr": "Acme SA, 1 rue Principale"},
        "brand_color": "#ff6600",
        "logo_url": "https://cdn.acme.test/logo.png",
        "css": ".clarion-content p { margin: 0 0 12px 0; }",
        "is_default": True,
    }
    defaults.update(kwargs)
    layout, _ = layout_upsert(environment=environment, key=key, **defaults)
    return layout


def _email(environment, body=MARKDOWN, **kwargs):
    template, _ = template_upsert(environment=environment, key=kwargs.pop("key", "digest"), channel="email")
    content = kwargs.pop("content", None) or {
        "en": {"subject": "News on {{ payload.post }}", "preheader": "{{ payload.count }} new", "body": body},
        "fr": {"subject": "Nouveautés sur {{ payload.post }}", "body": "Bonjour **{{ subscriber.first_name }}**"},
    }
    version = template_version_create(template=template, content=content, **kwargs)
    return template, version


def test_markdown_is_rendered_into_the_default_layout_with_inlined_css_and_a_text_part(tenant):
    _layout(tenant.environment)
    _, version = _email(tenant.environment)
    assert version.layout.key == "brand"  # chosen when the version was written

    rendered = render_version(version=version, locale="en", context=CONTEXT)

    html = rendered.body
    assert html.startswith("<!DOCTYPE html>") or html.startswith("<html")
    assert "<strong>Ada</strong>" in html and "<em>Roadmap &lt;2027&gt;</em>" in html  # Markdown + autoescape
    assert 'href="https://app.test/p"' in html
    assert "<style" not in html  # css-inline moved every rule into style attributes
    assert "border-top: 4px solid #ff6600" in html
    assert 'src="https://cdn.acme.test/logo.png"' in html
    assert "margin: 0 0 12px 0" in html  # the layout's own CSS
    assert "Acme Inc, 1 Main St" in html
    assert 'href="https://clarion.test/unsubscribe/tok"' in html
    assert 'href="https://clarion.test/preferences/tok/"' in html
    assert "3 new" in html and rendered.preheader == "3 new"
    assert rendered.subject == "News on Roadmap <2027>"
    assert rendered.layout == "brand"
    # the plain-text part: readable text, link targets, footer and the unsubscribe link; no markup
    assert "Hi Ada," in rendered.text
    assert "3 comments on Roadmap <2027>." in rendered.text
    assert "https://app.test/p" in rendered.text
    assert "Unsubscribe: https://clarion.test/unsubscribe/tok" in rendered.text
    assert "Acme Inc, 1 Main St" in rendered.text
    assert "<" not in rendered.text.replace("<2027>", "")


def test_layout_is_translated_and_footer_links_only_when_given(tenant):
    _layout(tenant.environment)
    _, version = _email(tenant.environment)
    context = build_render_context(payload={"post": "P", "count": 1}, subscriber={"first_name": "Ada"}, actor=None)

    rendered = render_version(version=version, locale="fr", context=context)

    assert "Acme SA, 1 rue Principale" in rendered.body and "Acme FR" in rendered.body
    assert "Bonjour <strong>Ada</strong>" in rendered.body
    assert "unsubscribe" not in rendered.body.lower() and "Se désabonner" not in rendered.body
    assert rendered.fallbacks == {"preheader": "en"}


def test_html_body_without_layout_stays_as_written(tenant):
    _, version = _email(
        tenant.environment, body="<p>Hi {{ subscriber.first_name }}</p>", body_format="html", layout=None
    )
    assert version.layout is None

    rendered = render_version(version=version, locale="en", context=CONTEXT)

    assert rendered.body.endswith("<p>Hi Ada</p>")
    assert 'style="display:none' in rendered.body  # the preheader, hidden
    assert rendered.text == "Hi Ada"


def test_explicit_no_layout_and_layout_of_another_environment(tenant, other_tenant):
    _layout(tenant.environment)
    _, version = _email(tenant.environment, layout=None)
    assert version.layout is None
    foreign = _layout(other_tenant.environment)
    with pytest.raises(ApiError) as excinfo:
        _email(tenant.environment, key="other", layout=foreign)
    assert excinfo.value.error_code == "layout_not_found"


def test_layout_validation_and_delete_rules(tenant):
    with pytest.raises(ApiError) as excinfo:
        layout_upsert(environment=tenant.environment, key="bad", brand_color="red", logo_url="javascript:x")
    assert set(excinfo.value.details) == {"brand_color", "logo_url"}
    with pytest.raises(ApiError) as excinfo:
        layout_upsert(environment=tenant.environment, key="bad", footer={"en": "{% if %}"})
    assert excinfo.value.error_code == "template_syntax"

    first = _layout(tenant.environment)
    second = _layout(tenant.environment, key="second")
    first.refresh_from_db()
    assert second.is_default and not first.is_default  # one default per environment
    _email(tenant.environment)  # uses "second"
    with pytest.raises(Conflict):
        layout_delete(layout=second)
    layout_delete(layout=first)


def test_in_app_actions_are_rendered_and_translated(tenant):
    template, _ = template_upsert(environment=tenant.environment, key="invite", channel="in_app")
    version = template_version_create(
        template=template,
        content={
            "en": {
                "title": "Join {{ payload.post }}",
                "primary_action_label": "Accept",
                "secondary_action_label": "No",
            },
            "fr": {"title": "Rejoindre", "primary_action_label": "Accepter"},
        },
        urls={
            "primary_action_url": "https://app.test/accept/{{ payload.count }}",
            "secondary_action_url": "https://app.test/decline",
        },
    )

    rendered = render_version(version=version, locale="fr", context=CONTEXT)

    assert rendered.actions == [
        {"label": "Accepter", "url": "https://app.test/accept/3", "kind": "primary"},
        {"label": "No", "url": "https://app.test/decline", "kind": "secondary"},
    ]
    assert rendered.fallbacks == {"secondary_action_label": "en"}


def test_a_button_needs_a_url(tenant):
    template, _ = template_upsert(environment=tenant.environment, key="invite", channel="in_app")
    with pytest.raises(ApiError) as excinfo:
        template_version_create(template=template, content={"en": {"title": "T", "primary_action_label": "Go"}})
    assert excinfo.value.error_code == "template_incomplete"
    assert "primary_action_url" in excinfo.value.details


@pytest.mark.parametrize(
    ("text", "segments", "encoding"),
    [
        ("", 0, "GSM-7"),
        ("x" * 160, 1, "GSM-7"),
        ("x" * 161, 2, "GSM-7"),
        ("€" * 80, 1, "GSM-7"),  # extended characters count twice
        ("€" * 81, 2, "GSM-7"),
        ("é" * 160, 1, "GSM-7"),
        ("ł" * 70, 1, "UCS-2"),
        ("ł" * 71, 2, "UCS-2"),
        ("😀" * 35, 1, "UCS-2"),  # two UTF-16 units each
    ],
)
def test_sms_segments(text, segments, encoding):
    result = sms_segments(text)
    assert (result["segments"], result["encoding"]) == (segments, encoding)


def test_publish_renders_strictly_against_the_sample_payload(tenant):
    template, _ = template_upsert(
        environment=tenant.environment, key="t", channel="sms", sample_payload={"post": "Hello"}
    )
    version = template_version_create(template=template, content={"en": {"body": "New: {{ payload.pots }}"}})

    with pytest.raises(ApiError) as excinfo:
        template_publish(template=template)
    assert excinfo.value.error_code == "template_render"
    assert excinfo.value.details == {"en.body": "line 1: unknown variable: nothing called “pots” in the data"}
    template.refresh_from_db()
    assert template.published_version is None
    assert TemplateVersion.objects.filter(pk=version.pk).exists()  # a draft may still be saved

    with pytest.raises(ApiError):
        template_version_create(template=template, content={"en": {"body": "{{ subscriber.nmae }}"}}, publish=True)
    assert template.versions.count() == 1  # a version that does not render is not stored when publishing

    fixed = template_version_create(
        template=template,
        content={"en": {"body": "New: {{ payload.post }} {{ subscriber.data.team }} {{ actor.first_name }}"}},
        publish=True,
    )
    template.refresh_from_db()
    assert template.published_version == fixed


def test_without_a_sample_payload_payload_variables_are_lenient(tenant):
    template, _ = template_upsert(environment=tenant.environment, key="t", channel="sms")
    template_version_create(template=template, content={"en": {"body": "{{ payload.anything.deep }}"}}, publish=True)
    with pytest.raises(ApiError) as excinfo:
        template_version_create(template=template, content={"en": {"body": "{{ 1 / 0 }}"}}, publish=True)
    assert "ZeroDivisionError" in excinfo.value.details["en.body"]


def test_errors_are_reported_per_language(tenant):
    template, _ = template_upsert(environment=tenant.environment, key="t", channel="push", sample_payload={"a": 1})
    with pytest.raises(ApiError) as excinfo:
        template_version_create(
            template=template,
            content={
                "en": {"title": "{{ payload.a }}"},
                "fr": {"title": "{{ payload.b }}", "body": "{{ digest.cnt }}"},
            },
            publish=True,
        )
    assert set(excinfo.value.details) == {"fr.title", "fr.body"}


def test_rollback_publishes_a_new_version_equal_to_the_old_one(tenant, admin_user):
    template, _ = template_upsert(environment=tenant.environment, key="t", channel="in_app")
    v1 = template_version_create(
        template=template,
        content={"en": {"title": "Old"}, "fr": {"title": "Vieux"}},
        action_url="https://a.test",
        publish=True,
    )
    template_version_create(template=template, content={"en": {"title": "New"}}, publish=True)

    v3 = template_rollback(template=template, version_number=1, created_by=admin_user)

    template.refresh_from_db()
    assert (v3.number, template.published_version_id) == (3, v3.pk)
    assert (v3.title_en, v3.title_fr, v3.action_url) == ("Old", "Vieux", "https://a.test")
    assert v3.note == "Rollback to version 1" and v3.created_by == admin_user
    v1.refresh_from_db()
    assert v1.title_en == "Old"

    rows = {row["field"]: row for row in template_version_diff(template=template, a=2, b=3)}
    assert rows["en.title"]["changed"] and rows["en.title"]["before"] == "New"
    assert "-New" in rows["en.title"]["diff"] and "+Old" in rows["en.title"]["diff"]
    assert rows["fr.title"]["before"] == "" and rows["fr.title"]["after"] == "Vieux"
    versions = list(template.versions.all())
    assert version_changes(versions=versions) == {
        1: ["en.title", "fr.title", "action_url"],
        2: ["en.title", "fr.title", "action_url"],
        3: ["en.title", "fr.title", "action_url"],
    }


def test_variables_and_missing_translations(tenant):
    template, _ = template_upsert(
        environment=tenant.environment,
        key="t",
        channel="email",
        sample_payload={"post": {"title": "Hi", "tags": ["a"]}, "count": 2},
    )
    names = {row["name"]: row for row in template_variables(template=template)}
    assert names["payload.post.title"]["example"] == "Hi"
    assert names["payload.post.tags[0]"]["example"] == "a"
    assert names["payload.count"]["group"] == "payload"
    assert {"subscriber.first_name", "actor.first_name", "digest.count", "unsubscribe_url"} <= set(names)

    version = template_version_create(
        template=template, content={"en": {"subject": "S", "body": "B"}, "fr": {"subject": "S"}}
    )
    assert missing_translations(version=version, channel="email") == {"fr": ["body"], "de": ["subject", "body"]}


def test_test_send_goes_through_the_real_email_path(tenant, settings):
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    _layout(tenant.environment)
    template, version = _email(tenant.environment)
    template.sample_payload = {"post": "Sample", "count": 7}
    template.save()
    SubscriberFactory(environment=tenant.environment, subscriber_id="u1", email="u1@example.com", locale="fr")

    message = template_test_send(version=version, to="pm@example.com")
    by_subscriber = template_test_send(version=version, subscriber_id="u1")

    assert message.status == "sent" and message.recipient == "pm@example.com"
    assert (message.template_version_id, message.locale) == (version.pk, "en")
    assert by_subscriber.recipient == "u1@example.com" and by_subscriber.locale == "fr"
    first, second = mail.outbox
    assert first.subject == "News on Sample"
    assert "7 comments on Sample." in first.body  # the generated plain-text part
    assert "border-top: 4px solid #ff6600" in first.alternatives[0][0]
    assert second.subject == "Nouveautés sur Sample"
    with pytest.raises(ApiError):
        template_test_send(version=version, to="not-an-address")
