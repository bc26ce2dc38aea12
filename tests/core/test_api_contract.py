"""The API does what its OpenAPI schema says, for the findings of "Safe to put on the internet".

Query parameters an operation does not declare are a 400 naming them (a typo of a filter must not
widen a list); ``?limit=`` is an integer from 1 to 200; a JSON value of another type than the
schema's is a 400 (``"read": 0`` is no boolean); and the schema documents the error envelope and
the shapes the code really returns. tests/core/test_schemathesis.py fuzzes every operation.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from django.core.management import call_command

from apps.delivery.models import Message
from apps.inbox.services import inbox_token_mint
from tests.factories import SubscriberFactory


@pytest.fixture
def two_messages(tenant: Any, other_tenant: Any) -> None:
    for subscriber_id in ("u1", "u2"):
        subscriber = SubscriberFactory(environment=tenant.environment, subscriber_id=subscriber_id)
        Message.objects.create(environment=tenant.environment, subscriber=subscriber, channel="email")


@pytest.fixture
def openapi(tmp_path: Path, db: Any) -> dict[str, Any]:
    target = tmp_path / "schema.yml"
    call_command("spectacular", "--file", str(target))
    return yaml.safe_load(target.read_text())


# --- Query parameters ------------------------------------------------------------------------------


def test_a_misspelt_filter_is_a_400_naming_it_not_every_subscribers_messages(api: Any, two_messages: None) -> None:
    response = api.get("/api/v1/messages", {"subscriberId": "u1"})

    assert response.status_code == 400, response.json()
    error = response.json()["error"]
    assert error["code"] == "unknown_query_parameter"
    assert error["details"]["unknown"] == ["subscriberId"]
    assert "subscriber_id" in error["details"]["accepted"] and "subscriberId" in error["message"]
    filtered = api.get("/api/v1/messages", {"subscriber_id": "u1"}).json()["data"]
    assert [m["subscriber_id"] for m in filtered] == ["u1"]


@pytest.mark.parametrize(
    "path", ["/api/v1/subscribers", "/api/v1/topics", "/api/v1/workflows", "/api/v1/subscribers/u1"]
)
def test_unknown_query_parameters_are_refused_everywhere(api: Any, two_messages: None, path: str) -> None:
    response = api.get(path, {"format": "json", "x": "1"})
    assert response.status_code == 400
    assert response.json()["error"]["details"]["unknown"] == ["format", "x"]


def test_a_single_valued_parameter_given_twice_is_refused_a_list_is_not(api: Any, anon_api: Any, tenant: Any) -> None:
    response = api.get("/api/v1/subscribers?email=a@example.com&email=b@example.com")
    assert response.status_code == 400
    assert response.json()["error"] == {
        "code": "repeated_query_parameter",
        "message": "Query parameter given more than once: email.",
        "details": {"repeated": ["email"]},
    }
    token = inbox_token_mint(environment=tenant.environment, subscriber_id="u1", ttl_seconds=60).token
    inbox = anon_api.get(
        "/api/v1/inbox/messages?category=a&category=b&tags=x&tags=y", HTTP_AUTHORIZATION=f"Bearer {token}"
    )
    assert inbox.status_code == 200, inbox.json()


@pytest.mark.parametrize("limit", ["null", "10.0", "0", "201", "-1", "ten", ""])
def test_a_bad_limit_is_a_400_never_ignored(api: Any, two_messages: None, limit: str) -> None:
    response = api.get(f"/api/v1/messages?limit={limit}")
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "validation_error"
    assert "limit" in response.json()["error"]["details"]


def test_a_good_limit_pages(api: Any, two_messages: None) -> None:
    body = api.get("/api/v1/messages", {"limit": "1"}).json()
    assert len(body["data"]) == 1 and body["next_cursor"]
    assert len(api.get("/api/v1/messages", {"limit": "1", "cursor": body["next_cursor"]}).json()["data"]) == 1


def test_a_cursor_the_api_did_not_issue_is_a_400(api: Any, two_messages: None) -> None:
    response = api.get("/api/v1/messages", {"cursor": "not-a-cursor"})
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_cursor"


# --- JSON types -----------------------------------------------------------------------------------


def test_a_number_is_not_a_boolean(anon_api: Any, tenant: Any) -> None:
    token = inbox_token_mint(environment=tenant.environment, subscriber_id="u1", ttl_seconds=60).token
    auth = {"HTTP_AUTHORIZATION": f"Bearer {token}"}
    response = anon_api.post("/api/v1/inbox/messages/read-all", {"read": 0}, format="json", **auth)
    assert response.status_code == 400
    assert response.json()["error"]["details"] == {"read": ["Must be of type boolean or null, not number."]}
    assert anon_api.post("/api/v1/inbox/messages/read-all", {"read": False}, format="json", **auth).status_code == 200


def test_a_number_is_not_a_string_even_deep_in_a_bulk_call(api: Any) -> None:
    response = api.put("/api/v1/topics/t1", {"name": 0}, format="json")
    assert response.status_code == 400
    assert response.json()["error"]["details"] == {"name": ["Must be of type string, not number."]}
    bulk = api.post(
        "/api/v1/subscribers/bulk",
        {"subscribers": [{"subscriber_id": "a"}, {"subscriber_id": "b", "last_name": 0}]},
        format="json",
    )
    assert bulk.status_code == 400
    assert bulk.json()["error"]["details"] == {
        "subscribers": {"1": {"last_name": ["Must be of type string or null, not number."]}}
    }


# --- The schema says what the code does --------------------------------------------------------------


def test_every_operation_documents_the_error_envelope(openapi: dict[str, Any]) -> None:
    operations = [
        (f"{method.upper()} {path}", operation)
        for path, methods in openapi["paths"].items()
        for method, operation in methods.items()
    ]
    assert len(operations) > 80
    for label, operation in operations:
        for status in ("400", "401", "404", "422", "429"):
            response = operation["responses"].get(status)
            assert response is not None, f"{label} does not document {status}"
            assert "content" in response, f"{label} {status} has no body schema"
    envelope = openapi["components"]["schemas"]["Error"]
    assert envelope["required"] == ["error"]
    assert envelope["properties"]["error"]["required"] == ["code", "message", "details"]


def test_the_schema_has_the_shapes_the_code_returns(openapi: dict[str, Any]) -> None:
    paths = openapi["paths"]
    schemas = openapi["components"]["schemas"]

    def body(path: str, method: str = "get", status: str = "200") -> dict[str, Any]:
        schema = paths[path][method]["responses"][status]["content"]["application/json"]["schema"]
        return schemas[schema["$ref"].rsplit("/", 1)[1]] if "$ref" in schema else schema

    # {"data": [...]} where it was documented as a bare array
    assert body("/api/v1/frequency-caps")["properties"]["data"]["type"] == "array"
    assert body("/api/v1/templates/{key}/variables")["properties"]["data"]["type"] == "array"
    assert body("/api/v1/events/bulk", "post", "202")["properties"]["data"]["type"] == "array"
    # devices: a page, not one device
    assert body("/api/v1/subscribers/{subscriber_id}/devices")["properties"]["data"]["type"] == "array"
    # "" for an unset email / avatar is allowed; no version published yet is null
    subscriber = schemas["Subscriber"]["properties"]
    assert {"type": "string", "maxLength": 0} in subscriber["avatar"]["anyOf"]
    assert {"type": "string", "maxLength": 0} in subscriber["email"]["anyOf"]
    assert schemas["TemplateDetail"]["properties"]["published_version"]["nullable"] is True
    # quiet hours are HH:MM, not format: time (HH:MM:SS)
    start = schemas["QuietHours"]["properties"]["start"]
    assert "format" not in start and start["pattern"].startswith("^([01]")


def test_quiet_hours_round_trip_as_the_schema_says(api: Any, tenant: Any, openapi: dict[str, Any]) -> None:
    import re

    SubscriberFactory(environment=tenant.environment, subscriber_id="u1")
    response = api.put("/api/v1/subscribers/u1/quiet-hours", {"start": "00:10", "end": "07:00"}, format="json")
    assert response.status_code == 200, response.json()
    pattern = openapi["components"]["schemas"]["QuietHours"]["properties"]["start"]["pattern"]
    assert re.match(pattern, response.json()["start"])
    refused = api.put("/api/v1/subscribers/u1/quiet-hours", {"start": "10", "end": "07:00"}, format="json")
    assert refused.status_code == 400


def test_a_window_too_long_to_compute_is_a_422_not_a_500(api: Any) -> None:
    # Found by schemathesis: timedelta(days=882895684310) overflowed into a 500.
    response = api.post(
        "/api/v1/frequency-caps", {"channel": "push", "limit": 1, "window": "882895684310 d"}, format="json"
    )
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "invalid_window"
    assert (
        api.post(
            "/api/v1/frequency-caps", {"channel": "push", "limit": 1, "window": "36526d"}, format="json"
        ).status_code
        == 422
    )
    assert (
        api.post("/api/v1/frequency-caps", {"channel": "push", "limit": 1, "window": "1d"}, format="json").status_code
        == 201
    )


def test_an_empty_channel_filter_is_refused_not_ignored(api: Any) -> None:
    assert api.get("/api/v1/templates?channel=").status_code == 400
    assert api.get("/api/v1/templates?channel=email").status_code == 200
