"""Hostile bytes get a 4xx in the error envelope, never a 500, on SQLite and PostgreSQL alike.

NUL (U+0000) and unpaired surrogates in JSON bodies (apps.core.parsers), NUL in paths, query
strings and form fields (apps.core.middleware), the database's own refusals as a last line of
defence (apps.core.errors), and JSON nested far too deep. Endpoints with a path key or a query
filter, and the write endpoints, come from the OpenAPI schema, so a new endpoint is covered too.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from django.db import DataError
from django.test import RequestFactory
from drf_spectacular.generators import SchemaGenerator
from rest_framework.test import APIClient

from apps.core.errors import api_exception_handler
from apps.core.middleware import HostileInputMiddleware
from apps.core.parsers import MAX_DEPTH, json_problem
from apps.events.models import Event
from apps.subscribers.models import Subscriber
from apps.templates.models import Template
from apps.workflows.models import Workflow
from tests.assertions import assert_error
from tests.factories import InboxMessageFactory, IntegrationFactory, SubscriberFactory, TopicFactory
from tests.inbox.conftest import inbox_client_for
from tests.workflows.conftest import make_workflow

pytestmark = pytest.mark.django_db

NUL = "a\x00b"
SURROGATE = "a\ud800b"
BAD_TEXT = {"nul": NUL, "surrogate": SURROGATE}


def send(client: APIClient, method: str, path: str, body: Any) -> Any:
    """JSON as a client library writes it: ASCII with \\u escapes (DRF's test renderer cannot
    encode a lone surrogate at all)."""
    return client.generic(method, path, json.dumps(body), content_type="application/json")


def cleanly_accepted(response: Any) -> None:
    assert response.status_code in (200, 201, 202), response.content


# --- JSON bodies --------------------------------------------------------------------------------

TRIGGER = "/api/v1/events/trigger"


def _trigger(**fields: Any) -> dict[str, Any]:
    return {"workflow": "comment-created", "to": ["u1"], "payload": {"post_title": "Hi"}, **fields}


# (method, path, body with the text in place, where the error must point)
JSON_CASES: dict[str, tuple[str, str, Any, str]] = {
    "trigger payload": ("POST", TRIGGER, lambda t: _trigger(payload={"comment": t}), "payload.comment"),
    "trigger payload key": ("POST", TRIGGER, lambda t: _trigger(payload={t: "x"}), "payload.a\\u{code}b"),
    "trigger payload list": ("POST", TRIGGER, lambda t: _trigger(payload={"tags": ["ok", t]}), "payload.tags[1]"),
    "trigger inline subscriber": (
        "POST",
        TRIGGER,
        lambda t: _trigger(to=[{"subscriber_id": "u2", "first_name": t}]),
        "to[0].first_name",
    ),
    "subscriber data": ("PUT", "/api/v1/subscribers/u1", lambda t: {"data": {"nick": t}}, "data.nick"),
    "template sample_payload": (
        "PUT",
        "/api/v1/templates/welcome",
        lambda t: {"channel": "in_app", "sample_payload": {"name": t}},
        "sample_payload.name",
    ),
    "workflow payload_schema": (
        "PUT",
        "/api/v1/workflows/signup",
        lambda t: {"steps": [], "payload_schema": {"type": "object", "description": t}},
        "payload_schema.description",
    ),
}


@pytest.mark.parametrize("case", JSON_CASES)
def test_json_bodies_are_accepted_with_ordinary_text(api, comment_workflow, case):
    """The control: these bodies are fine, so the 400s below come from the bad text alone."""
    method, path, body, _where = JSON_CASES[case]
    cleanly_accepted(send(api, method, path, body("a b é 😀")))


@pytest.mark.parametrize("kind", BAD_TEXT)
@pytest.mark.parametrize("case", JSON_CASES)
def test_bad_text_in_json_is_a_400_naming_where(api, comment_workflow, case, kind):
    method, path, body, where = JSON_CASES[case]
    error = assert_error(send(api, method, path, body(BAD_TEXT[kind])), 400, "invalid_json")
    code = f"{ord(BAD_TEXT[kind][1]):04x}"
    assert error["details"]["path"] == where.format(code=code)
    assert where.format(code=code) in error["message"]
    assert json_problem(error) is None  # the answer itself holds no bad text
    assert not Event.objects.exists()
    assert not Subscriber.objects.filter(subscriber_id__in=["u1", "u2"]).exists()
    assert not Template.objects.filter(key="welcome").exists()
    assert not Workflow.objects.filter(key="signup").exists()


def test_a_surrogate_pair_is_ordinary_text(api, comment_workflow):
    body = '{"workflow": "comment-created", "to": ["u1"], "payload": {"emoji": "\\ud83d\\ude00"}}'
    response = api.generic("POST", TRIGGER, body, content_type="application/json")
    assert response.status_code == 202, response.content
    assert Event.objects.get().payload == {"emoji": "😀"}


def test_a_nul_in_a_json_key_at_the_top_level(api):
    error = assert_error(send(api, "PUT", "/api/v1/subscribers/u1", {NUL: 1}), 400, "invalid_json")
    assert error["details"]["path"] == "a\\u0000b"


# --- Bulk triggers: the bad item alone ---------------------------------------------------------


@pytest.mark.parametrize("kind", BAD_TEXT)
def test_bulk_trigger_reports_the_bad_item_and_accepts_the_others(api, comment_workflow, kind):
    events = [
        _trigger(transaction_id="b-0"),
        _trigger(transaction_id="b-1", payload={"comment": BAD_TEXT[kind]}),
        _trigger(transaction_id="b-2"),
    ]
    response = send(api, "POST", "/api/v1/events/bulk", {"events": events})
    assert response.status_code == 202, response.content
    items = response.json()["data"]
    assert [item["status"] for item in items] == ["accepted", "error", "accepted"]
    assert [item["transaction_id"] for item in items] == ["b-0", None, "b-2"]
    assert items[1]["error"]["code"] == "invalid_json"
    assert items[1]["error"]["details"]["path"] == "events[1].payload.comment"
    assert sorted(Event.objects.values_list("transaction_id", flat=True)) == ["b-0", "b-2"]


def test_bulk_trigger_with_idempotency_key_stores_and_replays_the_mixed_answer(api, comment_workflow):
    """The stored response (a jsonb column on PostgreSQL) must itself be storable."""
    events = [_trigger(payload={NUL: SURROGATE}), _trigger(transaction_id="ok")]
    headers = {"HTTP_IDEMPOTENCY_KEY": "bulk-1"}
    first = api.generic("POST", "/api/v1/events/bulk", json.dumps({"events": events}), "application/json", **headers)
    again = api.generic("POST", "/api/v1/events/bulk", json.dumps({"events": events}), "application/json", **headers)
    assert first.status_code == again.status_code == 202, first.content
    assert again["Idempotent-Replayed"] == "true"
    assert again.json() == first.json()
    assert [item["status"] for item in first.json()["data"]] == ["error", "accepted"]
    assert first.json()["data"][0]["error"]["details"]["path"] == "events[0].payload.a\\u0000b"


def test_bulk_trigger_item_nested_too_deep_is_that_items_error(api, comment_workflow):
    deep: Any = "x"
    for _ in range(MAX_DEPTH):
        deep = {"d": deep}
    events = [_trigger(payload=deep), _trigger(transaction_id="ok")]
    response = send(api, "POST", "/api/v1/events/bulk", {"events": events})
    assert response.status_code == 202, response.content
    first, second = response.json()["data"]
    assert (first["status"], first["error"]["code"], second["status"]) == ("error", "malformed_json", "accepted")


def test_bulk_trigger_outside_the_items_is_still_checked(api, comment_workflow):
    body = {"events": [_trigger()], "note": NUL}
    assert_error(send(api, "POST", "/api/v1/events/bulk", body), 400, "invalid_json")
    assert not Event.objects.exists()


def test_subscriber_bulk_names_the_item_and_writes_nothing(api):
    subscribers = [{"subscriber_id": "s0"}, {"subscriber_id": "s1", "data": {"x": NUL}}]
    response = send(api, "POST", "/api/v1/subscribers/bulk", {"subscribers": subscribers})
    error = assert_error(response, 400, "invalid_json")
    assert error["details"]["path"] == "subscribers[1].data.x"
    assert not Subscriber.objects.exists()


# --- Paths and query strings: every endpoint from the schema -----------------------------------


def _schema_operations() -> list[tuple[str, str, list[dict[str, Any]], bool]]:
    """(path, method, parameters, takes a body) for every operation in the OpenAPI schema."""
    schema = SchemaGenerator().get_schema(request=None, public=True)
    return [
        (path, method.upper(), operation.get("parameters", []), "requestBody" in operation)
        for path, operations in schema["paths"].items()
        for method, operation in operations.items()
    ]


OPERATIONS = _schema_operations()


def _url(path: str, parameters: list[dict[str, Any]], bad: str | None = None) -> str:
    """The path with its parameters filled in: strings get ``bad`` when given."""

    def fill(match: re.Match[str]) -> str:
        spec = next(p for p in parameters if p["in"] == "path" and p["name"] == match.group(1))
        if spec["schema"].get("type") == "integer":
            return "1"
        return bad if bad is not None else "x"

    return re.sub(r"\{(\w+)\}", fill, path)


def _client_for(path: str, tenant: Any) -> APIClient:
    """The inbox API takes a subscriber's inbox token (minting one takes the secret key)."""
    if path.startswith("/api/v1/inbox/") and path != "/api/v1/inbox/tokens":
        subscriber, _ = Subscriber.objects.get_or_create(environment=tenant.environment, subscriber_id="inbox-user")
        return inbox_client_for(subscriber)
    return tenant.client


PATH_KEY_CASES = [
    pytest.param(method, _url(path, params, bad="a%00b"), id=f"{method} {path}")
    for path, method, params, _body in OPERATIONS
    if any(p["in"] == "path" and p["schema"].get("type") != "integer" for p in params)
]
QUERY_CASES = [
    pytest.param(method, _url(path, params), p["name"], id=f"{method} {path}?{p['name']}")
    for path, method, params, _body in OPERATIONS
    for p in params
    if p["in"] == "query"
]


def test_the_schema_cases_cover_the_known_path_keys_and_filters():
    ids = {case.id for case in PATH_KEY_CASES} | {case.id for case in QUERY_CASES}
    assert "GET /api/v1/subscribers/{subscriber_id}" in ids
    assert "GET /api/v1/events/{transaction_id}" in ids
    assert "PUT /api/v1/topics/{key}" in ids
    assert "GET /api/v1/subscribers?email" in ids
    assert "GET /api/v1/events/{transaction_id}?subscriber_id" in ids
    assert len(PATH_KEY_CASES) >= 11


@pytest.mark.parametrize(("method", "url"), PATH_KEY_CASES)
def test_nul_in_a_path_key_is_a_400(tenant, method, url):
    response = _client_for(url, tenant).generic(method, url, "{}", content_type="application/json")
    error = assert_error(response, 400, "invalid_characters")
    assert error["details"] == {"location": "path"}


@pytest.mark.parametrize(("method", "url", "name"), QUERY_CASES)
def test_nul_in_a_query_filter_is_a_400(tenant, method, url, name):
    response = _client_for(url, tenant).generic(method, f"{url}?{name}=a%00b", "{}", content_type="application/json")
    error = assert_error(response, 400, "invalid_characters")
    assert error["details"] == {"location": "query", "parameter": name}


def test_nul_in_a_query_parameter_name(api):
    error = assert_error(api.get("/api/v1/subscribers?e%00mail=x"), 400, "invalid_characters")
    assert error["details"] == {"location": "query", "parameter": "e\\u0000mail"}


def test_nul_in_a_hosted_page_path_or_form_is_a_plain_400(client):
    assert client.get("/preferences/a%00b/").status_code == 400
    response = client.post("/unsubscribe/token", "List-Unsubscribe=One-Click%00", "application/x-www-form-urlencoded")
    assert response.status_code == 400
    assert response["Content-Type"].startswith("text/plain")


def test_ordinary_percent_escapes_pass(api):
    response = api.get("/api/v1/subscribers/a%2500b")  # a literal "%00", not NUL
    assert_error(response, 404, "not_found")


# --- The last line of defence: what the database refuses ---------------------------------------


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (DataError("PostgreSQL text fields cannot contain NUL (0x00) bytes"), "invalid_characters"),
        (DataError("unsupported Unicode escape sequence\nDETAIL:  \\u0000 cannot be converted to text."), None),
        (DataError("invalid input syntax for type json\nDETAIL: Unicode low surrogate must follow"), None),
        (ValueError("A string literal cannot contain NUL (0x00) characters."), "invalid_characters"),
        (UnicodeEncodeError("utf-8", "a\ud800", 1, 2, "surrogates not allowed"), "invalid_characters"),
        (DataError("value too long for type character varying(200)"), "invalid_data"),
    ],
)
def test_database_refusals_map_to_400(exc, code):
    response = api_exception_handler(exc, {})
    assert response is not None and response.status_code == 400
    assert response.data["error"]["code"] == (code or "invalid_characters")


def test_other_errors_stay_server_errors():
    assert api_exception_handler(ValueError("something else"), {}) is None
    assert api_exception_handler(UnicodeEncodeError("ascii", "é", 0, 1, "ordinal not in range"), {}) is None


def test_a_database_refusal_in_a_view_without_the_middleware_is_a_400(api, settings):
    """With the middleware gone, the database itself refuses on PostgreSQL; the handler maps it."""
    from django.db import connection

    settings.MIDDLEWARE = [m for m in settings.MIDDLEWARE if m != "apps.core.middleware.HostileInputMiddleware"]
    response = api.get("/api/v1/subscribers/a%00b")
    if connection.vendor == "postgresql":
        assert_error(response, 400, "invalid_characters")
    else:
        assert_error(response, 404, "not_found")


def test_middleware_maps_a_database_refusal_outside_drf():
    request = RequestFactory().post("/unsubscribe/token")
    middleware = HostileInputMiddleware(lambda r: None)
    response = middleware.process_exception(request, DataError("PostgreSQL text fields cannot contain NUL (0x00)"))
    assert response is not None and response.status_code == 400
    assert middleware.process_exception(request, RuntimeError("boom")) is None


# --- JSON nested 100,000 deep: every write endpoint -------------------------------------------

WRITE_CASES = [
    pytest.param(method, path, takes_body, id=f"{method} {path}")
    for path, method, _params, takes_body in OPERATIONS
    if method in ("POST", "PUT", "PATCH")
]
DEEP_BODIES = {
    "arrays": "[" * 100_000 + "]" * 100_000,
    "objects": '{"a":' * 100_000 + "1" + "}" * 100_000,
}


@pytest.fixture
def existing(tenant: Any) -> dict[str, str]:
    """Something behind every path key, so each write endpoint gets as far as reading its body."""
    subscriber = SubscriberFactory(environment=tenant.environment, subscriber_id="x")
    TopicFactory(environment=tenant.environment, key="x")
    make_workflow(tenant.environment, "x", [{"id": "wait", "type": "delay", "for": "1m"}])
    inbox_user = SubscriberFactory(environment=tenant.environment, subscriber_id="inbox-user")
    return {
        "subscriber_id": subscriber.subscriber_id,
        "integration_id": str(IntegrationFactory(environment=tenant.environment).pk),
        "message_id": str(InboxMessageFactory(subscriber=inbox_user).pk),
    }


@pytest.mark.parametrize("shape", DEEP_BODIES)
@pytest.mark.parametrize(("method", "path", "takes_body"), WRITE_CASES)
def test_json_nested_100000_deep_is_malformed_json(tenant, existing, method, path, takes_body, shape):
    url = re.sub(r"\{(\w+)\}", lambda m: existing.get(m.group(1), "x"), path)
    response = _client_for(url, tenant).generic(method, url, DEEP_BODIES[shape], content_type="application/json")
    if takes_body:
        assert_error(response, 400, "malformed_json")
    else:  # a body it never reads does no harm
        assert response.status_code < 500, response.content


def test_the_write_endpoints_taking_a_body_are_all_there():
    assert len([case for case in WRITE_CASES if case.values[2]]) >= 27


def test_json_just_within_the_depth_limit_passes_the_parser(api, comment_workflow):
    payload: Any = "x"
    for _ in range(MAX_DEPTH - 1):  # the body is level 1
        payload = [payload]
    body = {"workflow": "comment-created", "to": ["u1"], "payload": {"deep": payload}}
    assert json_problem(body) is not None
    response = send(api, "POST", TRIGGER, body)
    assert_error(response, 400, "malformed_json")
    body["payload"]["deep"] = payload[0]
    assert json_problem(body) is None
    assert send(api, "POST", TRIGGER, body).status_code == 202


# --- json_problem itself -------------------------------------------------------------------


def test_json_problem_names_the_first_problem_in_document_order():
    value = {"a": [1, {"b": "ok"}, {"c": NUL}], "d": SURROGATE}
    problem = json_problem(value)
    assert problem is not None and problem.path == "a[2].c"
    assert json_problem({"a": "fine", "b": ["fine", {"c": 1.5, "d": None, "e": True}]}) is None
    assert json_problem(NUL).path == ""
    assert json_problem({"x": NUL}, path="events[3]").path == "events[3].x"


def test_the_quick_checks_do_not_refuse_innocent_lookalikes(api):
    """A literal backslash before "u0000", many brackets side by side: fine."""
    assert json_problem({"a": "\\u0000", "b": "\\ud800"}) is None
    assert json_problem({"many": [{} for _ in range(500)]}) is None
    body = '{"data": {"path": "C:\\\\u0000\\\\ud800", "rows": [' + ",".join(["[]"] * 200) + "]}}"
    response = api.generic("PUT", "/api/v1/subscribers/u1", body, content_type="application/json")
    assert response.status_code == 201, response.content
    assert Subscriber.objects.get().data["path"] == "C:\\u0000\\ud800"


def test_a_raw_surrogate_through_an_exotic_charset_is_refused(api):
    """charset=unicode_escape turns the bytes \\ud800 into a raw surrogate before JSON parsing."""
    body = b'{"data": {"x": "\\ud800"}}'
    content_type = "application/json; charset=unicode_escape"
    response = api.generic("PUT", "/api/v1/subscribers/u1", body, content_type=content_type)
    error = assert_error(response, 400, "invalid_json")
    assert error["details"]["path"] == "data.x"
