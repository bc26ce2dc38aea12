from __future__ import annotations

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import include, path
from drf_spectacular.generators import SchemaGenerator

from apps.templates.models import Template, TemplateVersion
from apps.templates.services import template_version_create
from apps.workflows.services import workflow_upsert
from tests.assertions import assert_error
from tests.factories import SubscriberFactory
from tests.templates.conftest import make_template

EMAIL = {
    "name": "Welcome",
    "channel": "email",
    "description": "Sent on signup",
    "content": {
        "en": {"subject": "Welcome {{ subscriber.first_name }}", "body": "<p>Hi {{ payload.plan }}</p>"},
        "fr": {"subject": "Bienvenue {{ subscriber.first_name }}", "body": "<p>Salut {{ payload.plan }}</p>"},
    },
    "action_url": "https://app.test/{{ payload.plan }}",
}


# --- PUT ----------------------------------------------------------------------------------------


def test_put_creates_template_and_first_version(api, tenant):
    response = api.put("/api/v1/templates/welcome", {**EMAIL, "publish": True}, format="json")

    assert response.status_code == 201, response.content
    body = response.json()
    assert body["key"] == "welcome"
    assert (body["name"], body["channel"], body["description"]) == ("Welcome", "email", "Sent on signup")
    assert body["latest_version"] == 1
    assert body["published_version"] == 1
    assert body["version"]["number"] == 1
    assert body["version"]["is_published"] is True
    assert body["version"]["content"]["fr"]["subject"] == "Bienvenue {{ subscriber.first_name }}"
    assert set(body["version"]["content"]["de"].values()) == {""}
    assert set(body["version"]["content"]["de"]) == {
        "subject",
        "title",
        "body",
        "preheader",
        "primary_action_label",
        "secondary_action_label",
    }
    assert body["published"]["action_url"] == "https://app.test/{{ payload.plan }}"
    template = Template.objects.get(environment=tenant.environment, key="welcome")
    assert template.published_version.number == 1


def test_put_is_idempotent_and_new_content_makes_a_new_version(api):
    assert api.put("/api/v1/templates/welcome", EMAIL, format="json").status_code == 201

    same = api.put("/api/v1/templates/welcome", EMAIL, format="json")
    assert same.status_code == 200
    assert same.json()["version"]["number"] == 1
    assert same.json()["published_version"] is None  # never published

    changed = {**EMAIL, "content": {"en": {"subject": "Hey", "body": "New body"}}}
    response = api.put("/api/v1/templates/welcome", changed, format="json")
    assert response.status_code == 200
    assert response.json()["version"]["number"] == 2
    assert response.json()["latest_version"] == 2
    assert TemplateVersion.objects.filter(template__key="welcome").count() == 2


def test_put_without_content_updates_metadata_only(api):
    api.put("/api/v1/templates/welcome", EMAIL, format="json")

    response = api.put("/api/v1/templates/welcome", {"name": "Renamed"}, format="json")

    assert response.status_code == 200
    body = response.json()
    assert (body["name"], body["channel"], body["description"]) == ("Renamed", "email", "Sent on signup")
    assert body["version"] is None
    assert body["latest_version"] == 1


def test_put_publish_flag_alone_publishes_latest(api):
    api.put("/api/v1/templates/welcome", EMAIL, format="json")

    response = api.put("/api/v1/templates/welcome", {"publish": True}, format="json")

    assert response.status_code == 200
    assert response.json()["published_version"] == 1


def test_put_syntax_error_is_422_with_field_details_and_stores_nothing(api):
    content = {"en": {"subject": "ok", "body": "ok"}, "fr": {"subject": "ok", "body": "line one\n{{ payload.x "}}

    response = api.put("/api/v1/templates/welcome", {**EMAIL, "content": content}, format="json")

    error = assert_error(response, 422, "template_syntax")
    assert list(error["details"]) == ["fr.body"]
    assert error["details"]["fr.body"].startswith("line 2:")
    assert not Template.objects.filter(key="welcome").exists()


def test_put_missing_required_field_is_422(api):
    response = api.put("/api/v1/templates/welcome", {**EMAIL, "content": {"en": {"body": "no subject"}}}, format="json")

    error = assert_error(response, 422, "template_incomplete")
    assert "en.subject" in error["details"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"channel": "pigeon"}, "channel"),
        ({"channel": "email", "content": {"en": "text"}}, "content"),
        ({"channel": "email", "content": {"en": {"body": ["x"]}}}, "content"),
        ({"channel": "email", "publish": "maybe"}, "publish"),
        ({"channel": "email", "name": "x" * 201}, "name"),
    ],
)
def test_put_bad_input_is_400(api, body, field):
    error = assert_error(api.put("/api/v1/templates/welcome", body, format="json"), 400, "validation_error")
    assert field in error["details"]


def test_put_rejects_a_non_object_body_and_bad_keys(api):
    assert_error(api.put("/api/v1/templates/welcome", [1, 2], format="json"), 400, "validation_error")
    error = assert_error(api.put("/api/v1/templates/not%20a%20slug", EMAIL, format="json"), 400, "validation_error")
    assert "key" in error["details"]
    response = api.put("/api/v1/templates/welcome", b"{nope", content_type="application/json")
    assert_error(response, 400, "malformed_json")


def test_put_unknown_language_is_422(api):
    content = {"en": {"subject": "s", "body": "b"}, "klingon": {"body": "b"}}
    error = assert_error(
        api.put("/api/v1/templates/welcome", {**EMAIL, "content": content}, format="json"), 422, "invalid_content"
    )
    assert "klingon" in error["details"]


def test_put_new_template_without_channel_is_422(api):
    assert_error(api.put("/api/v1/templates/welcome", {"name": "x"}, format="json"), 422, "channel_required")


def test_put_channel_change_after_versions_is_409(api):
    api.put("/api/v1/templates/welcome", EMAIL, format="json")

    response = api.put("/api/v1/templates/welcome", {"channel": "sms"}, format="json")

    assert_error(response, 409, "template_channel_locked")
    assert Template.objects.get(key="welcome").channel == "email"


def test_put_with_another_environments_key_never_touches_ours(tenant, other_tenant):
    template, _ = make_template(tenant.environment, "welcome")

    response = other_tenant.client.put("/api/v1/templates/welcome", {**EMAIL, "name": "Theirs"}, format="json")

    assert response.status_code == 201  # theirs is a new, separate template
    template.refresh_from_db()
    assert (template.name, template.channel) == ("Welcome", "in_app")
    assert template.versions.count() == 1


# --- GET / list -----------------------------------------------------------------------------------


def test_get_returns_template_with_published_content_and_latest_number(api, tenant):
    template, _ = make_template(tenant.environment, "welcome")
    template_version_create(template=template, content={"en": {"body": "draft"}})

    response = api.get("/api/v1/templates/welcome")

    assert response.status_code == 200
    body = response.json()
    assert body["published_version"] == 1
    assert body["latest_version"] == 2
    assert body["published"]["number"] == 1
    assert body["published"]["is_published"] is True
    assert body["published"]["content"]["en"]["title"] == "Hi {{ subscriber.first_name }}"
    assert body["published"]["content"]["fr"]["title"] == "Salut {{ subscriber.first_name }}"
    assert "version" not in body


def test_get_is_one_template_query(api, tenant, admin_user):
    template, _ = make_template(tenant.environment, "welcome", publish=False)
    template_version_create(template=template, content={"en": {"body": "b"}}, created_by=admin_user, publish=True)

    with CaptureQueriesContext(connection) as captured:
        body = api.get("/api/v1/templates/welcome").json()

    assert body["published"]["created_by"] == admin_user.username
    assert body["published"]["is_published"] is True
    assert len(_template_queries(captured)) == 1


def test_get_unpublished_template_has_null_published(api, tenant):
    make_template(tenant.environment, "welcome", publish=False)

    body = api.get("/api/v1/templates/welcome").json()

    assert body["published"] is None
    assert body["published_version"] is None
    assert body["latest_version"] == 1


def test_list_templates_filter_paginate_and_isolate(api, tenant, other_tenant):
    make_template(tenant.environment, "a")
    make_template(tenant.environment, "b", channel="sms", content={"en": {"body": "x"}})
    make_template(tenant.environment, "c", publish=False)
    make_template(other_tenant.environment, "theirs")

    body = api.get("/api/v1/templates").json()
    assert [t["key"] for t in body["data"]] == ["c", "b", "a"]
    assert set(body) == {"data", "next", "previous", "next_cursor"}
    assert body["data"][2]["published_version"] == 1
    assert body["data"][0]["published_version"] is None

    sms = api.get("/api/v1/templates", {"channel": "sms"}).json()
    assert [t["key"] for t in sms["data"]] == ["b"]

    first = api.get("/api/v1/templates", {"limit": 2}).json()
    assert [t["key"] for t in first["data"]] == ["c", "b"]
    second = api.get("/api/v1/templates", {"limit": 2, "cursor": first["next_cursor"]}).json()
    assert [t["key"] for t in second["data"]] == ["a"]


def test_list_bad_channel_is_400(api):
    assert_error(api.get("/api/v1/templates", {"channel": "pigeon"}), 400, "validation_error")


def _template_queries(captured):
    return [q["sql"] for q in captured.captured_queries if "notification_templates_" in q["sql"]]


def test_list_query_count_does_not_grow_with_templates(api, tenant, django_assert_max_num_queries):
    for i in range(3):
        make_template(tenant.environment, f"t{i}")
    with CaptureQueriesContext(connection) as small:
        api.get("/api/v1/templates")
    for i in range(3, 20):
        template, _ = make_template(tenant.environment, f"t{i}")
        template_version_create(template=template, content={"en": {"body": "v2"}})

    with django_assert_max_num_queries(len(small.captured_queries)) as large:
        response = api.get("/api/v1/templates")

    assert len(response.json()["data"]) == 20
    assert len(_template_queries(large)) == 1  # one query for the page, whatever its size
    assert len(small.captured_queries) <= 3  # plus authentication


# --- versions ---------------------------------------------------------------------------------


def test_versions_list_newest_first_with_content(api, tenant):
    template, _ = make_template(tenant.environment, "welcome")
    for n in range(2, 6):
        template_version_create(template=template, content={"en": {"body": f"v{n}"}})

    with CaptureQueriesContext(connection) as captured:
        response = api.get("/api/v1/templates/welcome/versions", {"limit": 3})

    assert len(_template_queries(captured)) == 2  # the template, then the page (versions + creators)

    body = response.json()
    assert [v["number"] for v in body["data"]] == [5, 4, 3]
    assert body["data"][0]["content"]["en"]["body"] == "v5"
    assert [v["is_published"] for v in body["data"]] == [False, False, False]
    rest = api.get("/api/v1/templates/welcome/versions", {"limit": 3, "cursor": body["next_cursor"]}).json()
    assert [v["number"] for v in rest["data"]] == [2, 1]
    assert rest["data"][1]["is_published"] is True


def test_version_detail_and_missing_number(api, tenant):
    template, _ = make_template(tenant.environment, "welcome")
    template_version_create(template=template, content={"en": {"body": "second"}}, note="typo fix")

    body = api.get("/api/v1/templates/welcome/versions/2").json()
    assert (body["number"], body["note"], body["created_by"]) == (2, "typo fix", None)
    assert body["content"]["en"]["body"] == "second"

    assert_error(api.get("/api/v1/templates/welcome/versions/7"), 404, "version_not_found")
    assert_error(api.get("/api/v1/templates/missing/versions/1"), 404, "template_not_found")


# --- publish ----------------------------------------------------------------------------------


def test_publish_latest_or_given_version(api, tenant):
    template, _ = make_template(tenant.environment, "welcome", publish=False)
    template_version_create(template=template, content={"en": {"body": "two"}})

    latest = api.post("/api/v1/templates/welcome/publish", {}, format="json")
    assert latest.status_code == 200
    assert latest.json()["published_version"] == 2

    older = api.post("/api/v1/templates/welcome/publish", {"version": 1}, format="json")
    assert older.json()["published_version"] == 1
    assert older.json()["published"]["content"]["en"]["body"] == "{{ payload.text }}"
    template.refresh_from_db()
    assert template.published_version.number == 1


def test_publish_errors(api, tenant):
    make_template(tenant.environment, "welcome")
    api.put("/api/v1/templates/empty", {"channel": "sms"}, format="json")

    assert_error(api.post("/api/v1/templates/welcome/publish", {"version": 5}, format="json"), 404, "version_not_found")
    assert_error(api.post("/api/v1/templates/welcome/publish", {"version": 0}, format="json"), 400, "validation_error")
    assert_error(api.post("/api/v1/templates/empty/publish", {}, format="json"), 422, "template_no_versions")


# --- preview ----------------------------------------------------------------------------------


def test_preview_renders_latest_version_even_unpublished(api, tenant):
    template, _ = make_template(tenant.environment, "welcome")
    template_version_create(
        template=template,
        content={"en": {"title": "Draft for {{ subscriber.first_name }}", "body": "{{ actor.first_name }} says hi"}},
        action_url="/posts/{{ payload.id }}",
    )

    response = api.post(
        "/api/v1/templates/welcome/preview",
        {"payload": {"id": 7}, "subscriber": {"first_name": "Ada"}, "actor": {"first_name": "Bob"}},
        format="json",
    )

    assert response.status_code == 200, response.content
    assert response.json() == {
        "version": 2,
        "locale": "en",
        "subject": "",
        "title": "Draft for Ada",
        "body": "Bob says hi",
        "action_url": "/posts/7",
        "fallbacks": {},
        "text": "",
        "preheader": "",
        "actions": [],
        "layout": "",
        "sms": {},
    }


def test_preview_given_version_and_locale_with_fallbacks(api, tenant):
    template, _ = make_template(tenant.environment, "welcome")
    template_version_create(template=template, content={"en": {"body": "v2"}})

    body = api.post(
        "/api/v1/templates/welcome/preview",
        {"version": 1, "locale": "fr-CA", "payload": {"text": "Super"}, "subscriber": {"first_name": "Zoé"}},
        format="json",
    ).json()

    assert body["version"] == 1
    assert body["locale"] == "fr"
    assert body["title"] == "Salut Zoé"
    assert body["body"] == "Super"
    assert body["fallbacks"] == {"body": "en"}


def test_preview_as_stored_subscriber_uses_their_data_and_locale(api, tenant, other_tenant):
    make_template(tenant.environment, "welcome")
    SubscriberFactory(environment=tenant.environment, subscriber_id="u1", first_name="Marie", locale="fr")
    SubscriberFactory(environment=other_tenant.environment, subscriber_id="u2", first_name="Spy")

    body = api.post("/api/v1/templates/welcome/preview", {"subscriber_id": "u1"}, format="json").json()
    assert (body["locale"], body["title"]) == ("fr", "Salut Marie")

    assert_error(
        api.post("/api/v1/templates/welcome/preview", {"subscriber_id": "u2"}, format="json"),
        404,
        "subscriber_not_found",
    )


def test_preview_render_errors_are_422(api, tenant):
    make_template(tenant.environment, "boom", content={"en": {"body": "{{ 1 / payload.zero }}"}}, publish=False)
    make_template(
        tenant.environment,
        "escape",
        content={"en": {"body": "{{ ''.__class__.__mro__[1].__subclasses__() }}"}},
        publish=False,
    )
    make_template(tenant.environment, "strict", content={"en": {"body": "{{ payload.missing }}"}})

    boom = assert_error(
        api.post("/api/v1/templates/boom/preview", {"payload": {"zero": 0}}, format="json"), 422, "template_render"
    )
    assert "division" in boom["message"]
    assert_error(api.post("/api/v1/templates/escape/preview", {}, format="json"), 422, "template_render")
    lenient = api.post("/api/v1/templates/strict/preview", {}, format="json")
    assert lenient.status_code == 200
    strict = assert_error(
        api.post("/api/v1/templates/strict/preview", {"strict": True}, format="json"), 422, "template_render"
    )
    assert "missing" in strict["message"]


def test_preview_bad_input(api, tenant):
    make_template(tenant.environment, "welcome")
    api.put("/api/v1/templates/empty", {"channel": "sms"}, format="json")

    error = assert_error(
        api.post("/api/v1/templates/welcome/preview", {"subscriber": {}, "subscriber_id": "u1"}, format="json"),
        400,
        "validation_error",
    )
    assert "subscriber" in error["details"]
    assert_error(
        api.post("/api/v1/templates/welcome/preview", {"payload": [1]}, format="json"), 400, "validation_error"
    )
    assert_error(api.post("/api/v1/templates/welcome/preview", {"version": 9}, format="json"), 404, "version_not_found")
    assert_error(api.post("/api/v1/templates/empty/preview", {}, format="json"), 404, "version_not_found")


# --- delete -----------------------------------------------------------------------------------


def test_delete_then_gone(api, tenant):
    make_template(tenant.environment, "welcome")

    assert api.delete("/api/v1/templates/welcome").status_code == 204

    assert_error(api.get("/api/v1/templates/welcome"), 404, "template_not_found")
    assert not TemplateVersion.objects.exists()


def test_delete_used_by_workflow_is_409(api, tenant):
    make_template(tenant.environment, "welcome")
    workflow_upsert(
        environment=tenant.environment,
        key="signup",
        name="Signup",
        steps=[{"id": "m", "type": "in_app", "template": "welcome"}],
        publish=True,
    )

    error = assert_error(api.delete("/api/v1/templates/welcome"), 409, "template_in_use")

    assert error["details"] == {"workflows": ["signup"]}
    assert Template.objects.filter(key="welcome").exists()


# --- isolation and auth -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "url", "data"),
    [
        ("get", "/api/v1/templates/welcome", None),
        ("delete", "/api/v1/templates/welcome", None),
        ("get", "/api/v1/templates/welcome/versions", None),
        ("get", "/api/v1/templates/welcome/versions/1", None),
        ("post", "/api/v1/templates/welcome/publish", {"version": 1}),
        ("post", "/api/v1/templates/welcome/preview", {}),
    ],
)
def test_other_environment_gets_404_and_changes_nothing(tenant, other_tenant, method, url, data):
    template, v1 = make_template(tenant.environment, "welcome", publish=False)

    response = getattr(other_tenant.client, method)(url, data, format="json")

    assert_error(response, 404, "template_not_found")
    template.refresh_from_db()
    assert template.published_version_id is None
    assert TemplateVersion.objects.filter(pk=v1.pk).exists()


def test_other_environment_list_is_empty(tenant, other_tenant):
    make_template(tenant.environment, "welcome")

    assert other_tenant.client.get("/api/v1/templates").json()["data"] == []


@pytest.mark.parametrize(
    ("method", "url"),
    [
        ("get", "/api/v1/templates"),
        ("get", "/api/v1/templates/welcome"),
        ("put", "/api/v1/templates/welcome"),
        ("delete", "/api/v1/templates/welcome"),
        ("get", "/api/v1/templates/welcome/versions"),
        ("get", "/api/v1/templates/welcome/versions/1"),
        ("post", "/api/v1/templates/welcome/publish"),
        ("post", "/api/v1/templates/welcome/preview"),
    ],
)
def test_endpoints_need_a_secret_key(anon_api, tenant, method, url):
    make_template(tenant.environment, "welcome")

    response = getattr(anon_api, method)(url, {}, format="json")

    assert response.status_code == 401
    assert response.json()["error"]["code"] == "not_authenticated"

    anon_api.credentials(HTTP_AUTHORIZATION=f"Bearer {tenant.publishable_key}")
    assert getattr(anon_api, method)(url, {}, format="json").status_code == 401


def test_openapi_schema_documents_every_template_operation():
    generator = SchemaGenerator(patterns=[path("api/v1/", include("apps.templates.urls"))])

    schema = generator.get_schema(request=None, public=True)

    operations = {
        (url, method)
        for url, item in schema["paths"].items()
        for method in item
        if method in {"get", "put", "post", "delete"}
    }
    assert operations == {
        ("/api/v1/templates", "get"),
        ("/api/v1/templates/{key}", "get"),
        ("/api/v1/templates/{key}", "put"),
        ("/api/v1/templates/{key}", "delete"),
        ("/api/v1/templates/{key}/versions", "get"),
        ("/api/v1/templates/{key}/versions/{number}", "get"),
        ("/api/v1/templates/{key}/publish", "post"),
        ("/api/v1/templates/{key}/preview", "post"),
        ("/api/v1/templates/{key}/rollback", "post"),
        ("/api/v1/templates/{key}/versions/diff", "get"),
        ("/api/v1/templates/{key}/variables", "get"),
        ("/api/v1/templates/{key}/test", "post"),
        ("/api/v1/layouts", "get"),
        ("/api/v1/layouts/{key}", "get"),
        ("/api/v1/layouts/{key}", "put"),
        ("/api/v1/layouts/{key}", "delete"),
        ("/api/v1/layouts/{key}/preview", "post"),
    }
    put = schema["paths"]["/api/v1/templates/{key}"]["put"]
    assert "requestBody" in put
    assert set(put["responses"]) >= {"200", "201", "400", "409", "422"}
    preview = schema["paths"]["/api/v1/templates/{key}/preview"]["post"]
    assert "requestBody" in preview
    assert "PreviewResponse" in str(preview["responses"]["200"])
