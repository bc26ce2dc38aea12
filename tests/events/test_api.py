from __future__ import annotations

import pytest
from django.core import mail

from apps.events.models import Event
from apps.inbox.models import InboxMessage
from apps.subscribers.models import Subscriber
from apps.workflows.models import Run
from tests.assertions import assert_error
from tests.factories import SubscriberFactory, TopicFactory

pytestmark = pytest.mark.django_db

TRIGGER = "/api/v1/events/trigger"


def test_trigger_accepts_and_runs(api, comment_workflow, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        response = api.post(
            TRIGGER,
            {
                "workflow": "comment-created",
                "to": ["u1", {"subscriber_id": "u2", "email": "u2@example.com", "locale": "fr"}],
                "payload": {"post_title": "Hello", "comment": "First!"},
                "actor": "u9",
            },
            format="json",
        )
    assert response.status_code == 202
    transaction_id = response.json()["transaction_id"]
    assert response.json()["status"] == "accepted"
    assert Subscriber.objects.get(subscriber_id="u2").email == "u2@example.com"
    titles = dict(InboxMessage.objects.values_list("subscriber__subscriber_id", "title"))
    assert titles == {"u1": "New comment on Hello", "u2": "Nouveau commentaire sur Hello"}

    trace = api.get(f"/api/v1/events/{transaction_id}").json()
    assert trace["status"] == "processed"
    assert trace["recipient_count"] == 2
    run = next(r for r in trace["runs"] if r["subscriber_id"] == "u2")
    assert [(s["step"], s["decision"], s["reason"]) for s in run["steps"]] == [
        ("inbox", "executed", "sent"),
        ("wait", "waiting", "delay"),
    ]
    assert run["messages"][0]["channel"] == "in_app"
    assert run["messages"][0]["locale"] == "fr"


def test_trigger_answers_before_any_per_recipient_work(api, tenant, comment_workflow):
    """Without running commit hooks (= the queue), only the event row exists."""
    response = api.post(TRIGGER, {"workflow": "comment-created", "to": ["a", "b"], "payload": {}}, format="json")
    assert response.status_code == 202
    assert Event.objects.count() == 1
    assert Run.objects.count() == 0


@pytest.mark.parametrize("recipients", [1, 300])
def test_trigger_query_count_is_independent_of_recipient_count(
    api, comment_workflow, django_assert_num_queries, recipients, settings
):
    """Auth, workflow, one INSERT … ON CONFLICT DO NOTHING RETURNING that also writes the analytics
    count, in autocommit (no transaction, no savepoint) on PostgreSQL; on SQLite the event and its
    count (one INSERT more) in one transaction, and on the ORM broker with the queue row (under the
    test's transaction: a savepoint and its release). The same for 1 or 300 recipients."""
    from django.db import connection

    settings.CLARION_TASKS_EAGER = False
    to = [f"user-{i}" for i in range(recipients)]
    if settings.Q_CLUSTER.get("orm"):
        expected = 7
    else:
        expected = 3 if connection.vendor == "postgresql" else 6
    with django_assert_num_queries(expected):
        response = api.post(TRIGGER, {"workflow": "comment-created", "to": to, "payload": {}}, format="json")
    assert response.status_code == 202


def test_trigger_with_subscriber_objects_is_one_transaction(api, comment_workflow, django_assert_max_num_queries):
    """Upserts and the event commit together: a duplicate transaction id rolls the upserts back."""
    body = {"workflow": "comment-created", "to": ["u1"], "payload": {}, "transaction_id": "t-1"}
    assert api.post(TRIGGER, body, format="json").status_code == 202
    # auth, workflow, savepoint, the upsert (its savepoint, INSERT, read back, release), the event INSERT, rollback
    with django_assert_max_num_queries(10):
        second = api.post(TRIGGER, {**body, "to": [{"subscriber_id": "u5", "first_name": "Changed"}]}, format="json")
    assert_error(second, 409, "duplicate_transaction")
    assert not Subscriber.objects.filter(subscriber_id="u5").exists()


def test_repeated_transaction_id_does_not_run_twice(api, comment_workflow, django_capture_on_commit_callbacks):
    body = {"workflow": "comment-created", "to": ["u1"], "payload": {}, "transaction_id": "order-1"}
    with django_capture_on_commit_callbacks(execute=True):
        assert api.post(TRIGGER, body, format="json").status_code == 202
        second = api.post(TRIGGER, body, format="json")
    error = assert_error(second, 409, "duplicate_transaction")
    assert error["details"] == {"transaction_id": "order-1"}
    assert InboxMessage.objects.count() == 1


def test_idempotency_key_replays_first_response(api, comment_workflow):
    body = {"workflow": "comment-created", "to": ["u1"], "payload": {"n": 1}}
    first = api.post(TRIGGER, body, format="json", HTTP_IDEMPOTENCY_KEY="k-1")
    second = api.post(TRIGGER, body, format="json", HTTP_IDEMPOTENCY_KEY="k-1")
    assert first.status_code == second.status_code == 202
    assert first.json() == second.json()
    assert second["Idempotent-Replayed"] == "true"
    assert Event.objects.count() == 1
    reused = api.post(TRIGGER, {**body, "payload": {"n": 2}}, format="json", HTTP_IDEMPOTENCY_KEY="k-1")
    assert_error(reused, 422, "idempotency_key_reused")


def test_idempotency_keys_are_per_environment(api, other_tenant, comment_workflow):
    from tests.workflows.conftest import make_workflow, published_template

    published_template(other_tenant.environment, "comment-in-app", "in_app", title_en="x", body_en="")
    make_workflow(
        other_tenant.environment,
        "comment-created",
        [{"id": "inbox", "type": "in_app", "template": "comment-in-app"}],
    )
    body = {"workflow": "comment-created", "to": ["u1"], "payload": {}}
    assert api.post(TRIGGER, body, format="json", HTTP_IDEMPOTENCY_KEY="same").status_code == 202
    other = other_tenant.client.post(TRIGGER, body, format="json", HTTP_IDEMPOTENCY_KEY="same")
    assert other.status_code == 202
    assert "Idempotent-Replayed" not in other
    assert Event.objects.count() == 2


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"workflow": "nope", "to": ["u1"]}, 404, "workflow_not_found"),
        ({"workflow": "comment-created", "to": []}, 400, "validation_error"),
        ({"workflow": "comment-created"}, 400, "validation_error"),
        ({"workflow": "comment-created", "to": [42]}, 400, "validation_error"),
        ({"workflow": "comment-created", "to": [{"email": "x@example.com"}]}, 400, "validation_error"),
        ({"workflow": "comment-created", "to": [{"subscriber_id": "x", "email": "bad"}]}, 400, "validation_error"),
        ({"workflow": "comment-created", "to": [{"topic": "missing"}]}, 422, "unknown_topic"),
        ({"workflow": "comment-created", "to": ["u1"], "payload": "text"}, 400, "validation_error"),
        ({"workflow": "comment-created", "to": ["u1"] * 1001}, 400, "validation_error"),
    ],
)
def test_invalid_triggers(api, comment_workflow, body, status, code):
    assert_error(api.post(TRIGGER, body, format="json"), status, code)
    assert Event.objects.count() == 0


def test_malformed_json(api, comment_workflow):
    response = api.post(TRIGGER, data='{"workflow": ', content_type="application/json")
    assert_error(response, 400, "malformed_json")


def test_payload_over_512_kb(api, comment_workflow):
    body = {"workflow": "comment-created", "to": ["u1"], "payload": {"blob": "x" * (512 * 1024)}}
    error = assert_error(api.post(TRIGGER, body, format="json"), 422, "payload_too_large")
    assert error["details"]["limit"] == 512 * 1024


def test_unpublished_workflow(api, tenant):
    api.put("/api/v1/workflows/draft-only", {"name": "Draft", "steps": []}, format="json")
    assert_error(
        api.post(TRIGGER, {"workflow": "draft-only", "to": ["u1"]}, format="json"), 422, "workflow_not_published"
    )


@pytest.mark.parametrize(
    ("headers", "code"),
    [
        ({}, "not_authenticated"),
        ({"HTTP_AUTHORIZATION": "Bearer sk_wrong"}, "authentication_failed"),
        ({"HTTP_AUTHORIZATION": "Token abc"}, "authentication_failed"),
    ],
)
def test_bad_or_missing_key(anon_api, comment_workflow, headers, code):
    response = anon_api.post(TRIGGER, {"workflow": "comment-created", "to": ["u1"]}, format="json", **headers)
    assert_error(response, 401, code)


def test_publishable_key_cannot_use_server_api(anon_api, tenant, comment_workflow):
    response = anon_api.post(
        TRIGGER,
        {"workflow": "comment-created", "to": ["u1"]},
        format="json",
        HTTP_AUTHORIZATION=f"Bearer {tenant.publishable_key}",
    )
    assert_error(response, 401, "authentication_failed")


def test_revoked_key_is_refused(tenant, comment_workflow):
    from apps.tenancy.models import ApiKey
    from apps.tenancy.services import api_key_revoke

    api_key_revoke(api_key=ApiKey.objects.get(environment=tenant.environment, kind="secret"))
    response = tenant.client.post(TRIGGER, {"workflow": "comment-created", "to": ["u1"]}, format="json")
    assert_error(response, 401, "authentication_failed")


def test_other_environment_cannot_see_or_cancel_events(api, other_tenant, comment_workflow):
    response = api.post(TRIGGER, {"workflow": "comment-created", "to": ["u1"], "transaction_id": "t-1"}, format="json")
    assert response.status_code == 202
    assert_error(other_tenant.client.get("/api/v1/events/t-1"), 404, "event_not_found")
    assert_error(other_tenant.client.delete("/api/v1/events/t-1"), 404, "event_not_found")
    assert_error(
        other_tenant.client.post(TRIGGER, {"workflow": "comment-created", "to": ["u1"]}, format="json"),
        404,
        "workflow_not_found",
    )
    assert Event.objects.get().status == "pending"


def test_other_environment_subscribers_are_never_reached(
    api, tenant, other_tenant, comment_workflow, django_capture_on_commit_callbacks
):
    foreign = SubscriberFactory(environment=other_tenant.environment, subscriber_id="shared-id")
    with django_capture_on_commit_callbacks(execute=True):
        api.post(TRIGGER, {"workflow": "comment-created", "to": ["shared-id"]}, format="json")
    assert not InboxMessage.objects.filter(subscriber=foreign).exists()
    assert InboxMessage.objects.get().subscriber.environment == tenant.environment


def test_topic_of_other_environment_is_unknown(api, other_tenant, comment_workflow):
    TopicFactory(environment=other_tenant.environment, key="team")
    response = api.post(TRIGGER, {"workflow": "comment-created", "to": [{"topic": "team"}]}, format="json")
    assert_error(response, 422, "unknown_topic")


def test_cancel_via_api(api, comment_workflow, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        api.post(TRIGGER, {"workflow": "comment-created", "to": ["u1", "u2"], "transaction_id": "c-1"}, format="json")
    response = api.delete("/api/v1/events/c-1")
    assert response.status_code == 200
    assert response.json() == {"transaction_id": "c-1", "cancelled_runs": 2}
    assert api.delete("/api/v1/events/c-1").json()["cancelled_runs"] == 0
    assert set(Run.objects.values_list("status", flat=True)) == {"cancelled"}


def test_cancel_before_fanout_prevents_runs(api, comment_workflow, django_capture_on_commit_callbacks):
    api.post(TRIGGER, {"workflow": "comment-created", "to": ["u1"], "transaction_id": "c-2"}, format="json")
    assert api.delete("/api/v1/events/c-2").status_code == 200
    from apps.workflows.engine import process_event

    process_event(Event.objects.get().pk)
    assert Run.objects.count() == 0
    assert Event.objects.get().status == "cancelled"


def test_bulk_trigger(api, comment_workflow, django_capture_on_commit_callbacks):
    events = [{"workflow": "comment-created", "to": [f"u{i}"], "transaction_id": f"b-{i}"} for i in range(5)]
    events.append({"workflow": "comment-created", "to": ["u0"], "transaction_id": "b-0"})
    events.append({"workflow": "unknown", "to": ["u0"]})
    with django_capture_on_commit_callbacks(execute=True):
        response = api.post("/api/v1/events/bulk", {"events": events}, format="json")
    assert response.status_code == 202
    statuses = [item["status"] for item in response.json()["data"]]
    assert statuses == ["accepted"] * 5 + ["duplicate", "error"]
    assert response.json()["data"][6]["error"]["code"] == "workflow_not_found"
    assert InboxMessage.objects.count() == 5


def test_bulk_validation_reports_items_by_index(api, comment_workflow):
    events = [{"workflow": "comment-created", "to": ["u1"]}, {"workflow": "comment-created", "to": []}]
    error = assert_error(api.post("/api/v1/events/bulk", {"events": events}, format="json"), 400, "validation_error")
    assert "1" in error["details"]["events"]
    assert Event.objects.count() == 0


def test_bulk_limit(api, comment_workflow):
    events = [{"workflow": "comment-created", "to": ["u1"]}] * 1001
    assert_error(api.post("/api/v1/events/bulk", {"events": events}, format="json"), 400, "validation_error")


def test_trace_query_count_is_fixed(
    api, comment_workflow, django_capture_on_commit_callbacks, django_assert_num_queries
):
    with django_capture_on_commit_callbacks(execute=True):
        api.post(
            TRIGGER,
            {"workflow": "comment-created", "to": [f"u{i}" for i in range(20)], "transaction_id": "q"},
            format="json",
        )
    with django_assert_num_queries(6):
        response = api.get("/api/v1/events/q")
    assert len(response.json()["runs"]) == 20
    assert mail.outbox == []
