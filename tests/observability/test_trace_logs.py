"""One grep of a transaction id follows a notification from the trigger to the provider; the
counters of the hot paths move once per request, chunk and message."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
from prometheus_client import REGISTRY

from apps.observability.logs import bind_chunk_log_context, clear_log_context, formatter
from tests.factories import SubscriberFactory
from tests.workflows.conftest import make_workflow, published_template


@pytest.fixture
def json_lines() -> Iterator[Any]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter(json=True))
    root = logging.getLogger()
    root.addHandler(handler)
    clear_log_context()
    try:
        yield lambda: [json.loads(line) for line in stream.getvalue().splitlines() if line.startswith("{")]
    finally:
        root.removeHandler(handler)
        clear_log_context()


def _sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


@pytest.fixture
def welcome(tenant: Any) -> Any:
    env = tenant.environment
    published_template(
        env, "welcome-email", "email", subject_en="Welcome {{ subscriber.first_name }}", body_en="<p>hi</p>"
    )
    SubscriberFactory(environment=env, subscriber_id="ada", email="ada@example.com", first_name="Ada")
    return make_workflow(env, "welcome", [{"id": "mail", "type": "email", "template": "welcome-email"}])


def test_one_grep_of_a_transaction_id_follows_it_from_the_trigger_to_the_provider(
    tenant: Any, welcome: Any, json_lines: Any, django_capture_on_commit_callbacks: Any
) -> None:
    events_before = _sample("clarion_events_total", workflow="welcome")
    sent_before = _sample("clarion_messages_total", channel="email", status="sent", provider="default")
    decisions_before = _sample("clarion_step_decisions_total", type="email", decision="executed", reason="queued")

    with django_capture_on_commit_callbacks(execute=True):
        response = tenant.client.post(
            "/api/v1/events/trigger",
            {"workflow": "welcome", "to": ["ada"], "transaction_id": "order-1234"},
            format="json",
        )
    assert response.status_code == 202, response.content

    lines = [line for line in json_lines() if "order-1234" in json.dumps(line)]
    messages = [line["message"] for line in lines]
    assert "event accepted" in messages, messages
    [sent] = [line for line in lines if line["message"] == "message sent"]
    assert sent["transaction_id"] == "order-1234"
    assert sent["environment"] == tenant.environment.pk
    assert sent["provider"] == "default" and sent["channel"] == "email"
    assert isinstance(sent["message_id"], int) and isinstance(sent["run_id"], int)
    assert all(line.get("environment") == tenant.environment.pk for line in lines if "environment" in line)

    assert _sample("clarion_events_total", workflow="welcome") == events_before + 1
    assert _sample("clarion_messages_total", channel="email", status="sent", provider="default") == sent_before + 1
    assert _sample("clarion_delivery_seconds_count", provider="default") >= 1
    assert (
        _sample("clarion_step_decisions_total", type="email", decision="executed", reason="queued")
        >= decisions_before + 1
    )


def test_a_chunk_of_one_event_binds_its_transaction_id_and_of_several_their_list(json_lines: Any) -> None:
    event_a = SimpleNamespace(transaction_id="tx-a", environment_id=1)
    event_b = SimpleNamespace(transaction_id="tx-b", environment_id=1)
    runs = [SimpleNamespace(pk=pk, event_id=1, event=event_a) for pk in (10, 11)]
    bind_chunk_log_context(runs)
    logging.getLogger("apps.workflows").warning("one event")
    bind_chunk_log_context([*runs, SimpleNamespace(pk=12, event_id=2, event=event_b)])
    logging.getLogger("apps.workflows").warning("two events")
    bind_chunk_log_context(runs[:1])
    logging.getLogger("apps.workflows").warning("one run")

    one, two, single = json_lines()
    assert one["transaction_id"] == "tx-a" and one["run_ids"] == "10..11 (2)" and "transaction_ids" not in one
    assert two["transaction_ids"] == ["tx-a", "tx-b"] and "transaction_id" not in two
    assert single["run_id"] == 10 and "run_ids" not in single and single["transaction_id"] == "tx-a"


def test_a_chunk_whose_events_are_not_loaded_costs_no_query(
    tenant: Any, welcome: Any, django_assert_num_queries: Any, json_lines: Any
) -> None:
    from apps.events.models import Event
    from apps.workflows.models import Run

    event = Event.objects.create(
        environment=tenant.environment,
        transaction_id="not-loaded",
        workflow=welcome,
        workflow_version_id=welcome.published_version_id,
        recipients=[{"subscriber_id": "ada"}],
    )
    Run.objects.create(
        environment=tenant.environment,
        event=event,
        workflow_version_id=welcome.published_version_id,
        subscriber=tenant.environment.subscribers.get(subscriber_id="ada"),
    )
    runs = list(Run.objects.all())
    with django_assert_num_queries(0):
        bind_chunk_log_context(runs)
    runs[0].event = event
    bind_chunk_log_context(runs)
    logging.getLogger("apps.workflows").warning("loaded")
    assert json_lines()[-1]["transaction_id"] == "not-loaded"
