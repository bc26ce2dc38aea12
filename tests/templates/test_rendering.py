from __future__ import annotations

import pytest

from apps.core.sandbox import MAX_OUTPUT_CHARS, SandboxError
from apps.templates.rendering import build_render_context, render_version, resolve_language
from apps.templates.selectors import published_versions_for_keys
from apps.templates.services import layout_upsert, template_version_create
from tests.factories import SubscriberFactory
from tests.templates.conftest import make_template

CONTEXT = build_render_context(
    payload={"text": "Nice post", "html": "<b>bold</b>"},
    subscriber={"first_name": "Ada", "locale": "fr"},
    actor="user-9",
)


@pytest.mark.parametrize(
    ("locale", "expected"),
    [
        ("fr", "fr"),
        ("fr-CA", "fr"),
        ("fr_CA", "fr"),
        ("FR-ca", "fr"),
        ("de", "de"),
        ("es", "en"),
        (None, "en"),
        ("", "en"),
    ],
)
def test_resolve_language(locale, expected):
    assert resolve_language(locale) == expected


def test_renders_in_requested_locale_with_region_fallback(tenant):
    _, version = make_template(tenant.environment)

    rendered = render_version(version=version, locale="fr-CA", context=CONTEXT)

    assert rendered.locale == "fr"
    assert rendered.title == "Salut Ada"
    assert rendered.subject == "Nouveau commentaire"
    # fr has no body: the English body is used and reported
    assert rendered.body == "Nice post"
    assert rendered.fallbacks == {"body": "en"}


def test_missing_translation_falls_back_to_default_language(tenant):
    _, version = make_template(tenant.environment)

    rendered = render_version(version=version, locale="de", context=CONTEXT)

    assert rendered.locale == "de"
    assert rendered.title == "Hi Ada"
    assert rendered.fallbacks == {"subject": "en", "title": "en", "body": "en"}


def test_unknown_locale_renders_default_without_fallback_entries(tenant):
    _, version = make_template(tenant.environment)

    rendered = render_version(version=version, locale="ja-JP", context=CONTEXT)

    assert rendered.locale == "en"
    assert rendered.title == "Hi Ada"
    assert rendered.fallbacks == {}


def test_email_body_is_autoescaped_but_in_app_is_plain_text(tenant):
    content = {"en": {"subject": "{{ payload.html }}", "title": "{{ payload.html }}", "body": "{{ payload.html }}"}}
    _, email = make_template(tenant.environment, "mail", channel="email", content=content)
    _, in_app = make_template(tenant.environment, "inbox", channel="in_app", content=content)

    rendered_email = render_version(version=email, locale="en", context=CONTEXT, layout=False)
    rendered_in_app = render_version(version=in_app, locale="en", context=CONTEXT)

    assert rendered_email.body == "<p>&lt;b&gt;bold&lt;/b&gt;</p>"  # Markdown, no layout
    assert rendered_email.text == "<b>bold</b>"
    assert rendered_email.subject == "<b>bold</b>"  # a subject is plain text
    assert rendered_in_app.body == "<b>bold</b>"


def test_action_url_is_rendered(tenant):
    _, version = make_template(
        tenant.environment, action_url="https://app.example.com/posts/{{ payload.text|urlencode }}"
    )

    rendered = render_version(version=version, locale="en", context=CONTEXT)

    assert rendered.action_url == "https://app.example.com/posts/Nice%20post"


@pytest.mark.parametrize(
    "source",
    [
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "{{ payload.__class__.__init__.__globals__['os'] }}",
        "{{ cycler.__init__.__globals__.os.popen('id').read() }}",
        "{% set items = [] %}{{ items.append(1) }}",
        "{{ payload.update({'x': 1}) }}",
    ],
)
def test_sandbox_blocks_escapes_and_mutation(tenant, source):
    _, version = make_template(tenant.environment, content={"en": {"body": source}}, publish=False)

    with pytest.raises(SandboxError):
        render_version(version=version, locale="en", context=CONTEXT)


def test_sandbox_hides_dunder_attributes(tenant):
    _, version = make_template(
        tenant.environment, content={"en": {"body": "[{{ ''.__class__ }}|{{ payload.__dict__ }}]"}}, publish=False
    )

    rendered = render_version(version=version, locale="en", context=CONTEXT)

    assert rendered.body == "[|]"


def test_output_size_is_limited(tenant):
    source = "{% for i in range(9000) %}{{ 'x' * 100 }}{% endfor %}"
    _, version = make_template(tenant.environment, content={"en": {"body": source}}, publish=False)

    with pytest.raises(SandboxError, match="larger than"):
        render_version(version=version, locale="en", context=CONTEXT)
    assert 9000 * 100 > MAX_OUTPUT_CHARS


def test_huge_ranges_are_refused(tenant):
    _, version = make_template(
        tenant.environment, content={"en": {"body": "{% for i in range(10**7) %}x{% endfor %}"}}, publish=False
    )

    with pytest.raises(SandboxError, match="range"):
        render_version(version=version, locale="en", context=CONTEXT)


def test_strict_mode_fails_on_undefined_variables(tenant):
    _, version = make_template(tenant.environment, content={"en": {"body": "Hi {{ payload.missing }}"}})

    assert render_version(version=version, locale="en", context=CONTEXT).body == "Hi "
    with pytest.raises(SandboxError, match="missing"):
        render_version(version=version, locale="en", context=CONTEXT, strict=True)


def test_build_render_context_shape():
    subscriber = SubscriberFactory.build(first_name="Ada").as_context()

    context = build_render_context(payload={"a": 1}, subscriber=subscriber, actor={"first_name": "Bob"})

    assert context == {
        "payload": {"a": 1},
        "subscriber": subscriber,
        "actor": {"first_name": "Bob"},
        "step": {},
        "steps": {},
    }
    assert build_render_context(payload=None, subscriber=None, actor="user-9")["actor"] == {"subscriber_id": "user-9"}
    assert build_render_context(payload=None, subscriber=None, actor=None)["actor"] == {}
    assert build_render_context(payload={}, subscriber={}, actor=None, step={"id": "inbox"})["step"] == {"id": "inbox"}


def test_published_versions_for_keys_one_query(tenant, other_tenant, django_assert_num_queries):
    _, inbox_v1 = make_template(tenant.environment, "inbox")
    inbox_template = inbox_v1.template
    template_version_create(template=inbox_template, content={"en": {"body": "draft v2"}})  # not published
    layout_upsert(environment=tenant.environment, key="brand", footer={"en": "Footer"}, is_default=True)
    _, mail = make_template(tenant.environment, "mail", channel="email", content={"en": {"subject": "S", "body": "B"}})
    make_template(tenant.environment, "unpublished", publish=False)
    make_template(other_tenant.environment, "other")

    with django_assert_num_queries(1):
        found = published_versions_for_keys(
            environment=tenant.environment, keys=["inbox", "mail", "unpublished", "other", "missing"]
        )
        # rendering needs version.template.channel and the email's layout: no extra query
        channels = {key: version.template.channel for key, version in found.items()}
        rendered = {
            key: render_version(version=version, locale="fr", context=CONTEXT) for key, version in found.items()
        }

    assert "Footer" in rendered["mail"].body and rendered["mail"].layout == "brand"

    assert set(found) == {"inbox", "mail"}
    assert found["inbox"].pk == inbox_v1.pk
    assert found["mail"].pk == mail.pk
    assert channels == {"inbox": "in_app", "mail": "email"}


def test_published_versions_for_keys_accepts_environment_id_and_empty_keys(tenant, django_assert_num_queries):
    _, version = make_template(tenant.environment, "inbox")

    assert published_versions_for_keys(environment=tenant.environment.pk, keys=["inbox"])["inbox"].pk == version.pk
    with django_assert_num_queries(0):
        assert published_versions_for_keys(environment=tenant.environment, keys=[]) == {}


def test_a_layout_part_that_reads_nothing_is_rendered_once_and_one_that_reads_renders_per_email(tenant, monkeypatch):
    """The default layout's header and footer are plain text: rendered once per process, not per email;
    a footer that reads the subscriber still renders for each one."""
    from apps.templates import rendering

    layout_upsert(
        environment=tenant.environment,
        key="brand",
        header={"en": "<strong>Acme {{ '&' }} Co</strong>"},
        footer={"en": "Sent to {{ subscriber.first_name }}"},
        is_default=True,
    )
    _, mail = make_template(tenant.environment, "mail", channel="email", content={"en": {"subject": "S", "body": "B"}})
    calls: list[str] = []
    real = rendering.render_string
    monkeypatch.setattr(
        rendering, "render_string", lambda source, *a, **k: calls.append(source) or real(source, *a, **k)
    )
    rendering._constant_part.cache_clear()

    bodies = [
        render_version(version=mail, locale="en", context={**CONTEXT, "subscriber": {"first_name": name}}).body
        for name in ("Ada", "Bo", "Cy")
    ]

    assert all("Acme &amp; Co" in body for body in bodies)
    assert [name in body for name, body in zip(("Ada", "Bo", "Cy"), bodies, strict=True)] == [True] * 3
    assert calls.count("<strong>Acme {{ '&' }} Co</strong>") == 1
    assert calls.count("Sent to {{ subscriber.first_name }}") == 3


def test_a_memo_converts_the_same_markdown_body_once(tenant, monkeypatch):
    """One event's step renders each recipient with the same memo: a body that comes out the same is
    converted from Markdown (and to plain text) once; without a memo, every time."""
    from apps.templates import rendering

    _, mail = make_template(
        tenant.environment, "mail", channel="email", content={"en": {"subject": "S", "body": "**{{ payload.n }}**"}}
    )
    conversions: list[str] = []
    real = rendering.markdown_to_html
    monkeypatch.setattr(rendering, "markdown_to_html", lambda source: conversions.append(source) or real(source))
    context = {**CONTEXT, "payload": {"n": 7}}
    memo: dict[tuple[str, str], str] = {}

    first = render_version(version=mail, locale="en", context=context, memo=memo)
    second = render_version(version=mail, locale="en", context=context, memo=memo)
    render_version(version=mail, locale="en", context=context)

    assert first.body == second.body and "<strong>7</strong>" in first.body and first.text == second.text
    assert len(conversions) == 2
