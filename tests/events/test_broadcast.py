"""POST /api/v1/events/broadcast: every subscriber of the caller's environment, streamed in chunks."""

from __future__ import annotations

import pytest

from apps.events.models import Event
from apps.inbox.models import InboxMessage
from apps.workflows.engine import process_event
from apps.workflows.models import Run
from tests.assertions import assert_error
from tests.factories import SubscriberFactory

pytestmark = pytest.mark.django_db

BROADCAST = "/api/v1/events/broadcast"


def _subscribers(environment, count, prefix="s"):
    return [SubscriberFactory(environment=environment, subscriber_id=f"{prefix}{i}") for i in range(count)]


def test_broadcast_reaches_every_subscriber_of_the_environment_only(
    api, tenant, other_tenant, comment_workflow, settings, django_capture_on_commit_callbacks
):
    settings.CLARION = {**settings.CLARION, "FANOUT_CHUNK_SIZE": 3}  # several keyset chunks
    _subscribers(tenant.environment, 7)
    foreign = _subscribers(other_tenant.environment, 2, prefix="x")
    with django_capture_on_commit_callbacks(execute=True):
        response = api.post(
            BROADCAST,
            {"workflow": "comment-created", "payload": {"post_title": "News"}, "transaction_id": "b-1"},
            format="json",
        )
    assert response.status_code == 202
    assert response.json() == {"transaction_id": "b-1", "status": "accepted"}
    event = Event.objects.get(transaction_id="b-1")
    assert event.recipients == [{"broadcast": True}]
    assert event.status == "processed"
    assert event.recipient_count == 7
    inboxed = set(InboxMessage.objects.values_list("subscriber__subscriber_id", flat=True))
    assert inboxed == {f"s{i}" for i in range(7)}
    assert not InboxMessage.objects.filter(subscriber__in=foreign).exists()
    trace = api.get("/api/v1/events/b-1").json()
    assert trace["recipients"] == [{"broadcast": True}]
    assert len(trace["runs"]) == 7
    assert {tuple((s["step"], s["decision"], s["reason"]) for s in r["steps"]) for r in trace["runs"]} == {
        (("inbox", "executed", "sent"), ("wait", "waiting", "delay"))
    }


def test_broadcast_does_not_notify_its_actor(api, tenant, comment_workflow, django_capture_on_commit_callbacks):
    _subscribers(tenant.environment, 3)
    with django_capture_on_commit_callbacks(execute=True):
        response = api.post(BROADCAST, {"workflow": "comment-created", "actor": "s1"}, format="json")
    assert response.status_code == 202
    assert set(Run.objects.values_list("subscriber__subscriber_id", flat=True)) == {"s0", "s2"}


def test_broadcast_is_idempotent(api, tenant, comment_workflow, django_capture_on_commit_callbacks):
    _subscribers(tenant.environment, 2)
    body = {"workflow": "comment-created", "transaction_id": "same"}
    with django_capture_on_commit_callbacks(execute=True):
        assert api.post(BROADCAST, body, format="json").status_code == 202
    with django_capture_on_commit_callbacks(execute=True):
        assert_error(api.post(BROADCAST, body, format="json"), 409, "duplicate_transaction")
    assert Event.objects.count() == 1
    assert InboxMessage.objects.count() == 2

    headers = {"HTTP_IDEMPOTENCY_KEY": "k-1"}
    with django_capture_on_commit_callbacks(execute=True):
        first = api.post(BROADCAST, {"workflow": "comment-created"}, format="json", **headers)
    with django_capture_on_commit_callbacks(execute=True):
        again = api.post(BROADCAST, {"workflow": "comment-created"}, format="json", **headers)
    assert first.status_code == again.status_code == 202
    assert again.json() == first.json()
    assert again["Idempotent-Replayed"] == "true"
    assert Event.objects.count() == 2
    assert InboxMessage.objects.count() == 4


def test_broadcast_cancelled_before_fanout_creates_no_runs(api, tenant, comment_workflow):
    _subscribers(tenant.environment, 3)
    response = api.post(BROADCAST, {"workflow": "comment-created", "transaction_id": "b-c"}, format="json")
    assert response.status_code == 202
    assert api.delete("/api/v1/events/b-c").status_code == 200
    process_event(Event.objects.get().pk)
    assert Run.objects.count() == 0
    assert Event.objects.get().status == "cancelled"


def test_broadcast_cancelled_by_key_stops_waiting_runs(
    api, tenant, comment_workflow, django_capture_on_commit_callbacks
):
    _subscribers(tenant.environment, 3)
    with django_capture_on_commit_callbacks(execute=True):
        api.post(BROADCAST, {"workflow": "comment-created", "cancellation_key": "launch"}, format="json")
    assert set(Run.objects.values_list("status", flat=True)) == {"waiting"}
    response = api.post("/api/v1/events/cancel", {"cancellation_key": "launch"}, format="json")
    assert response.json() == {"cancellation_key": "launch", "events": 1, "cancelled_runs": 3}
    assert set(Run.objects.values_list("status", flat=True)) == {"cancelled"}


def test_broadcast_of_another_environment_is_invisible(api, other_tenant, comment_workflow):
    assert api.post(BROADCAST, {"workflow": "comment-created", "transaction_id": "t"}, format="json").status_code == 202
    assert_error(other_tenant.client.get("/api/v1/events/t"), 404, "event_not_found")
    assert_error(other_tenant.client.delete("/api/v1/events/t"), 404, "event_not_found")
    response = other_tenant.client.post(BROADCAST, {"workflow": "comment-created"}, format="json")
    assert_error(response, 404, "workflow_not_found")


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({}, 400, "validation_error"),
        ({"workflow": "comment-created", "to": ["u1"]}, 400, "validation_error"),
        ({"workflow": "comment-created", "payload": []}, 400, "validation_error"),
        ({"workflow": "comment-created", "transaction_id": ""}, 400, "validation_error"),
        ({"workflow": "comment-created", "actor": {"topic": "t"}}, 400, "validation_error"),
        ({"workflow": "nope"}, 404, "workflow_not_found"),
        ({"workflow": "comment-created", "payload": {"x": "a" * 600_000}}, 422, "payload_too_large"),
    ],
)
def test_broadcast_bad_input_answers_in_the_envelope(api, comment_workflow, body, status, code):
    assert_error(api.post(BROADCAST, body, format="json"), status, code)
    assert Event.objects.count() == 0


def test_broadcast_get_is_not_allowed(api, comment_workflow):
    assert api.get(BROADCAST).status_code == 405


def test_broadcast_is_in_the_openapi_schema(api):
    schema = api.get("/api/schema/?format=json").json()
    operation = schema["paths"]["/api/v1/events/broadcast"]["post"]
    assert "202" in operation["responses"]
    assert "409" in operation["responses"]
    assert operation["responses"]["400"]["content"]["application/json"]["schema"]["$ref"].endswith("/Error")
    body = operation["requestBody"]["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[-1]
    assert set(schema["components"]["schemas"][body]["properties"]) == {
        "workflow",
        "payload",
        "actor",
        "transaction_id",
        "cancellation_key",
    }
