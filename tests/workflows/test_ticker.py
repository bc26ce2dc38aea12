"""The ticker starts due work on time, takes each item once, and resumes what a dead worker held."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import time_machine
from django.db import connection
from django.test.utils import CaptureQueriesContext

from apps.core.models import DeferredTask
from apps.events.models import Event
from apps.events.services import TriggerRequest, event_trigger
from apps.inbox.models import InboxMessage
from apps.templates.models import Template
from apps.workflows import engine
from apps.workflows.leases import LeaseHeartbeat
from apps.workflows.models import Run, StepRun, Workflow
from apps.workflows.ticker import runs_take_due, tick
from tests.factories import SubscriberFactory, TemplateVersionFactory
from tests.workflows.conftest import make_workflow, published_template

pytestmark = pytest.mark.django_db

START = datetime(2026, 3, 10, 10, 0, tzinfo=UTC)


@pytest.fixture
def clock() -> Iterator[Any]:
    with time_machine.travel(START, tick=False) as traveller:
        yield traveller


@pytest.fixture
def fire(tenant: Any, django_capture_on_commit_callbacks: Any) -> Any:
    def _fire(workflow: str, to: list[Any], payload: dict[str, Any] | None = None) -> Event:
        request = TriggerRequest(workflow=workflow, to=to, payload=payload or {})
        with django_capture_on_commit_callbacks(execute=True):
            return event_trigger(environment=tenant.environment, request=request)

    return _fire


@pytest.fixture
def ticks(django_capture_on_commit_callbacks: Any) -> Any:
    def _tick() -> dict[str, int]:
        with django_capture_on_commit_callbacks(execute=True):
            return tick()

    return _tick


@pytest.fixture
def delayed(tenant: Any) -> Any:
    env = tenant.environment
    published_template(env, "note", "in_app", title_en="v1 {{ payload.title | default('') }}", body_en="")
    make_workflow(
        env,
        "later",
        [{"id": "wait", "type": "delay", "for": "5s"}, {"id": "n", "type": "in_app", "template": "note"}],
    )
    SubscriberFactory(environment=env, subscriber_id="u1")
    return env


def test_a_delay_resumes_on_the_first_tick_after_it_is_due_and_only_once(delayed, fire, ticks, clock):
    run = Run.objects.get(event=fire("later", ["u1"]))
    assert run.status == Run.Status.WAITING

    clock.move_to(START + timedelta(seconds=4))
    assert ticks()["runs_due"] == 0
    clock.move_to(START + timedelta(seconds=5, milliseconds=100))
    assert ticks()["runs_due"] == 1

    run.refresh_from_db()
    assert run.status == Run.Status.COMPLETED
    assert InboxMessage.objects.count() == 1
    assert ticks() == {
        "tasks": 0,
        "events_orphaned": 0,
        "events_stalled": 0,
        "runs_due": 0,
        "runs_orphaned": 0,
        "runs_stalled": 0,
        "messages": 0,
    }
    # The trace says when the wait really ended, and how late that was.
    assert [(s.step_id, s.decision, s.reason) for s in run.step_runs.order_by("id")] == [
        ("wait", "waiting", "delay"),
        ("wait", "resumed", "delay_ended"),
        ("n", "executed", "sent"),
    ]
    resumed = run.step_runs.get(decision="resumed")
    assert resumed.detail["late_seconds"] == 0.1
    assert resumed.detail["until"] == (START + timedelta(seconds=5)).isoformat()


def test_a_due_run_is_handed_to_one_ticker_only(delayed, fire, clock):
    fire("later", ["u1"])
    clock.move_to(START + timedelta(seconds=6))

    first = runs_take_due(now=START + timedelta(seconds=6))
    second = runs_take_due(now=START + timedelta(seconds=6))

    assert (len(first[0]), second) == (1, ([], [], []))
    assert Run.objects.get().status == Run.Status.PENDING  # woken: a pending run any worker may claim


def test_a_run_whose_worker_died_resumes_after_its_lease_and_the_dead_worker_cannot_write(
    delayed, fire, ticks, clock, settings
):
    settings.CLARION = {**settings.CLARION, "RUN_LEASE_SECONDS": 20}
    run = Run.objects.get(event=fire("later", ["u1"]))
    clock.move_to(START + timedelta(seconds=6))
    runs_take_due(now=START + timedelta(seconds=6))
    dead_token, claimed = engine.claim_runs([run.pk])  # a worker takes it ... and is killed
    assert [r.pk for r in claimed] == [run.pk]

    clock.move_to(START + timedelta(seconds=6 + 19))
    assert ticks()["runs_orphaned"] == 0  # the lease still holds
    clock.move_to(START + timedelta(seconds=6 + 21))
    assert ticks()["runs_orphaned"] == 1

    run.refresh_from_db()
    assert run.status == Run.Status.COMPLETED
    assert InboxMessage.objects.count() == 1
    # The "dead" worker wakes up and tries to commit what it had: nothing is written twice.
    engine.commit_chunk(dead_token, claimed, engine.ChunkWrites(), START)
    assert InboxMessage.objects.count() == 1
    assert StepRun.objects.filter(run=run, reason="sent").count() == 1


def test_a_fan_out_whose_worker_died_is_resumed_by_the_ticker(tenant, delayed, clock, ticks, settings):
    settings.CLARION = {**settings.CLARION, "RUN_LEASE_SECONDS": 20}
    settings.CLARION_TASKS_EAGER = False  # keep the fan-out from running at trigger time
    settings.Q_CLUSTER = {k: v for k, v in settings.Q_CLUSTER.items() if k != "orm"}
    sent: list[tuple[str, tuple[Any, ...]]] = []
    import apps.core.tasks as tasks

    original = tasks._broker_send
    tasks._broker_send = lambda func, *args: sent.append((func, args))
    try:
        with pytest.MonkeyPatch.context():
            event = event_trigger(
                environment=tenant.environment, request=TriggerRequest(workflow="later", to=["u1"], payload={})
            )
    finally:
        tasks._broker_send = original
    # A worker claimed the fan-out and died before creating any run.
    Event.objects.filter(pk=event.pk).update(fanout_lease_until=START + timedelta(seconds=20))
    settings.CLARION_TASKS_EAGER = True

    clock.move_to(START + timedelta(seconds=10))
    assert ticks()["events_orphaned"] == 0
    clock.move_to(START + timedelta(seconds=21))
    assert ticks()["events_orphaned"] == 1

    event.refresh_from_db()
    assert event.status == Event.Status.PROCESSED
    assert Run.objects.filter(event=event).count() == 1


def test_a_trigger_accepted_while_the_broker_is_down_gets_202_and_starts_when_it_is_back(
    tenant, delayed, settings, django_capture_on_commit_callbacks
):
    settings.CLARION_TASKS_EAGER = False
    settings.Q_CLUSTER = {k: v for k, v in settings.Q_CLUSTER.items() if k != "orm"}  # the Redis broker's path
    import apps.core.tasks as tasks

    def broker_down(func: str, *args: Any) -> None:
        raise ConnectionError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")

    sent: list[tuple[str, tuple[Any, ...]]] = []
    original = tasks._broker_send
    tasks._broker_send = broker_down
    try:
        with django_capture_on_commit_callbacks(execute=True):
            response = tenant.client.post(
                "/api/v1/events/trigger", {"workflow": "later", "to": ["u1"], "payload": {}}, format="json"
            )
        assert response.status_code == 202, response.content
        event = Event.objects.get(transaction_id=response.json()["transaction_id"])
        kept = DeferredTask.objects.get()
        assert (kept.func, kept.args) == ("apps.workflows.tasks.process_event", [event.pk])

        tick()  # still down: kept, tried again later
        assert DeferredTask.objects.get().attempts == 1

        tasks._broker_send = lambda func, *args: sent.append((func, args))
        DeferredTask.objects.update(next_try_at=START)
        assert tick()["tasks"] == 1
    finally:
        tasks._broker_send = original
    assert sent == [("apps.workflows.tasks.process_event", (event.pk,))]
    assert not DeferredTask.objects.exists()


def test_an_idle_tick_costs_a_fixed_handful_of_queries(delayed, fire, clock):
    fire("later", ["u1"])  # one run waiting, not due
    with CaptureQueriesContext(connection) as queries:
        tick()
    assert len(queries) <= 10, [q["sql"] for q in queries]  # one indexed read per kind of due work


def test_a_run_renders_the_template_versions_pinned_when_its_event_started(delayed, tenant, fire, ticks, clock):
    event = fire("later", ["u1"], {"title": "hi"})
    event.refresh_from_db()
    template = Template.objects.get(environment=tenant.environment, key="note")
    assert event.template_versions == {"note": template.published_version_id}
    v2 = TemplateVersionFactory(template=template, number=2, title_en="v2 {{ payload.title }}", body_en="")
    template.published_version = v2
    template.save(update_fields=["published_version"])  # published during the delay

    clock.move_to(START + timedelta(seconds=6))
    ticks()

    assert InboxMessage.objects.get().title == "v1 hi"
    sent = StepRun.objects.get(step_id="n", reason="sent")
    assert sent.detail["template_version"] == 1
    assert sent.detail["template_policy"] == "pinned"


def test_use_latest_templates_renders_the_version_published_at_send_time(delayed, tenant, fire, ticks, clock):
    from apps.workflows.models import Workflow

    Workflow.objects.filter(key="later").update(use_latest_templates=True)
    event = fire("later", ["u1"], {"title": "hi"})
    event.refresh_from_db()
    assert event.template_versions == {}
    template = Template.objects.get(environment=tenant.environment, key="note")
    v2 = TemplateVersionFactory(template=template, number=2, title_en="v2 {{ payload.title }}", body_en="")
    template.published_version = v2
    template.save(update_fields=["published_version"])

    clock.move_to(START + timedelta(seconds=6))
    ticks()

    assert InboxMessage.objects.get().title == "v2 hi"
    sent = StepRun.objects.get(step_id="n", reason="sent")
    assert (sent.detail["template_version"], sent.detail["template_policy"]) == (2, "latest")


def test_the_heartbeat_renews_while_the_work_goes_on_and_costs_nothing_for_short_work() -> None:
    renewed = threading.Event()
    with LeaseHeartbeat(renewed.set, interval=0.01) as beat:
        assert renewed.wait(10)
    assert beat.beats >= 1

    calls: list[int] = []
    with LeaseHeartbeat(lambda: calls.append(1), interval=60) as idle:
        pass
    assert (calls, idle.beats) == ([], 0)


def test_renewing_a_lease_touches_only_the_runs_held_under_that_token(delayed, fire, clock, settings):
    settings.CLARION = {**settings.CLARION, "RUN_LEASE_SECONDS": 20}
    SubscriberFactory(environment=delayed, subscriber_id="u2")
    fire("later", ["u1", "u2"])
    clock.move_to(START + timedelta(seconds=6))
    runs_take_due(now=START + timedelta(seconds=6))
    first, second = Run.objects.order_by("pk")
    token, _ = engine.claim_runs([first.pk])
    engine.claim_runs([second.pk])

    clock.move_to(START + timedelta(seconds=16))
    assert engine.runs_renew_lease(token=token) == 1

    first.refresh_from_db()
    second.refresh_from_db()
    assert first.lease_until == START + timedelta(seconds=36)
    assert second.lease_until == START + timedelta(seconds=26)


def test_the_template_policy_is_set_through_the_api(delayed, tenant):
    response = tenant.client.put("/api/v1/workflows/later", {"use_latest_templates": True}, format="json")
    assert response.status_code == 200, response.content
    assert response.json()["use_latest_templates"] is True
    assert tenant.client.get("/api/v1/workflows/later").json()["use_latest_templates"] is True


def test_a_pending_run_whose_wake_up_was_lost_is_enqueued_again_once_per_stall_period(
    delayed, fire, ticks, clock, settings
):
    settings.CLARION = {**settings.CLARION, "STALL_SECONDS": 60}
    run = Run.objects.get(event=fire("later", ["u1"]))
    clock.move_to(START + timedelta(seconds=6))
    runs_take_due(now=START + timedelta(seconds=6))  # woken ... and its task lost with a killed cluster
    assert Run.objects.get().status == Run.Status.PENDING

    assert runs_take_due(now=START + timedelta(seconds=6 + 59))[2] == []
    assert runs_take_due(now=START + timedelta(seconds=6 + 61))[2] == [run.pk]
    assert runs_take_due(now=START + timedelta(seconds=6 + 62))[2] == []  # not again until another period

    clock.move_to(START + timedelta(seconds=6 + 61 + 61))
    assert ticks()["runs_stalled"] == 1
    run.refresh_from_db()
    assert run.status == Run.Status.COMPLETED


def test_an_event_whose_fan_out_wake_up_was_lost_is_started_again_once_per_stall_period(
    tenant, delayed, clock, ticks, settings
):
    settings.CLARION = {**settings.CLARION, "STALL_SECONDS": 60}
    from apps.events.fanout import events_take_unstarted

    event = Event.objects.create(
        environment=tenant.environment,
        transaction_id="lost",
        workflow=Workflow.objects.get(key="later"),
        workflow_version_id=Workflow.objects.get(key="later").published_version_id,
        recipients=[{"subscriber_id": "u1"}],
    )  # committed, its process_event task lost
    assert events_take_unstarted(now=START + timedelta(seconds=59), stalled_before=START - timedelta(seconds=1)) == []
    assert events_take_unstarted(now=START + timedelta(seconds=61), stalled_before=START + timedelta(seconds=1)) == [
        event.pk
    ]
    assert events_take_unstarted(now=START + timedelta(seconds=62), stalled_before=START + timedelta(seconds=2)) == []

    clock.move_to(START + timedelta(seconds=61 + 61))
    assert ticks()["events_stalled"] == 1
    event.refresh_from_db()
    assert event.status == Event.Status.PROCESSED
