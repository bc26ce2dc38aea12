"""Retention pruning (apps.core.retention + each app's retention.py) on a large trace.

One environment holds 5,000 finished runs of 50 events from 100 days ago, each with three step
runs, a settled message, its attempt, its callback and the inbox row that showed it (about 35,000
rows), plus live work that must survive: waiting runs, a waiting digest with a run held in it, an
unsettled message, a settled message of a waiting run. A second environment keeps everything.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest
from django.core.management import call_command
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from apps.core.retention import PruneRun, prune
from apps.delivery.models import DeliveryAttempt, Message, MessageEvent
from apps.events.models import Event, IdempotencyRecord
from apps.inbox.models import InboxMessage
from apps.subscribers.models import Subscriber
from apps.tenancy.models import Environment
from apps.workflows.models import DigestBucket, DigestEntry, Run, StepRun, Workflow, WorkflowVersion
from tests.factories import EnvironmentFactory

pytestmark = pytest.mark.django_db

OLD = timedelta(days=100)
EVENTS = 50
SUBSCRIBERS = 100  # runs per event


@dataclass
class Trace:
    environment: Environment
    finished_runs: int
    live_run_ids: set[int]
    held_run_id: int
    open_bucket_id: int
    closed_bucket_id: int
    unsettled_message_id: int
    live_run_message_id: int
    archived_old_id: int
    archived_recent_id: int


def _build_trace(environment: Environment, *, events: int, subscribers: int) -> Trace:
    now = timezone.now()
    old = now - OLD
    workflow = Workflow.objects.create(environment=environment, key="comment", name="Comment")
    version = WorkflowVersion.objects.create(workflow=workflow, number=1, steps=[])
    subs = Subscriber.objects.bulk_create(
        [Subscriber(environment=environment, subscriber_id=f"{environment.slug}-u{i}") for i in range(subscribers)]
    )
    # Written first (rows are numbered in the order they are written), archived long ago.
    archived_old = InboxMessage.objects.create(
        environment=environment, subscriber=subs[0], title="old", archived_at=now - timedelta(days=200)
    )
    InboxMessage.objects.filter(pk=archived_old.pk).update(created_at=now - timedelta(days=300))
    event_rows = Event.objects.bulk_create(
        [
            Event(
                environment=environment,
                transaction_id=f"tx-{i}",
                workflow=workflow,
                workflow_version=version,
                status=Event.Status.PROCESSED,
            )
            for i in range(events)
        ]
    )
    runs = Run.objects.bulk_create(
        [
            Run(
                environment=environment,
                event=event,
                workflow_version=version,
                subscriber=sub,
                status=Run.Status.COMPLETED,
                completed_at=old,
            )
            for event in event_rows
            for sub in subs
        ],
        batch_size=2000,
    )
    StepRun.objects.bulk_create(
        [
            StepRun(run=run, step_id=step, step_type="in_app", decision=StepRun.Decision.EXECUTED)
            for run in runs
            for step in ("a", "b", "c")
        ],
        batch_size=2000,
    )
    messages = Message.objects.bulk_create(
        [
            Message(
                environment=environment,
                run=run,
                step_id="a",
                channel="in_app",
                subscriber_id=run.subscriber_id,
                status=Message.Status.READ,
            )
            for run in runs
        ],
        batch_size=2000,
    )
    DeliveryAttempt.objects.bulk_create(
        [DeliveryAttempt(message=m, provider="in_app", status=DeliveryAttempt.Status.SUCCESS) for m in messages],
        batch_size=2000,
    )
    MessageEvent.objects.bulk_create(
        [
            MessageEvent(environment=environment, message=m, provider="x", event_type="opened", dedupe_key=str(m.pk))
            for m in messages
        ],
        batch_size=2000,
    )
    InboxMessage.objects.bulk_create(
        [InboxMessage(environment=environment, subscriber_id=m.subscriber_id, message=m, title="hi") for m in messages],
        batch_size=2000,
    )
    IdempotencyRecord.objects.create(
        environment=environment,
        key="k",
        request_fingerprint="f",
        method="POST",
        path="/x",
        response_status=202,
        response_body={},
    )

    # Live work, all of it old: none of it may go.
    live_event = Event.objects.create(
        environment=environment, transaction_id="live", workflow=workflow, workflow_version=version
    )
    live_runs = Run.objects.bulk_create(
        [
            Run(environment=environment, event=live_event, workflow_version=version, subscriber=sub, status=status)
            for sub, status in zip(subs[:3], (Run.Status.WAITING, Run.Status.PENDING, Run.Status.RUNNING), strict=True)
        ]
    )
    StepRun.objects.bulk_create(
        [StepRun(run=r, step_id="a", step_type="delay", decision=StepRun.Decision.WAITING) for r in live_runs]
    )
    live_run_message = Message.objects.create(
        environment=environment,
        run=live_runs[0],
        step_id="a",
        channel="email",
        subscriber=subs[0],
        status=Message.Status.DELIVERED,
    )
    # A finished run whose message is still queued (a retry waits for its backoff).
    unsettled_message = Message.objects.create(
        environment=environment, run=runs[1], step_id="b", channel="email", subscriber=subs[1]
    )
    # A waiting digest: an open bucket led by the waiting run, holding a finished run's message.
    open_bucket = DigestBucket.objects.create(
        environment=environment,
        subscriber=subs[0],
        workflow=workflow,
        scope="cat:news:email",
        leader_run=live_runs[0],
        opened_at=old,
        closes_at=old,
        last_event_at=old,
    )
    held_run = Run.objects.create(
        environment=environment,
        event=live_event,
        workflow_version=version,
        subscriber=subs[4],
        status=Run.Status.COMPLETED,
    )
    DigestEntry.objects.create(bucket=open_bucket, run=held_run, step_id="a", content={"subject": "held"})
    # A digest that was sent long ago: it goes, with its entries.
    closed_bucket = DigestBucket.objects.create(
        environment=environment,
        subscriber=subs[0],
        workflow=workflow,
        scope="wf:1:d:",
        status=DigestBucket.Status.SENT,
        leader_run=runs[0],
        opened_at=old,
        closes_at=old,
        last_event_at=old,
        closed_at=old,
    )
    DigestEntry.objects.create(bucket=closed_bucket, run=runs[0], step_id="d")
    archived_recent = InboxMessage.objects.create(
        environment=environment, subscriber=subs[0], title="recent", archived_at=now - timedelta(days=10)
    )

    # Age everything (auto_now fields: set through update()).
    Event.objects.filter(environment=environment).update(created_at=old)
    Run.objects.filter(environment=environment).update(updated_at=old, created_at=old)
    Message.objects.filter(environment=environment).update(updated_at=old, created_at=old)
    DeliveryAttempt.objects.filter(message__environment=environment).update(created_at=old)
    MessageEvent.objects.filter(environment=environment).update(received_at=old)
    IdempotencyRecord.objects.filter(environment=environment).update(created_at=old)
    return Trace(
        environment=environment,
        finished_runs=len(runs),
        live_run_ids={r.pk for r in live_runs},
        held_run_id=held_run.pk,
        open_bucket_id=open_bucket.pk,
        closed_bucket_id=closed_bucket.pk,
        unsettled_message_id=unsettled_message.pk,
        live_run_message_id=live_run_message.pk,
        archived_old_id=archived_old.pk,
        archived_recent_id=archived_recent.pk,
    )


def _rows(environment: Environment) -> dict[str, int]:
    return {
        "events": Event.objects.filter(environment=environment).count(),
        "runs": Run.objects.filter(environment=environment).count(),
        "step_runs": StepRun.objects.filter(run__environment=environment).count(),
        "messages": Message.objects.filter(environment=environment).count(),
        "attempts": DeliveryAttempt.objects.filter(message__environment=environment).count(),
        "callbacks": MessageEvent.objects.filter(environment=environment).count(),
        "inbox": InboxMessage.objects.filter(environment=environment).count(),
        "buckets": DigestBucket.objects.filter(environment=environment).count(),
        "idempotency": IdempotencyRecord.objects.filter(environment=environment).count(),
    }


@pytest.fixture
def big() -> Trace:
    return _build_trace(EnvironmentFactory(slug="big"), events=EVENTS, subscribers=SUBSCRIBERS)


@pytest.fixture
def kept() -> Trace:
    """Another environment with the same kind of old trace, kept forever."""
    environment = EnvironmentFactory(
        slug="kept",
        retention_trace_days=0,
        retention_messages_days=0,
        retention_delivery_days=0,
        retention_inbox_days=0,
    )
    return _build_trace(environment, events=2, subscribers=10)


def test_defaults_are_documented_values() -> None:
    environment = EnvironmentFactory()
    assert (
        environment.retention_trace_days,
        environment.retention_messages_days,
        environment.retention_delivery_days,
        environment.retention_inbox_days,
    ) == (90, 90, 30, 180)


def test_large_trace_is_pruned_in_bounded_batches_and_live_work_is_left_alone(big: Trace, kept: Trace) -> None:
    kept_before = _rows(kept.environment)
    assert _rows(big.environment)["step_runs"] == 3 * big.finished_runs + 3 > 15_000

    with CaptureQueriesContext(connection) as queries:
        run = prune(batch_size=1000, budget_seconds=3600)

    assert run.finished
    # Every DELETE/UPDATE statement touched at most one batch of rows, and the big tables took many.
    assert run.statements and max(rows for _, rows in run.statements) <= 1000
    writes = [
        q["sql"]
        for q in queries.captured_queries
        if q["sql"].startswith(("DELETE", "UPDATE")) and "analytics_counter" not in q["sql"]  # the fold (hook)
    ]
    assert len(writes) == len(run.statements)
    step_run_deletes = [rows for table, rows in run.statements if table == StepRun._meta.db_table and rows]
    assert len(step_run_deletes) >= 15  # 15,000 step runs, 1,000 per statement
    assert sum(step_run_deletes) == 3 * (big.finished_runs - 1)  # runs[1] keeps its queued message

    # What was due went, children before parents.
    totals = run.totals()
    assert totals["workflows.Run"] == big.finished_runs - 1
    assert totals["events.Event"] == EVENTS - 1  # the event of runs[1] keeps it
    assert totals["delivery.Message"] == big.finished_runs
    assert totals["events.IdempotencyRecord"] == 1
    assert not DigestBucket.objects.filter(pk=big.closed_bucket_id).exists()

    # Live work is untouched.
    assert set(
        Run.objects.filter(pk__in=big.live_run_ids | {big.held_run_id}).values_list("pk", flat=True)
    ) == big.live_run_ids | {big.held_run_id}
    assert StepRun.objects.filter(run_id__in=big.live_run_ids).count() == 3
    bucket = DigestBucket.objects.get(pk=big.open_bucket_id)
    assert bucket.status == DigestBucket.Status.OPEN and bucket.leader_run_id in big.live_run_ids
    assert DigestEntry.objects.filter(bucket=bucket, run_id=big.held_run_id).exists()
    assert Message.objects.filter(pk__in=[big.unsettled_message_id, big.live_run_message_id]).count() == 2
    assert Event.objects.filter(environment=big.environment, transaction_id="live").exists()

    # Inbox: the notification stays in the inbox without its message until archived + 180 days.
    assert not InboxMessage.objects.filter(pk=big.archived_old_id).exists()
    assert InboxMessage.objects.filter(pk=big.archived_recent_id).exists()
    after = _rows(big.environment)
    assert after["inbox"] == big.finished_runs + 1
    assert after["attempts"] == 0 and after["callbacks"] == 0

    # The environment that keeps everything lost nothing.
    assert _rows(kept.environment) == kept_before

    # A second pass finds nothing more to do.
    assert prune(batch_size=1000).totals() == {}


def test_pruning_is_scoped_to_the_environments_asked_for(big: Trace) -> None:
    other = _build_trace(EnvironmentFactory(slug="other"), events=2, subscribers=6)
    before = _rows(other.environment)
    run = prune(environments=["big"], batch_size=500)
    assert run.totals()["workflows.Run"] == big.finished_runs - 1
    assert all(key.startswith("big:") for key in run.counts)
    assert _rows(other.environment) == before


def test_small_batches_and_a_spent_budget(big: Trace) -> None:
    before = _rows(big.environment)
    spent = prune(batch_size=100, budget_seconds=0)
    assert not spent.finished and spent.statements == []
    assert _rows(big.environment) == before

    run = prune(batch_size=100, budget_seconds=3600)
    assert max(rows for _, rows in run.statements) <= 100
    assert run.totals()["workflows.Run"] == big.finished_runs - 1


def test_dry_run_counts_and_deletes_nothing(big: Trace, capsys: Any) -> None:
    before = _rows(big.environment)
    run = prune(dry_run=True)
    assert run.statements == []
    counts = run.totals()
    assert counts["delivery.Message"] == big.finished_runs
    assert counts["delivery.DeliveryAttempt"] == big.finished_runs
    assert counts["inbox.InboxMessage"] == 1
    assert _rows(big.environment) == before

    call_command("clarion_prune", "--dry-run", "--environment", "big")
    out = capsys.readouterr().out
    assert f"big: would delete {big.finished_runs} delivery.Message" in out
    assert _rows(big.environment) == before

    call_command("clarion_prune", "--environment", "big")
    assert "big: deleted" in capsys.readouterr().out
    assert Run.objects.filter(environment=big.environment).count() == 4 + 1  # live, held, runs[1]


def test_the_schedule_is_installed_by_migration() -> None:
    # --no-migrations in tests: check the migration's function directly against the real model.
    from importlib import import_module

    from django.apps import apps as django_apps
    from django_q.models import Schedule

    migration = import_module("apps.core.migrations.0002_retention_schedule")
    migration.create_schedule(django_apps, None)
    schedule = Schedule.objects.get(name="clarion.prune")
    assert schedule.func == "apps.core.retention.prune_scheduled"
    assert schedule.minutes == 5 and schedule.repeats == -1


def test_scheduled_task_is_quiet_when_idle(caplog: Any) -> None:
    EnvironmentFactory()
    with caplog.at_level("INFO", logger="apps.core.retention"):
        from apps.core.retention import prune_scheduled

        assert prune_scheduled() == {}
    assert caplog.records == []


def test_policy_cutoff_zero_keeps_forever() -> None:
    now = timezone.now()
    assert PruneRun(now=now).budget_seconds > 0
    from apps.core.retention import RetentionPolicy

    assert RetentionPolicy.cutoff(0, now) is None
    assert RetentionPolicy.cutoff(30, now) == now - timedelta(days=30)


def test_scans_stop_at_the_first_row_young_enough_to_keep() -> None:
    from apps.core.retention import old_rows_bound

    environment = EnvironmentFactory()
    now = timezone.now()
    records = [
        IdempotencyRecord.objects.create(
            environment=environment,
            key=f"k{i}",
            request_fingerprint="f",
            method="POST",
            path="/x",
            response_status=202,
            response_body={},
        )
        for i in range(4)
    ]
    for record, age in zip(records, (120, 100, 10, 1), strict=True):
        IdempotencyRecord.objects.filter(pk=record.pk).update(created_at=now - timedelta(days=age))
    assert old_rows_bound(IdempotencyRecord, "created_at", now - timedelta(days=90)) == records[2].pk
    assert old_rows_bound(IdempotencyRecord, "created_at", now + timedelta(days=1)) is None

    run = prune(environments=[environment.slug], now=now)
    assert run.totals() == {"events.IdempotencyRecord": 2}
    assert set(IdempotencyRecord.objects.values_list("pk", flat=True)) == {records[2].pk, records[3].pk}


@pytest.mark.django_db(transaction=True)
def test_rows_another_transaction_holds_are_skipped_not_waited_for() -> None:
    from django.db import connections

    if connection.vendor != "postgresql":
        pytest.skip("row locks: PostgreSQL only (SQLite has no SKIP LOCKED)")
    trace = _build_trace(EnvironmentFactory(slug="locks"), events=1, subscribers=6)
    held = Run.objects.filter(environment=trace.environment, status=Run.Status.COMPLETED).order_by("pk")[3]
    engine = connections.create_connection("default")  # another session, as a worker would be
    try:
        with engine.cursor() as cursor:
            cursor.execute("BEGIN")
            cursor.execute("SELECT id FROM workflows_run WHERE id = %s FOR UPDATE", [held.pk])
            with connection.cursor() as own:
                own.execute("SET lock_timeout = '3s'")  # waiting on the held row would fail, not hang
            run = prune(environments=["locks"])
            cursor.execute("ROLLBACK")
    finally:
        engine.close()
        with connection.cursor() as own:
            own.execute("SET lock_timeout = 0")
    assert run.finished
    assert Run.objects.filter(pk=held.pk).exists()
    # The others (6 finished runs, less runs[1] with its queued message, less the held one) went.
    assert run.totals()["workflows.Run"] == 4
    assert prune(environments=["locks"]).totals()["workflows.Run"] == 1  # once released, it goes


def fail_for_bad_environment(policy: Any, run: PruneRun) -> None:
    from django.db import DatabaseError

    if policy.environment_slug == "bad":
        raise DatabaseError("simulated")


def test_one_environment_failing_does_not_stop_the_others(monkeypatch: Any, caplog: Any) -> None:
    import apps.core.retention as retention

    good = _build_trace(EnvironmentFactory(slug="good"), events=1, subscribers=6)
    EnvironmentFactory(slug="bad")
    monkeypatch.setattr(retention, "PRUNERS", [f"{__name__}.fail_for_bad_environment", *retention.PRUNERS])
    with caplog.at_level("ERROR", logger="apps.core.retention"):
        run = prune()
    assert run.failed == ["bad"]
    assert "environment bad" in caplog.text
    assert run.totals()["workflows.Run"] == 5  # good's 6 finished runs, less runs[1] (its queued message)
    assert Run.objects.filter(environment=good.environment).count() == 5
