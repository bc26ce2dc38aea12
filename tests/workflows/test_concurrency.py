"""Races that only a real multi-connection database can show (make test-services)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest
from django.db import connection, connections

from apps.core.errors import Conflict
from apps.delivery.models import Message
from apps.events.models import Event
from apps.events.services import TriggerRequest, event_trigger
from apps.inbox.models import InboxMessage
from apps.workflows import engine
from apps.workflows.models import Run
from tests.factories import SubscriberFactory
from tests.workflows.conftest import make_workflow, published_template

pytestmark = [pytest.mark.services, pytest.mark.django_db(transaction=True)]


def run_in_threads(count: int, target: Callable[[int], Any]) -> list[Any]:
    barrier = threading.Barrier(count)
    results: list[Any] = [None] * count

    def worker(index: int) -> None:
        try:
            barrier.wait()
            results[index] = target(index)
        except BaseException as exc:
            results[index] = exc
        finally:
            connections.close_all()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return results


@pytest.fixture
def ping_flow(tenant: Any, monkeypatch: Any) -> Any:
    monkeypatch.setattr("apps.inbox.realtime._send_all", lambda *args: None)
    env = tenant.environment
    published_template(env, "ping", "in_app", title_en="Ping", body_en="")
    make_workflow(env, "ping", [{"id": "inbox", "type": "in_app", "template": "ping"}])
    return env


def test_same_transaction_id_from_many_connections_is_accepted_once(ping_flow, settings):
    assert connection.vendor == "postgresql"
    settings.CLARION_TASKS_EAGER = False
    from unittest import mock

    with mock.patch("apps.core.tasks.enqueue"):
        results = run_in_threads(
            6,
            lambda i: event_trigger(
                environment=ping_flow, request=TriggerRequest("ping", ["u1"], {"i": i}, transaction_id="same")
            ),
        )
    accepted = [r for r in results if isinstance(r, Event)]
    conflicts = [r for r in results if isinstance(r, Conflict)]
    assert len(accepted) == 1, results
    assert len(conflicts) == 5
    assert Event.objects.count() == 1


def test_workers_racing_on_the_same_runs_send_each_message_once(ping_flow):
    subscribers = [SubscriberFactory(environment=ping_flow) for _ in range(200)]
    event = Event.objects.create(
        environment=ping_flow,
        transaction_id="race",
        workflow=ping_flow.workflows.get(),
        workflow_version=ping_flow.workflows.get().published_version,
        recipients=[{"subscriber_id": s.subscriber_id} for s in subscribers],
    )
    # Four workers all fan out the same event and advance the same runs at the same moment
    # (what at-least-once delivery of tasks can produce).
    results = run_in_threads(4, lambda i: engine.process_event(event.pk))
    assert not [r for r in results if isinstance(r, BaseException)], results
    run_ids = list(Run.objects.values_list("pk", flat=True))
    results = run_in_threads(4, lambda i: engine.advance_runs(run_ids))
    assert not [r for r in results if isinstance(r, BaseException)], results

    assert Run.objects.count() == 200
    assert set(Run.objects.values_list("status", flat=True)) == {Run.Status.COMPLETED}
    assert InboxMessage.objects.count() == 200
    assert Message.objects.count() == 200
