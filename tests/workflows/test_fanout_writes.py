"""The fan-out's write path: a chunk costs the same statements whatever its size, renders what
reads nothing of the subscriber once, and writes exactly the rows and trace it did before."""

from __future__ import annotations

from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from apps.core import sandbox
from apps.core.bulk import rows_insert
from apps.delivery.models import Message
from apps.events.models import Event
from apps.inbox.models import InboxMessage
from apps.workflows import engine
from apps.workflows.models import Run, StepRun
from apps.workflows.selectors import event_runs_data
from tests.factories import CategoryFactory, SubscriberFactory
from tests.workflows.conftest import make_workflow, published_template

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _no_push(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("apps.inbox.realtime._send_all", lambda *args: None)


def _event(env: Any, subscribers: list[Any], transaction_id: str, payload: dict[str, Any] | None = None) -> Event:
    workflow = env.workflows.get()
    event = Event.objects.create(
        environment=env,
        transaction_id=transaction_id,
        workflow=workflow,
        workflow_version_id=workflow.published_version_id,
        payload=payload or {"order": 42},
        recipients=[{"subscriber_id": s.subscriber_id} for s in subscribers],
    )
    Run.objects.bulk_create(
        [
            Run(environment=env, event=event, workflow_version_id=event.workflow_version_id, subscriber=s)
            for s in subscribers
        ]
    )
    return event


def _advance(event: Event, capture: Any) -> int:
    run_ids = list(Run.objects.filter(event=event).order_by("pk").values_list("pk", flat=True))
    with CaptureQueriesContext(connection) as queries, capture(execute=True):
        engine.advance_runs(run_ids)
    return len(queries.captured_queries)


def test_a_chunk_costs_the_same_statements_whatever_its_size(tenant, django_capture_on_commit_callbacks):
    # PostgreSQL: one COPY per table; SQLite: one INSERT per table up to Django's 999 parameters
    # per statement (35 messages), so the bigger chunk stays below that there.
    size = 120 if connection.vendor == "postgresql" else 30
    env = tenant.environment
    CategoryFactory(environment=env, key="news")
    published_template(
        env, "ping", "in_app", title_en="Order {{ payload.order }}", body_en="Hi {{ subscriber.first_name }}"
    )
    make_workflow(env, "ping", [{"id": "inbox", "type": "in_app", "template": "ping"}], "news")
    one = _advance(_event(env, [SubscriberFactory(environment=env)], "one"), django_capture_on_commit_callbacks)
    many = _advance(
        _event(env, [SubscriberFactory(environment=env) for _ in range(size)], "many"),
        django_capture_on_commit_callbacks,
    )
    assert one == many
    assert InboxMessage.objects.count() == Message.objects.count() == StepRun.objects.count() == size + 1


def test_what_reads_only_the_event_is_rendered_once_per_chunk(tenant, django_capture_on_commit_callbacks, monkeypatch):
    env = tenant.environment
    published_template(
        env,
        "ping",
        "in_app",
        title_en="Order {{ payload.order }} shipped",
        body_en="Hi {{ subscriber.first_name }}, order {{ payload.order }}",
        action_url="https://shop.example/orders/{{ payload.order }}",
    )
    make_workflow(env, "ping", [{"id": "inbox", "type": "in_app", "template": "ping"}])
    subscribers = [SubscriberFactory(environment=env, first_name=f"N{i}") for i in range(20)]
    rendered: list[str] = []
    original = sandbox.render_string

    def counting(source: str, *args: Any, **kwargs: Any) -> str:
        rendered.append(source)
        return original(source, *args, **kwargs)

    monkeypatch.setattr("apps.templates.rendering.render_string", counting)
    _advance(_event(env, subscribers, "t"), django_capture_on_commit_callbacks)

    assert rendered.count("Order {{ payload.order }} shipped") == 1
    assert rendered.count("https://shop.example/orders/{{ payload.order }}") == 1
    assert rendered.count("Hi {{ subscriber.first_name }}, order {{ payload.order }}") == 20
    rows = {i.subscriber_id: i for i in InboxMessage.objects.all()}
    for s in subscribers:
        assert rows[s.pk].title == "Order 42 shipped"
        assert rows[s.pk].body == f"Hi {s.first_name}, order 42"
        assert rows[s.pk].action_url == "https://shop.example/orders/42"


def test_two_events_in_one_chunk_render_their_own_payloads(tenant, django_capture_on_commit_callbacks):
    env = tenant.environment
    published_template(env, "ping", "in_app", title_en="Order {{ payload.order }}", body_en="")
    make_workflow(env, "ping", [{"id": "inbox", "type": "in_app", "template": "ping"}])
    subscribers = [SubscriberFactory(environment=env) for _ in range(3)]
    first = _event(env, subscribers, "a", {"order": 1})
    second = _event(env, subscribers, "b", {"order": 2})
    run_ids = list(Run.objects.order_by("pk").values_list("pk", flat=True))
    with django_capture_on_commit_callbacks(execute=True):
        engine.advance_runs(run_ids)
    titles = {(i.data["transaction_id"], i.title) for i in InboxMessage.objects.all()}
    assert titles == {("a", "Order 1"), ("b", "Order 2")}
    assert {r.event_id for r in Run.objects.filter(status="completed")} == {first.pk, second.pk}


def test_the_trace_reads_as_before(tenant, django_capture_on_commit_callbacks):
    """Every recipient's decisions and reasons, their messages, in the order they were taken."""
    env = tenant.environment
    published_template(env, "ping", "in_app", title_en="Order {{ payload.order }}", body_en="b")
    published_template(env, "mail", "email", subject_en="S", body_en="<p>B</p>")
    make_workflow(
        env,
        "ping",
        [
            {"id": "inbox", "type": "in_app", "template": "ping"},
            {"id": "skip", "type": "email", "template": "mail", "if": "payload.order > 100"},
            {"id": "mail", "type": "email", "template": "mail"},
        ],
    )
    with_email = SubscriberFactory(environment=env, subscriber_id="with", email="w@example.com")
    without = SubscriberFactory(environment=env, subscriber_id="without", email="")
    event = _event(env, [with_email, without], "t")
    _advance(event, django_capture_on_commit_callbacks)
    runs = {r["subscriber_id"]: r for r in event_runs_data(event=event, limit=10)}
    assert [(s["step"], s["type"], s["decision"], s["reason"]) for s in runs["with"]["steps"]] == [
        ("inbox", "in_app", "executed", "sent"),
        ("skip", "email", "skipped", "condition_false"),
        ("mail", "email", "executed", "queued"),
    ]
    assert [(s["step"], s["decision"], s["reason"]) for s in runs["without"]["steps"]] == [
        ("inbox", "executed", "sent"),
        ("skip", "skipped", "condition_false"),
        ("mail", "skipped", "no_address"),
    ]
    assert runs["with"]["steps"][0]["detail"] == {
        "channel": "in_app",
        "template": "ping",
        "template_version": 1,
        "template_policy": "latest",
        "locale": "en",
    }
    assert runs["with"]["steps"][1]["detail"] == {"condition": "payload.order > 100"}
    assert all(s["at"] is not None for r in runs.values() for s in r["steps"])
    assert [(m["step"], m["channel"], m["recipient"]) for m in runs["with"]["messages"]] == [
        ("inbox", "in_app", "with"),
        ("mail", "email", "w@example.com"),
    ]
    assert runs["with"]["messages"][0]["status"] == "sent"
    inbox = Message.objects.get(run__subscriber=with_email, channel="in_app")
    assert inbox.provider == "inbox" and inbox.sent_at is not None and inbox.template_version_id is not None
    assert inbox.inbox_message.title == "Order 42"


def test_rows_insert_fills_defaults_and_returns_keys_in_order(tenant):
    subscribers = [SubscriberFactory(environment=tenant.environment) for _ in range(3)]
    rows = [
        {
            "environment_id": tenant.environment.pk,
            "subscriber_id": s.pk,
            "title": f"t{i}",
            "data": {"n": i, "text": "quote ' and \\ backslash\ttab"},
        }
        for i, s in enumerate(subscribers)
    ]
    pks = rows_insert(InboxMessage, rows)
    stored = {m.pk: m for m in InboxMessage.objects.all()}
    assert sorted(pks) == sorted(stored) and len(set(pks)) == 3
    for pk, row in zip(pks, rows, strict=True):
        message = stored[pk]
        assert (message.subscriber_id, message.title, message.data) == (row["subscriber_id"], row["title"], row["data"])
        assert message.actions == [] and message.tags == [] and message.body == "" and message.read_at is None
        assert message.created_at is not None and message.seq > 0
    assert rows_insert(InboxMessage, []) == []
    assert rows_insert(InboxMessage, rows[:1], returning=False) == []
    assert InboxMessage.objects.count() == 4
