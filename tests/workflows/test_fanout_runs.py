"""fan_out_event creates one pending run per recipient, chunk by chunk, and hands each chunk's
pending runs to the engine: exactly once across a resumed fan-out, nothing after a cancellation,
a fixed number of statements per chunk."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.db import connection

from apps.events.models import Event
from apps.workflows.engine import fanout
from apps.workflows.models import Run
from tests.factories import TopicFactory, TopicSubscriptionFactory
from tests.workflows.conftest import make_workflow, published_template

pytestmark = pytest.mark.django_db

LEASE = timedelta(seconds=20)


@pytest.fixture
def topic_event(tenant: Any, settings: Any) -> tuple[Event, list[int]]:
    settings.CLARION = {**settings.CLARION, "FANOUT_CHUNK_SIZE": 4}
    env = tenant.environment
    published_template(env, "ping", "in_app", title_en="Ping", body_en="")
    workflow = make_workflow(env, "ping", [{"id": "inbox", "type": "in_app", "template": "ping"}])
    topic = TopicFactory(environment=env, key="news")
    members = sorted(TopicSubscriptionFactory(topic=topic).subscriber.pk for _ in range(10))
    event = Event.objects.create(
        environment=env,
        transaction_id="fan-1",
        workflow=workflow,
        workflow_version_id=workflow.published_version_id,
        recipients=[{"topic": "news"}],
    )
    return event, members


@pytest.fixture
def handed(monkeypatch: pytest.MonkeyPatch) -> list[list[int]]:
    """The run ids of each advance_runs task the fan-out enqueues (not run)."""
    sent: list[list[int]] = []
    monkeypatch.setattr(fanout, "enqueue", lambda task, run_ids: sent.append(sorted(run_ids)))
    return sent


def test_every_recipient_gets_one_pending_run_handed_over_once(topic_event, handed):
    event, members = topic_event
    fanout.fan_out_event(event, LEASE)
    runs = Run.objects.filter(event=event)
    assert sorted(runs.values_list("subscriber_id", flat=True)) == members
    assert set(runs.values_list("status", "step_index", "attempts", "environment_id", "workflow_version_id")) == {
        ("pending", 0, 0, event.environment_id, event.workflow_version_id)
    }
    assert all(run.step_results == {} and run.claim_token is None for run in runs)
    assert [len(ids) for ids in handed] == [4, 4, 2]
    assert sorted(pk for ids in handed for pk in ids) == sorted(runs.values_list("pk", flat=True))
    event.refresh_from_db()
    assert (event.status, event.recipient_count) == (Event.Status.PROCESSED, 10)


def test_a_resumed_fan_out_skips_existing_runs_and_hands_over_only_pending_ones(topic_event, handed):
    """A worker died mid fan-out: its runs exist, one already walked; the next worker creates the
    rest and hands over the pending ones (the finished run is not walked again)."""
    event, members = topic_event
    done = Run.objects.create(
        environment_id=event.environment_id,
        event=event,
        workflow_version_id=event.workflow_version_id,
        subscriber_id=members[0],
        status=Run.Status.COMPLETED,
    )
    pending = Run.objects.create(
        environment_id=event.environment_id,
        event=event,
        workflow_version_id=event.workflow_version_id,
        subscriber_id=members[1],
    )
    fanout.fan_out_event(event, LEASE)
    assert Run.objects.filter(event=event).count() == 10
    all_handed = [pk for ids in handed for pk in ids]
    assert pending.pk in all_handed and done.pk not in all_handed
    assert len(all_handed) == len(set(all_handed)) == 9


def test_a_cancelled_event_gets_no_run(topic_event, handed):
    event, _ = topic_event
    Event.objects.filter(pk=event.pk).update(status=Event.Status.CANCELLED)
    fanout.fan_out_event(event, LEASE)
    assert not Run.objects.filter(event=event).exists()
    assert handed == []


def test_statements_per_chunk_are_fixed(topic_event, handed, django_assert_num_queries):
    """Per chunk: the recipients' page, the runs (PostgreSQL: one INSERT … RETURNING; elsewhere a
    cancellation check, the insert and a read-back) and the lease renewal; then the final count
    and the event marked processed."""
    event, _ = topic_event
    per_chunk = 3 if connection.vendor == "postgresql" else 5
    if connection.vendor != "postgresql":
        per_chunk += 2  # SAVEPOINT / RELEASE of the atomic block inside the test's transaction
    # 3 chunks, then one empty page, the count and the finish
    with django_assert_num_queries(3 * per_chunk + 3):
        fanout.fan_out_event(event, LEASE)
    assert Run.objects.filter(event=event).count() == 10
