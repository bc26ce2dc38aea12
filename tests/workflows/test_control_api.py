"""Payload schemas, the per-subscriber "why" API and frequency caps over REST."""

from __future__ import annotations

import pytest

from tests.assertions import assert_error
from tests.factories import CategoryFactory, SubscriberFactory
from tests.workflows.conftest import published_template

pytestmark = pytest.mark.django_db

TRIGGER = "/api/v1/events/trigger"
SCHEMA = {
    "type": "object",
    "required": ["post_title", "author"],
    "properties": {
        "post_title": {"type": "string", "minLength": 1},
        "author": {"type": "object", "required": ["name"], "properties": {"name": {"type": "string"}}},
        "tags": {"type": "array", "items": {"type": "string"}},
    },
}


@pytest.fixture
def flow(api, tenant):
    published_template(tenant.environment, "ping", "in_app", title_en="{{ payload.post_title }}", body_en="")
    published_template(tenant.environment, "ping-mail", "email", subject_en="Ping", body_en="x")
    response = api.put(
        "/api/v1/workflows/ping",
        {
            "name": "Ping",
            "payload_schema": SCHEMA,
            "steps": [
                {"id": "inbox", "type": "in_app", "template": "ping"},
                {"id": "mail", "type": "email", "template": "ping-mail"},
            ],
            "publish": True,
        },
        format="json",
    )
    assert response.status_code in (200, 201), response.content


def test_payload_is_checked_against_the_workflows_schema(api, flow, django_capture_on_commit_callbacks):
    bad = api.post(
        TRIGGER,
        {"workflow": "ping", "to": ["u1"], "payload": {"post_title": "", "author": {}, "tags": ["a", 2]}},
        format="json",
    )
    body = assert_error(bad, 422, "invalid_payload")
    assert body["details"] == {
        "payload.author.name": "is required",
        "payload.post_title": "'' should be non-empty",
        "payload.tags[1]": "2 is not of type 'string'",
    }
    missing = api.post(TRIGGER, {"workflow": "ping", "to": ["u1"], "payload": {}}, format="json")
    assert assert_error(missing, 422, "invalid_payload")["details"] == {
        "payload.author": "is required",
        "payload.post_title": "is required",
    }
    with django_capture_on_commit_callbacks(execute=True):
        ok = api.post(
            TRIGGER,
            {"workflow": "ping", "to": ["u1"], "payload": {"post_title": "Hi", "author": {"name": "Ada"}}},
            format="json",
        )
    assert ok.status_code == 202


def test_bulk_trigger_reports_schema_errors_per_event(api, flow):
    response = api.post(
        "/api/v1/events/bulk",
        {
            "events": [
                {"workflow": "ping", "to": ["u1"], "payload": {"post_title": "Hi", "author": {"name": "A"}}},
                {"workflow": "ping", "to": ["u1"], "payload": {"post_title": 3}},
            ]
        },
        format="json",
    )
    assert response.status_code == 202
    first, second = response.json()["data"]
    assert first["status"] == "accepted"
    assert second["status"] == "error" and second["error"]["code"] == "invalid_payload"
    assert "payload.post_title" in second["error"]["details"]


def test_an_invalid_schema_is_refused_when_the_workflow_is_saved(api):
    response = api.put(
        "/api/v1/workflows/odd",
        {"name": "Odd", "payload_schema": {"type": "nonsense"}, "steps": []},
        format="json",
    )
    body = assert_error(response, 400, "invalid_workflow")
    assert "payload_schema" in body["details"]


def test_subscriber_runs_explain_every_decision(
    api, tenant, other_tenant, flow, django_capture_on_commit_callbacks, django_assert_num_queries
):
    SubscriberFactory(environment=tenant.environment, subscriber_id="u1", email="")
    payload = {"post_title": "Hi", "author": {"name": "Ada"}}
    for _ in range(3):
        with django_capture_on_commit_callbacks(execute=True):
            api.post(TRIGGER, {"workflow": "ping", "to": ["u1"], "payload": payload}, format="json")
    with django_assert_num_queries(6):  # auth, subscriber, runs page, decisions, messages, attempts
        response = api.get("/api/v1/subscribers/u1/runs?limit=2")
    assert response.status_code == 200
    body = response.json()
    assert len(body["data"]) == 2 and body["next_cursor"]
    run = body["data"][0]
    assert run["workflow"] == "ping" and run["status"] == "completed"
    assert [(s["step"], s["decision"], s["reason"]) for s in run["steps"]] == [
        ("inbox", "executed", "sent"),
        ("mail", "skipped", "no_address"),
    ]
    assert run["steps"][1]["detail"]["channel"] == "email"
    page2 = api.get(f"/api/v1/subscribers/u1/runs?limit=2&cursor={body['next_cursor']}").json()
    assert len(page2["data"]) == 1
    assert api.get("/api/v1/subscribers/u1/runs?status=waiting").json()["data"] == []
    assert_error(api.get("/api/v1/subscribers/u1/runs?status=asleep"), 400, "validation_error")
    assert_error(other_tenant.client.get("/api/v1/subscribers/u1/runs"), 404, "not_found")


def test_frequency_caps_api(api, tenant, other_tenant):
    CategoryFactory(environment=tenant.environment, key="social")
    created = api.post("/api/v1/frequency-caps", {"channel": "push", "limit": 3, "window": "1h"}, format="json")
    assert created.status_code == 201
    changed = api.post("/api/v1/frequency-caps", {"channel": "push", "limit": 5, "window": "2h"}, format="json")
    assert changed.status_code == 200 and changed.json()["limit"] == 5
    social = api.post(
        "/api/v1/frequency-caps", {"channel": "push", "category": "social", "limit": 1, "window": "1d"}, format="json"
    )
    assert social.status_code == 201 and social.json()["category"] == "social"
    assert [c["limit"] for c in api.get("/api/v1/frequency-caps").json()["data"]] == [5, 1]
    assert_error(
        api.post("/api/v1/frequency-caps", {"channel": "push", "limit": 1, "window": "often"}, format="json"),
        422,
        "invalid_window",
    )
    assert_error(
        api.post(
            "/api/v1/frequency-caps", {"channel": "push", "category": "nope", "limit": 1, "window": "1d"}, format="json"
        ),
        422,
        "unknown_category",
    )
    assert_error(
        other_tenant.client.delete(f"/api/v1/frequency-caps/{created.json()['id']}"), 404, "frequency_cap_not_found"
    )
    assert api.delete(f"/api/v1/frequency-caps/{created.json()['id']}").status_code == 204
    assert other_tenant.client.get("/api/v1/frequency-caps").json()["data"] == []
