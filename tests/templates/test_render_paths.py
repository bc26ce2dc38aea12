"""Every path that renders a template or evaluates a condition fails a hostile one cleanly: a 422 in
the error envelope (API), an error next to the field (admin editor), a failed step decision with
its reason (engine) — never a 500 or a stalled process — and each path stays within one render
limit, measured in deadline checks of a fake clock (1 ms per check, so 2 s is 2,000 checks)."""

from __future__ import annotations

from typing import Any

import pytest
from django.urls import reverse

from apps.core.errors import ApiError
from apps.core.sandbox import MAX_RENDER_SECONDS, SandboxError
from apps.events.services import TriggerRequest, event_trigger
from apps.templates.models import Template
from apps.templates.rendering import build_render_context, render_version
from apps.templates.services import build_version, layout_upsert, template_content_validate, template_upsert
from apps.workflows.models import Run, StepRun, WorkflowVersion
from apps.workflows.services import workflow_upsert
from tests.assertions import assert_error
from tests.factories import SubscriberFactory
from tests.templates.conftest import make_template
from tests.templates.limits import CountingClock

pytestmark = pytest.mark.django_db

BIGNUM = "{{ (((9**64)**64)**64) > 0 }}"  # the expression, one power shorter: cheap to run unbounded
NESTED = "{{ " + "(" * 500 + "1" + ")" * 500 + " }}"
BRACKETS = "{{ " + "[" * 3000 + "]" * 3000 + " }}"
IFS = "{% if 1 %}" * 2000 + "x" + "{% endif %}" * 2000
SLOW = "{% for i in range(10000) %}{% for j in range(10000) %}{% endfor %}{% endfor %}"
LIMIT_CHECKS = int(MAX_RENDER_SECONDS * 1000)


def one_limit(clock: CountingClock) -> bool:
    """The clock was read for about one render limit (not one per language or per attempt)."""
    return LIMIT_CHECKS <= clock.calls <= LIMIT_CHECKS + 100


# --- API ------------------------------------------------------------------------------------------


def test_api_preview_of_a_big_number_is_a_422(api, tenant):
    make_template(tenant.environment, "welcome")

    error = assert_error(
        api.post("/api/v1/templates/welcome/preview", {"content": {"en": {"body": BIGNUM}}}, format="json"),
        422,
        "template_render",
    )
    assert "4096 bits" in error["message"] and "4096 bits" in error["details"]["en.body"]


@pytest.mark.parametrize("source", [NESTED, BRACKETS, IFS], ids=["parentheses", "brackets", "ifs"])
def test_api_deep_nesting_is_a_422_not_a_500(api, tenant, source):
    make_template(tenant.environment, "welcome")

    preview = assert_error(
        api.post("/api/v1/templates/welcome/preview", {"content": {"en": {"body": source}}}, format="json"),
        422,
        "template_syntax",
    )
    assert "nest more than" in preview["details"]["en.body"]
    saved = assert_error(
        api.put("/api/v1/templates/welcome", {"content": {"en": {"body": source}}}, format="json"),
        422,
        "template_syntax",
    )
    assert "nest more than" in saved["details"]["en.body"]
    layout = assert_error(
        api.put("/api/v1/layouts/brand", {"footer": {"en": source}}, format="json"), 422, "template_syntax"
    )
    assert "nest more than" in layout["details"]["en.footer"]


def test_api_preview_of_a_slow_template_stops_at_the_limit(api, tenant, counting_clock):
    make_template(tenant.environment, "welcome")

    error = assert_error(
        api.post("/api/v1/templates/welcome/preview", {"content": {"en": {"body": SLOW}}}, format="json"),
        422,
        "template_render",
    )
    assert "longer than 2 seconds" in error["details"]["en.body"]
    assert one_limit(counting_clock)


def test_api_publish_validation_shares_one_limit_across_languages(api, tenant, counting_clock):
    content = {language: {"title": "Hi", "body": SLOW} for language in ("en", "fr", "de")}

    error = assert_error(
        api.put("/api/v1/templates/slow", {"channel": "in_app", "content": content, "publish": True}, format="json"),
        422,
        "template_render",
    )
    assert "longer than 2 seconds" in str(error["details"])
    assert one_limit(counting_clock)


def test_api_publish_of_a_big_number_is_a_422(api, tenant):
    content = {"en": {"title": "Hi", "body": BIGNUM}}
    error = assert_error(
        api.put("/api/v1/templates/big", {"channel": "in_app", "content": content, "publish": True}, format="json"),
        422,
        "template_render",
    )
    assert "bits" in error["details"]["en.body"]


def test_a_stored_version_that_nests_too_deeply_previews_as_a_422(api, tenant):
    """Versions saved before the nesting limit existed still preview cleanly."""
    _template, version = make_template(tenant.environment, "old")
    type(version).objects.filter(pk=version.pk).update(body_en=NESTED)

    error = assert_error(api.post("/api/v1/templates/old/preview", {}, format="json"), 422, "template_render")
    assert "nest more than" in error["details"]["en.body"]


# --- admin editor ---------------------------------------------------------------------------------


def editor_form(**fields: str) -> dict[str, str]:
    data = {"sample_payload": "{}", "note": "", "_action": "save"}
    for language in ("en", "fr", "de"):
        for name in ("subject", "title", "body", "preheader", "primary_action_label", "secondary_action_label"):
            data[f"{name}_{language}"] = ""
    for name in ("action_url", "primary_action_url", "secondary_action_url"):
        data[name] = ""
    data.update(fields)
    return data


@pytest.fixture
def in_app(tenant: Any) -> Any:
    template, _ = make_template(tenant.environment, "comment")
    return template


@pytest.mark.parametrize("source", [NESTED, BRACKETS, IFS, BIGNUM], ids=["parentheses", "brackets", "ifs", "bignum"])
def test_admin_preview_shows_the_error_next_to_the_field(admin_client, in_app, source):
    url = reverse("admin:notification_templates_template_preview", args=[in_app.pk])

    response = admin_client.post(url, editor_form(title_en="Hi", body_en=source))

    assert response.status_code == 200  # the editor's JSON: {"ok": false, "errors": {field: message}}
    body = response.json()
    assert body["ok"] is False
    assert "nest more than" in body["errors"]["en.body"] or "4096 bits" in body["errors"]["en.body"]


@pytest.mark.parametrize("source", [NESTED, IFS, BIGNUM], ids=["parentheses", "ifs", "bignum"])
def test_admin_save_shows_the_error_inline_and_saves_nothing(admin_client, in_app, source):
    url = reverse("admin:notification_templates_template_change", args=[in_app.pk])

    response = admin_client.post(url, editor_form(title_en="Hi", body_en=source))

    assert response.status_code == 200
    page = response.content.decode()
    assert 'data-error-for="en.body"' in page
    assert "nest more than" in page or "4096 bits" in page
    assert in_app.versions.count() == 1


def test_admin_preview_strict_and_lenient_attempts_share_one_limit(admin_client, in_app, counting_clock):
    url = reverse("admin:notification_templates_template_preview", args=[in_app.pk])

    body = admin_client.post(url, editor_form(title_en="Hi", body_en=SLOW)).json()

    assert body["ok"] is False and "longer than 2 seconds" in body["errors"]["en.body"]
    assert one_limit(counting_clock)


def test_admin_layout_with_deep_nesting_is_a_form_error(admin_client, tenant):
    url = reverse("admin:notification_templates_emaillayout_add")
    response = admin_client.post(
        url,
        {
            "environment": tenant.environment.pk,
            "key": "deep",
            "name": "Deep",
            "header_en": NESTED,
            "footer_en": "",
            "brand_color": "#123456",
            "logo_url": "",
            "css": "",
            "_save": "Save",
        },
    )
    assert response.status_code == 200
    assert "nest more than" in response.content.decode()


# --- engine ---------------------------------------------------------------------------------------


def trigger(tenant: Any, capture: Any, workflow: str) -> Run:
    SubscriberFactory(environment=tenant.environment, subscriber_id="u1")
    with capture(execute=True):
        event = event_trigger(
            environment=tenant.environment, request=TriggerRequest(workflow=workflow, to=["u1"], payload={"n": 9})
        )
    return Run.objects.get(event=event)


def failed_step(run: Run) -> StepRun:
    return run.step_runs.get(decision=StepRun.Decision.FAILED)


@pytest.mark.parametrize(
    "condition",
    ["(((payload.n ** 64) ** 64) ** 64) > 0", "range(10000)|map('string')|join|length * 10 ** 5000 > 0"],
    ids=["bignum", "bignum-after-work"],
)
def test_engine_condition_with_a_big_number_fails_the_step_with_its_reason(
    tenant, django_capture_on_commit_callbacks, condition
):
    make_template(tenant.environment, "note")
    workflow_upsert(
        environment=tenant.environment,
        key="guarded",
        name="Guarded",
        steps=[{"id": "inbox", "type": "in_app", "template": "note", "if": condition}],
        publish=True,
    )

    run = trigger(tenant, django_capture_on_commit_callbacks, "guarded")

    assert run.status == Run.Status.FAILED
    step = failed_step(run)
    assert (step.step_id, step.reason) == ("inbox", "condition_error")
    assert "4096 bits" in step.detail["error"]


def test_engine_condition_that_nests_too_deeply_fails_the_step(tenant, django_capture_on_commit_callbacks):
    """Definitions refuse such a condition now; one stored before still fails cleanly."""
    make_template(tenant.environment, "note")
    nested = "(" * 500 + "1" + ")" * 500
    with pytest.raises(ApiError) as refused:
        workflow_upsert(
            environment=tenant.environment,
            key="deep",
            steps=[{"id": "inbox", "type": "in_app", "template": "note", "if": nested}],
            publish=True,
        )
    assert "nest more than" in str(refused.value.details)
    workflow, _ = workflow_upsert(
        environment=tenant.environment,
        key="deep",
        steps=[{"id": "inbox", "type": "in_app", "template": "note", "if": "true"}],
        publish=True,
    )
    WorkflowVersion.objects.filter(workflow=workflow).update(
        steps=[{"id": "inbox", "type": "in_app", "template": "note", "if": nested}]
    )

    run = trigger(tenant, django_capture_on_commit_callbacks, "deep")

    step = failed_step(run)
    assert (step.step_id, step.reason) == ("inbox", "condition_error")
    assert "nest more than" in step.detail["error"]


def test_engine_slow_condition_stops_at_one_limit(tenant, django_capture_on_commit_callbacks, counting_clock):
    make_template(tenant.environment, "note")
    workflow_upsert(
        environment=tenant.environment,
        key="slow",
        steps=[{"id": "inbox", "type": "in_app", "template": "note", "if": "range(10000)|map('string')|list|length"}],
        publish=True,
    )
    counting_clock.step = 0.01  # 10 ms per check: the condition's 2 s is about 200 checks

    run = trigger(tenant, django_capture_on_commit_callbacks, "slow")

    step = failed_step(run)
    assert step.reason == "condition_error" and "longer than 2 seconds" in step.detail["error"]


def test_engine_template_with_a_big_number_fails_the_channel_step(tenant, django_capture_on_commit_callbacks):
    template, version = make_template(
        tenant.environment, "note", content={"en": {"title": "Hi", "body": "{{ payload.n ** 9999 }}"}}, publish=False
    )
    Template.objects.filter(pk=template.pk).update(published_version=version)  # as if published before the limits
    workflow_upsert(
        environment=tenant.environment,
        key="render",
        steps=[{"id": "inbox", "type": "in_app", "template": "note"}],
        publish=True,
    )

    run = trigger(tenant, django_capture_on_commit_callbacks, "render")

    step = failed_step(run)
    assert (step.step_id, step.reason) == ("inbox", "render_error")
    assert "4096 bits" in step.detail["error"]


# --- digest rendering -----------------------------------------------------------------------------


def digest_context(events: int) -> dict[str, Any]:
    return build_render_context(
        payload={"post": "p1"},
        subscriber={"first_name": "Ada"},
        actor=None,
        digest={
            "count": events,
            "key": "p1",
            "events": [{"payload": {"n": i, "comment": f"c{i}"}, "actor": {}} for i in range(events)],
        },
    )


def digest_version(tenant: Any, body: str) -> Any:
    template, _ = template_upsert(environment=tenant.environment, key="digest", channel="in_app")
    content = template_content_validate(channel="in_app", content={"en": {"title": "Digest", "body": body}})
    return build_version(template=template, content=content)


@pytest.mark.parametrize(
    "body",
    [
        "{% set ns = namespace(x=1) %}{% for e in digest.events %}{% set ns.x = ns.x * (e.payload.n + 2) ** 64 %}"
        "{% endfor %}{{ ns.x > 0 }}",
        "{% set all = digest.events * 10000 %}{{ all|length }}",
        "{% for e in digest.events %}{{ e.payload.comment * 10 ** 9 }}{% endfor %}",
    ],
    ids=["product", "repeat-events", "repeat-text"],
)
def test_digest_rendering_refuses_what_would_explode(tenant, body):
    version = digest_version(tenant, body)

    with pytest.raises(SandboxError):
        render_version(version=version, locale="en", context=digest_context(200))


def test_digest_rendering_stops_at_one_limit(tenant, counting_clock):
    version = digest_version(
        tenant, "{% for e in digest.events %}{% for f in digest.events %}{{ e.payload.n }}{% endfor %}{% endfor %}"
    )

    with pytest.raises(SandboxError, match="longer than 2 seconds"):
        render_version(version=version, locale="en", context=digest_context(5000))
    assert one_limit(counting_clock)


def test_ordinary_digests_still_render(tenant):
    version = digest_version(
        tenant, "{{ digest.count }}: {{ digest.events|map(attribute='payload.comment')|join(', ') }}"
    )

    rendered = render_version(version=version, locale="en", context=digest_context(3))

    assert rendered.body == "3: c0, c1, c2"


# --- email: Markdown and CSS inlining -------------------------------------------------------------


def email_version(tenant: Any, body: str, *, body_format: str = "markdown", css: str = "") -> Any:
    layout, _ = layout_upsert(environment=tenant.environment, key="brand", footer={"en": "Acme"}, css=css)
    template, _ = template_upsert(environment=tenant.environment, key="mail", channel="email")
    content = template_content_validate(channel="email", content={"en": {"subject": "Hi", "body": body}})
    return build_version(template=template, content=content, body_format=body_format, layout=layout)


EMAIL_CONTEXT = build_render_context(payload={"text": "[" * 3000}, subscriber={"first_name": "Ada"}, actor=None)


def test_markdown_that_python_markdown_is_slow_on_stops_at_the_limit(tenant, counting_clock):
    """3,000 "[" in a payload take Python-Markdown seconds; the conversion checks the deadline."""
    version = email_version(tenant, "Comment: {{ payload.text }}")

    with pytest.raises(SandboxError, match="longer than 2 seconds") as failed:
        render_version(version=version, locale="en", context=EMAIL_CONTEXT)
    assert "Markdown" in failed.value.errors["body"]
    assert one_limit(counting_clock)


def test_html_nested_deeper_than_the_inliner_survives_is_refused(tenant):
    """css-inline crashes the process (SIGSEGV) on some 20,000 nested elements."""
    version = email_version(tenant, "{{ ('<div>' * 20000)|safe }}x", body_format="html")

    with pytest.raises(SandboxError, match="nests more than 200 elements deep"):
        render_version(version=version, locale="en", context=EMAIL_CONTEXT)


def test_css_that_would_take_seconds_to_inline_is_refused(tenant):
    css = "".join(f"* * * * * * * * span.c{i} {{ color: red }}\n" for i in range(1200))
    version = email_version(tenant, "{% for i in range(2000) %}<span>x</span>{% endfor %}", body_format="html", css=css)

    with pytest.raises(SandboxError, match="too much CSS to inline") as failed:
        render_version(version=version, locale="en", context=EMAIL_CONTEXT)
    assert set(failed.value.errors) == {"layout.css"}


def test_ordinary_email_still_renders_markdown_into_the_layout(tenant):
    version = email_version(tenant, "Hi **{{ subscriber.first_name }}**\n\n| a | b |\n|---|---|\n| 1 | 2 |")

    rendered = render_version(version=version, locale="en", context=EMAIL_CONTEXT)

    assert "<strong>Ada</strong>" in rendered.body and "<td" in rendered.body and "Acme" in rendered.body
