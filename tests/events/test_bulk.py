"""The bulk trigger: a fixed number of statements per request, per-item results as before."""

from __future__ import annotations

from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from apps.events import services
from apps.events.models import Event
from apps.events.services import TriggerRequest
from apps.subscribers.models import Subscriber
from apps.workflows.services import workflow_upsert
from tests.factories import SubscriberFactory, TopicFactory

pytestmark = pytest.mark.django_db

BULK = "/api/v1/events/bulk"


def _bulk(api: Any, events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    response = api.post(BULK, {"events": events}, format="json")
    assert response.status_code == 202, response.content
    return response.json()["data"]


def _statements(api: Any, events: list[dict[str, Any]]) -> int:
    with CaptureQueriesContext(connection) as queries:
        _bulk(api, events)
    return len(queries)


def _rich(prefix: str, count: int) -> list[dict[str, Any]]:
    """Every kind of item: ids, inline subscribers, a topic, actors by id and with fields."""
    return [
        {
            "workflow": "comment-created",
            "to": [f"{prefix}-{i}", {"subscriber_id": f"{prefix}-in-{i}", "first_name": "Ada"}, {"topic": "team"}],
            "actor": f"{prefix}-actor" if i % 2 else {"subscriber_id": f"{prefix}-boss", "last_name": "L"},
            "payload": {"post_title": "t", "n": i},
            "transaction_id": f"{prefix}-tx-{i}",
        }
        for i in range(count)
    ]


def test_statement_count_does_not_grow_with_the_number_of_events(api, tenant, comment_workflow, settings):
    settings.CLARION_TASKS_EAGER = False  # count the enqueue too (ORM broker: one INSERT for every task)
    TopicFactory(environment=tenant.environment, key="team")
    SubscriberFactory(environment=tenant.environment, subscriber_id="small-actor")
    SubscriberFactory(environment=tenant.environment, subscriber_id="large-actor")
    # SQLite's 999-parameter limit splits an INSERT of more than ~60 events; PostgreSQL never does.
    many = 300 if connection.vendor == "postgresql" else 40
    small = _statements(api, _rich("small", 3))
    large = _statements(api, _rich("large", many))
    assert small == large
    assert Event.objects.count() == 3 + many


def test_bulk_of_a_thousand_runs_a_bounded_number_of_statements(
    api, tenant, comment_workflow, settings, django_assert_max_num_queries
):
    settings.CLARION_TASKS_EAGER = False
    events = [{"workflow": "comment-created", "to": [f"u{i}"], "transaction_id": f"t-{i}"} for i in range(1000)]
    # auth, workflows, topics: none, transaction ids taken, INSERT of the events, queue rows (ORM broker), the
    # transaction (a savepoint under the test's transaction); SQLite splits the INSERT by its parameter limit.
    limit = (
        8
        if connection.vendor == "postgresql"
        else 8 + 1000 // max(1, connection.ops.bulk_batch_size([f for f in Event._meta.concrete_fields], [None] * 1000))
    )
    with django_assert_max_num_queries(limit):
        data = _bulk(api, events)
    assert [item["status"] for item in data] == ["accepted"] * 1000
    assert Event.objects.count() == 1000


def test_per_item_results_keep_the_contract(api, tenant, comment_workflow):
    env = tenant.environment
    workflow_upsert(
        environment=env,
        key="strict",
        name="strict",
        steps=[{"id": "inbox", "type": "in_app", "template": "comment-in-app"}],
        payload_schema={"type": "object", "required": ["n"], "properties": {"n": {"type": "integer"}}},
        publish=True,
    )
    workflow_upsert(environment=env, key="draft", name="draft", steps=[])
    services.event_trigger(environment=env, request=TriggerRequest("comment-created", ["x"], {}, transaction_id="old"))
    events = [
        {"workflow": "comment-created", "to": ["a"], "transaction_id": "new-1"},
        {"workflow": "comment-created", "to": ["a"], "transaction_id": "old"},  # taken before
        {"workflow": "comment-created", "to": ["a"], "transaction_id": "new-1"},  # repeated in this request
        {"workflow": "missing", "to": ["a"], "transaction_id": "m"},
        {"workflow": "draft", "to": ["a"]},
        {"workflow": "strict", "to": ["a"], "payload": {"n": "not a number"}, "transaction_id": "bad-payload"},
        {"workflow": "strict", "to": ["a"], "payload": {"n": 1}},
        {"workflow": "comment-created", "to": [{"topic": "nope"}], "transaction_id": "bad-topic"},
    ]
    data = _bulk(api, events)
    assert [(d["transaction_id"], d["status"]) for d in data] == [
        ("new-1", "accepted"),
        ("old", "duplicate"),
        ("new-1", "duplicate"),
        ("m", "error"),
        (None, "error"),
        ("bad-payload", "error"),
        (data[6]["transaction_id"], "accepted"),
        ("bad-topic", "error"),
    ]
    assert data[6]["transaction_id"]  # generated
    assert data[0]["error"] is None
    duplicate = {
        "code": "duplicate_transaction",
        "message": "An event with transaction_id 'old' was already accepted; it will not run twice.",
        "details": {"transaction_id": "old"},
    }
    assert data[1]["error"] == duplicate
    assert data[2]["error"]["details"] == {"transaction_id": "new-1"}
    assert [d["error"]["code"] for d in data[3:6]] == [
        "workflow_not_found",
        "workflow_not_published",
        "invalid_payload",
    ]
    assert data[7]["error"] == {
        "code": "unknown_topic",
        "message": "Some recipients are topics that do not exist.",
        "details": {"topics": ["nope"]},
    }
    assert set(Event.objects.values_list("transaction_id", flat=True)) == {"old", "new-1", data[6]["transaction_id"]}


def test_only_accepted_items_write_their_subscribers(api, tenant, comment_workflow):
    env = tenant.environment
    services.event_trigger(environment=env, request=TriggerRequest("comment-created", ["x"], {}, transaction_id="old"))
    SubscriberFactory(environment=env, subscriber_id="known", first_name="Known")
    data = _bulk(
        api,
        [
            {
                "workflow": "comment-created",
                "to": [{"subscriber_id": "dup", "first_name": "D"}],
                "transaction_id": "old",
            },
            {"workflow": "comment-created", "to": [{"subscriber_id": "err", "first_name": "E"}, {"topic": "nope"}]},
            {
                "workflow": "comment-created",
                "to": [{"subscriber_id": "ok", "first_name": "O"}, {"subscriber_id": "ok", "last_name": "K"}],
                "actor": "known",
                "transaction_id": "a1",
            },
            {"workflow": "comment-created", "to": ["ok"], "actor": {"subscriber_id": "boss", "first_name": "B"}},
            {"workflow": "comment-created", "to": ["ok"], "actor": "nobody", "transaction_id": "a3"},
        ],
    )
    assert [d["status"] for d in data] == ["duplicate", "error", "accepted", "accepted", "accepted"]
    names = dict(Subscriber.objects.filter(environment=env).values_list("subscriber_id", "first_name"))
    assert "dup" not in names and "err" not in names
    assert names["ok"] == "O" and names["boss"] == "B"
    assert Subscriber.objects.get(environment=env, subscriber_id="ok").last_name == "K"
    actors = {e.transaction_id: e.actor for e in Event.objects.filter(transaction_id__in=["a1", "a3"])}
    assert actors["a1"]["subscriber_id"] == "known" and actors["a1"]["first_name"] == "Known"  # its context
    assert actors["a3"] == {"subscriber_id": "nobody"}
    assert Event.objects.get(transaction_id=data[3]["transaction_id"]).actor == {
        "subscriber_id": "boss",
        "first_name": "B",
    }


def test_a_transaction_id_taken_concurrently_is_a_duplicate(api, tenant, comment_workflow, monkeypatch):
    """Another request commits the same transaction id between the check and the INSERT: the row is
    skipped by ON CONFLICT DO NOTHING and the item reported as a duplicate, never an error."""
    env = tenant.environment
    original = services._insert_events
    raced: list[bool] = []

    def racing(environment, candidates):
        if not raced:
            raced.append(True)
            services.event_trigger(
                environment=env, request=TriggerRequest("comment-created", ["x"], {}, transaction_id="r")
            )
        return original(environment, candidates)

    monkeypatch.setattr(services, "_insert_events", racing)
    data = _bulk(
        api,
        [
            {"workflow": "comment-created", "to": ["a"], "transaction_id": "r"},
            {"workflow": "comment-created", "to": ["a"], "transaction_id": "s"},
        ],
    )
    assert [d["status"] for d in data] == ["duplicate", "accepted"]
    assert data[0]["error"]["code"] == "duplicate_transaction"
    assert Event.objects.filter(transaction_id="r").count() == 1


def test_accepted_events_are_enqueued_together_after_commit(
    api, tenant, comment_workflow, settings, monkeypatch, django_capture_on_commit_callbacks
):
    settings.CLARION_TASKS_EAGER = False
    sent: list[tuple[str, list[Any]]] = []
    monkeypatch.setattr(
        "apps.core.tasks._broker_send_many", lambda func, args_list: sent.append((func, [list(a) for a in args_list]))
    )
    monkeypatch.setattr(services, "ENQUEUE_CHUNK", 2)
    settings.Q_CLUSTER = {**settings.Q_CLUSTER, "orm": None}  # as on Redis: sent after commit
    events = [{"workflow": "comment-created", "to": ["a"], "transaction_id": f"e{i}"} for i in range(5)]
    events.append({"workflow": "missing", "to": ["a"]})
    with django_capture_on_commit_callbacks(execute=True):
        _bulk(api, events)
    ids = list(Event.objects.order_by("pk").values_list("pk", flat=True))
    assert sent == [("apps.workflows.tasks.process_events", [[ids[0:2]], [ids[2:4]], [ids[4:5]]])]


def test_process_events_runs_every_event(api, tenant, comment_workflow, django_capture_on_commit_callbacks):
    from apps.inbox.models import InboxMessage

    with django_capture_on_commit_callbacks(execute=True):
        data = _bulk(api, [{"workflow": "comment-created", "to": [f"u{i}"]} for i in range(3)])
    assert [d["status"] for d in data] == ["accepted"] * 3
    assert InboxMessage.objects.count() == 3
    assert set(Event.objects.values_list("status", flat=True)) == {"processed"}


def test_items_are_validated_independently(api, comment_workflow):
    """One validator serves every item: nothing of an item (actor, cancellation key, payload) leaks into the next."""
    data = _bulk(
        api,
        [
            {"workflow": "comment-created", "to": ["a"], "actor": "boss", "cancellation_key": "c", "payload": {"x": 1}},
            {"workflow": "comment-created", "to": ["b"]},
        ],
    )
    second = Event.objects.get(transaction_id=data[1]["transaction_id"])
    assert (second.actor, second.cancellation_key, second.payload) == (None, "", {})


def test_invalid_items_are_reported_by_index_with_the_serializers_messages(api, comment_workflow):
    response = api.post(
        BULK,
        {
            "events": [
                {"workflow": "comment-created", "to": ["a"]},
                {"workflow": "not a slug!", "to": ["a"]},
                {"workflow": "comment-created", "to": [""], "transaction_id": ""},
            ]
        },
        format="json",
    )
    assert response.status_code == 400
    details = response.json()["error"]["details"]["events"]
    assert set(details) == {"1", "2"}
    assert "workflow" in details["1"]
    assert set(details["2"]) == {"to", "transaction_id"}
    assert Event.objects.count() == 0


def test_an_item_with_unstorable_text_that_also_breaks_the_schema_is_refused_with_the_request(api, comment_workflow):
    # Alone, text no database can store is the item's own error (the others are accepted) ...
    alone = api.post(
        "/api/v1/events/bulk",
        {"events": [{"workflow": "comment-created", "to": ["u1"], "payload": {"k\u0000": 1}}]},
        format="json",
    )
    assert alone.status_code == 202
    assert alone.json()["data"][0]["error"]["code"] == "invalid_json"

    # ... but an item that is schema-invalid besides is refused as it would be without its NUL.
    both = api.post(
        "/api/v1/events/bulk",
        {"events": [{"workflow": "80*", "to": ["u1"], "payload": {"k\u0000": 1}}]},
        format="json",
    )
    assert both.status_code == 400
    assert "workflow" in both.json()["error"]["details"]["events"]["0"]
