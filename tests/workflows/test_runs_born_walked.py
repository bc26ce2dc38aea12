"""Runs born walked (engine.batch): a micro-batch's runs are inserted in the state their walk left
them in, with everything the walk wrote and the events marked processed, in one transaction —
never claimed, read back or updated — and exactly once."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
import time_machine
from django.core import mail
from django.db import OperationalError, connection, connections, transaction
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from apps.core.bulk import pks_reserve, rows_insert_new
from apps.delivery.models import Message
from apps.events.fanout import events_fanout_claim_batch
from apps.events.models import Event
from apps.events.services import events_mark_cancelled
from apps.inbox.models import InboxMessage
from apps.workflows import engine
from apps.workflows.engine import batch
from apps.workflows.engine.fanout import _runs_create
from apps.workflows.models import DigestBucket, Run, StepRun
from apps.workflows.selectors import event_runs_data
from tests.factories import SubscriberFactory
from tests.workflows.conftest import make_workflow, published_template
from tests.workflows.test_batch import flow, make_events

__all__ = ["flow"]  # the fixture, shared with test_batch

pytestmark = pytest.mark.django_db

LEASE = timedelta(seconds=20)


def claimed_batch(ids: list[int]) -> tuple[list[Event], batch.HeldLeases]:
    """The events as ``process_events`` holds them after its claim."""
    assert sorted(events_fanout_claim_batch(event_ids=ids, lease=LEASE, limit=len(ids))) == sorted(ids)
    events = list(
        Event.objects.select_related("workflow_version__workflow", "environment").filter(pk__in=ids).order_by("pk")
    )
    return events, batch.HeldLeases(events)


def after_walk(monkeypatch: Any, action: Callable[[], None]) -> None:
    """Run ``action`` once between the batch's walk and its commit (another connection's work)."""
    walk_chunk = batch.walk_chunk

    def walk_then_act(runs: list[Run], now: Any) -> Any:
        writes = walk_chunk(runs, now)
        action()
        return writes

    monkeypatch.setattr(batch, "walk_chunk", walk_then_act)


def written(prefix: str) -> tuple[int, int, int, int]:
    runs = Run.objects.filter(event__transaction_id__startswith=f"{prefix}-")
    return (
        runs.count(),
        Message.objects.filter(run__in=runs).count(),
        InboxMessage.objects.filter(message__run__in=runs).count(),
        StepRun.objects.filter(run__in=runs).count(),
    )


# --------------------------------------------------------------------------------------------
# The statements
# --------------------------------------------------------------------------------------------


def test_a_batch_inserts_its_runs_once_and_never_reads_or_updates_them(flow, monkeypatch):
    engine.process_events(make_events(flow, 2, "warm"))  # caches (templates, settings) filled
    monkeypatch.setattr("apps.workflows.engine.chunks.inline_delivery_limit", lambda: 0)  # engine only
    counts = []
    for size, prefix in ((3, "small"), (30, "large")):
        ids = make_events(flow, size, prefix)
        with CaptureQueriesContext(connection) as queries:
            engine.process_events(ids[:1])
        counts.append(len(queries))
        on_runs = [q["sql"] for q in queries if "workflows_run" in q["sql"] and "workflows_runs" not in q["sql"]]
        *keys, insert = on_runs  # the keys reserved, then the runs in their final state: nothing else
        assert keys and all("nextval" in key or "sqlite_sequence" in key for key in keys)
        assert len(keys) == (1 if connection.vendor == "postgresql" else 2)
        assert insert.startswith('INSERT INTO "workflows_run"') and "ON CONFLICT DO NOTHING" in insert
        assert written(prefix) == (size, 2 * size, size, 2 * size)
        assert set(Run.objects.filter(event_id__in=ids).values_list("status", "attempts", "claim_token")) == {
            (Run.Status.COMPLETED, 1, None)
        }
        assert Event.objects.filter(pk__in=ids, status=Event.Status.PROCESSED, recipient_count=1).count() == size
    if connection.vendor == "postgresql":
        assert counts[0] == counts[1], counts
    else:  # SQLite's limit on query variables splits the message and trace inserts every ~40 rows
        assert counts[1] - counts[0] <= 2, counts
    # 25 on PostgreSQL: claim (2), events, template pins, subscribers, keys, the chunk's load (7),
    # then one transaction: events locked, runs, messages (2), inbox (2), trace, counts (2), events
    assert counts[0] <= 26, counts


# --------------------------------------------------------------------------------------------
# Exactly once
# --------------------------------------------------------------------------------------------


def test_the_same_batch_processed_twice_writes_nothing_twice(flow):
    ids = make_events(flow, 4, "twice")
    events, leases = claimed_batch(ids)

    assert batch._runs_born_walked(events, leases) == []
    first = written("twice")
    assert first == (4, 8, 4, 8)
    assert batch._runs_born_walked(events, leases) == []  # a duplicated batch: the events are processed
    assert written("twice") == first
    assert dict(Event.objects.filter(pk__in=ids).values_list("pk", "recipient_count")) == dict.fromkeys(ids, 1)


def test_runs_an_earlier_attempt_created_are_kept_counted_and_walked_once(flow):
    """A fan-out that fell back to the chunked path and died after creating some runs: the batch
    inserts the others only, and walks the pending ones it found."""
    env = flow
    ids = make_events(flow, 1, "earlier", to=[{"subscriber_id": "p-1"}, {"subscriber_id": "p-2"}])
    first, second = (SubscriberFactory(environment=env, subscriber_id=f"p-{n}", email=f"p{n}@x.test") for n in (1, 2))
    event = Event.objects.get(pk=ids[0])
    (earlier,) = _runs_create(event, [first.pk])

    engine.process_events(ids)

    runs = Run.objects.filter(event=event)
    assert sorted(runs.values_list("subscriber_id", flat=True)) == [first.pk, second.pk]
    assert runs.get(subscriber=first).pk == earlier
    assert set(runs.values_list("status", flat=True)) == {Run.Status.COMPLETED}
    assert written("earlier") == (2, 4, 2, 4)
    assert len(mail.outbox) == 2
    event.refresh_from_db()
    assert (event.status, event.recipient_count) == (Event.Status.PROCESSED, 2)


def test_a_transaction_that_fails_midway_leaves_nothing_and_the_lease_hands_the_events_out(flow, monkeypatch):
    ids = make_events(flow, 3, "midway")
    events, leases = claimed_batch(ids)

    def broken(**kwargs: Any) -> None:  # after the runs and the messages were inserted
        raise RuntimeError("the database went away")

    with monkeypatch.context() as patch:
        patch.setattr("apps.workflows.engine.chunks.inbox_messages_create", broken)
        with pytest.raises(RuntimeError):
            batch._runs_born_walked(events, leases)
    assert written("midway") == (0, 0, 0, 0)
    assert not Message.objects.exists() and not StepRun.objects.exists()
    assert set(Event.objects.filter(pk__in=ids).values_list("status", flat=True)) == {Event.Status.PENDING}
    engine.process_events(ids)  # their wake-ups: still held by the batch that died
    assert written("midway")[0] == 0

    with time_machine.travel(timezone.now() + LEASE + timedelta(seconds=1)):
        engine.process_events(ids)
        engine.process_events(ids)
    assert written("midway") == (3, 6, 3, 6)
    assert len(mail.outbox) == 3
    assert set(Event.objects.filter(pk__in=ids).values_list("status", flat=True)) == {Event.Status.PROCESSED}


def test_a_batch_that_fails_falls_back_to_one_event_at_a_time(flow, monkeypatch, django_capture_on_commit_callbacks):
    ids = make_events(flow, 3, "fallback")
    calls = []
    insert = batch.rows_insert_new

    def fails_once(*args: Any, **kwargs: Any) -> set[int]:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("a bug in the batch")
        return insert(*args, **kwargs)

    monkeypatch.setattr(batch, "rows_insert_new", fails_once)
    with django_capture_on_commit_callbacks(execute=True):
        engine.process_events(ids)

    assert written("fallback") == (3, 6, 3, 6)
    assert len(mail.outbox) == 3
    assert set(Event.objects.filter(pk__in=ids).values_list("status", flat=True)) == {Event.Status.PROCESSED}


def test_a_lock_conflict_is_retried_without_a_second_trace(flow, monkeypatch):
    ids = make_events(flow, 2, "retry")
    calls = []
    insert = batch.rows_insert_new

    def conflicts_once(*args: Any, **kwargs: Any) -> set[int]:
        calls.append(1)
        if len(calls) == 1:
            raise OperationalError("deadlock detected")
        return insert(*args, **kwargs)

    monkeypatch.setattr(batch, "rows_insert_new", conflicts_once)
    monkeypatch.setattr("apps.workflows.engine.chunks.time.sleep", lambda seconds: None)
    engine.process_events(ids)

    assert len(calls) == 2
    assert written("retry") == (2, 4, 2, 4)
    assert len(mail.outbox) == 2


# --------------------------------------------------------------------------------------------
# Cancellation, and an event another worker took
# --------------------------------------------------------------------------------------------


def test_a_cancellation_committed_before_the_batch_commits_wins(flow, monkeypatch):
    ids = make_events(flow, 3, "cancel")
    after_walk(monkeypatch, lambda: engine.event_cancel_runs(event=Event.objects.get(pk=ids[0])))

    engine.process_events(ids)

    statuses = dict(Event.objects.filter(pk__in=ids).values_list("pk", "status"))
    assert statuses == {ids[0]: Event.Status.CANCELLED, ids[1]: "processed", ids[2]: "processed"}
    assert not Run.objects.filter(event_id=ids[0]).exists()
    assert written("cancel") == (2, 4, 2, 4)
    assert len(mail.outbox) == 2


def test_an_event_another_worker_took_is_left_to_it(flow, monkeypatch):
    """The batch's lease ran out during its walk and another worker claimed the event."""
    ids = make_events(flow, 2, "taken")
    after_walk(
        monkeypatch,
        lambda: Event.objects.filter(pk=ids[0]).update(fanout_lease_until=timezone.now() + timedelta(minutes=1)),
    )

    engine.process_events(ids)

    assert Event.objects.get(pk=ids[0]).status == Event.Status.PENDING  # its new owner finishes it
    assert not Run.objects.filter(event_id=ids[0]).exists()
    assert Event.objects.get(pk=ids[1]).status == Event.Status.PROCESSED
    assert written("taken") == (1, 2, 1, 2)


def test_the_heartbeat_renews_only_leases_this_batch_wrote(flow):
    ids = make_events(flow, 2, "beat")
    _, leases = claimed_batch(ids)
    Event.objects.filter(pk=ids[0]).update(fanout_lease_until=timezone.now() + timedelta(minutes=5))  # a new owner

    assert leases.renew(LEASE) == 1
    renewed = Event.objects.get(pk=ids[1]).fanout_lease_until
    assert leases.holds(renewed) and not leases.holds(Event.objects.get(pk=ids[0]).fanout_lease_until)
    assert leases.renew(LEASE) == 1  # the renewal's own value is this batch's too


# --------------------------------------------------------------------------------------------
# Runs that end waiting, and the trace: the same as a run claimed and walked
# --------------------------------------------------------------------------------------------


@pytest.fixture
def delayed(tenant: Any, monkeypatch: Any) -> Any:
    """in-app now, wait 10 minutes, email only if the in-app message is still unread."""
    monkeypatch.setattr("apps.inbox.realtime._send_all", lambda *args: None)
    env = tenant.environment
    published_template(env, "later-in-app", "in_app", title_en="Hello {{ payload.n }}", body_en="")
    published_template(env, "later-mail", "email", subject_en="Still there? {{ payload.n }}", body_en="<p>Hi</p>")
    make_workflow(
        env,
        "ping",
        [
            {"id": "inbox", "type": "in_app", "template": "later-in-app"},
            {"id": "wait", "type": "delay", "for": "10m"},
            {"id": "mail", "type": "email", "template": "later-mail", "if": "not steps.inbox.read"},
        ],
    )
    return env


@pytest.fixture
def digested(tenant: Any, monkeypatch: Any) -> Any:
    monkeypatch.setattr("apps.inbox.realtime._send_all", lambda *args: None)
    env = tenant.environment
    published_template(env, "digest-mail", "email", subject_en="{{ digest.count }} pings", body_en="<p>Hi</p>")
    make_workflow(
        env,
        "ping",
        [
            {"id": "batch", "type": "digest", "window": "1h"},
            {"id": "mail", "type": "email", "template": "digest-mail"},
        ],
    )
    return env


def _trace(event_ids: list[int]) -> list[dict[str, Any]]:
    """The runs of these events as the trace API shows them, without what names the run or the
    recipient (ids, addresses, the digest bucket and its sender) or took real time (a send's duration)."""
    shown = []
    for event in Event.objects.filter(pk__in=event_ids).order_by("pk"):
        for run in event_runs_data(event=event, limit=100):
            del run["subscriber_id"]
            for step in run["steps"]:
                step["detail"] = {k: v for k, v in step["detail"].items() if k not in {"bucket", "sent_by_run"}}
            for message in run["messages"]:
                del message["id"], message["recipient"]
                for attempt in message["attempts"]:
                    del attempt["duration_ms"]
            shown.append(run)
    return shown


def _stored(event_ids: list[int]) -> list[tuple[Any, ...]]:
    return list(
        Run.objects.filter(event_id__in=event_ids)
        .order_by("pk")
        .values_list("status", "step_index", "resume_at", "step_results", "completed_at", "claim_token", "lease_until")
    )


def _chunked(event_ids: list[int]) -> None:
    """The same events the way runs were walked before: created pending, claimed, walked, updated."""
    for event in Event.objects.filter(pk__in=event_ids).order_by("pk"):
        subscriber_ids = [r["subscriber_id"] for r in event.recipients]
        pks = list(event.environment.subscribers.filter(subscriber_id__in=subscriber_ids).values_list("pk", flat=True))
        engine.advance_runs(_runs_create(event, pks))


@pytest.mark.parametrize("workflow", ["flow", "delayed", "digested"])
def test_runs_born_walked_are_stored_and_traced_as_runs_claimed_and_walked(
    workflow, request, django_capture_on_commit_callbacks
):
    env = request.getfixturevalue(workflow)
    SubscriberFactory(environment=env, subscriber_id="born", email="born@x.test")
    SubscriberFactory(environment=env, subscriber_id="claimed", email="claimed@x.test")
    start = timezone.now()
    with time_machine.travel(start, tick=False):  # the events too: a digest's window starts at its trigger
        # two events per recipient: a digest's leader and its member
        born = make_events(env, 2, "b", to=[{"subscriber_id": "born"}])
        claimed = make_events(env, 2, "c", to=[{"subscriber_id": "claimed"}])
        engine.process_events(born)
        _chunked(claimed)

    assert _stored(born) == _stored(claimed)
    assert _trace(born) == _trace(claimed)
    expected_states = {
        "flow": {Run.Status.COMPLETED},
        "delayed": {Run.Status.WAITING},
        "digested": {Run.Status.WAITING},
    }[workflow]
    assert {status for status, *_ in _stored(born)} == expected_states

    # Woken when due, like any waiting run: the delay's email, the digest of two pings.
    with time_machine.travel(start + timedelta(hours=2), tick=False):
        for _ in range(2):
            with django_capture_on_commit_callbacks(execute=True):
                engine.sweep()
    emails_per_recipient = {"flow": 2, "delayed": 2, "digested": 1}[workflow]
    for recipient in ("born", "claimed"):
        assert len([m for m in mail.outbox if m.to == [f"{recipient}@x.test"]]) == emails_per_recipient
    assert _stored(born) == _stored(claimed)
    assert _trace(born) == _trace(claimed)
    assert {status for status, *_ in _stored(born)} == {Run.Status.COMPLETED}
    if workflow == "digested":
        assert [m.subject for m in mail.outbox if m.to == ["born@x.test"]] == ["2 pings"]
        assert DigestBucket.objects.filter(status="sent").count() == 2


# --------------------------------------------------------------------------------------------
# core.bulk: keys reserved ahead, inserts that say which rows went in
# --------------------------------------------------------------------------------------------


def test_reserved_keys_are_never_given_to_another_insert(flow):
    reserved = pks_reserve(Run, 3)
    assert reserved == sorted(reserved) and len(set(reserved)) == 3
    ids = make_events(flow, 1, "keys")
    engine.process_events(ids)  # its run takes a key of its own (reserved too)
    other = pks_reserve(Run, 2)
    assert not set(other) & set(reserved)
    assert Run.objects.get(event_id=ids[0]).pk > max(reserved)
    assert min(other) > Run.objects.get(event_id=ids[0]).pk


def test_rows_insert_new_skips_conflicting_rows_and_says_which_went_in(flow):
    (event_id,) = make_events(flow, 1, "rows")
    event = Event.objects.get(pk=event_id)
    subscriber = event.environment.subscribers.get(subscriber_id="rows-0")
    other = SubscriberFactory(environment=event.environment)
    fixed = {
        "environment_id": event.environment_id,
        "event_id": event.pk,
        "workflow_version_id": event.workflow_version_id,
    }
    first, second, third = pks_reserve(Run, 3)

    assert rows_insert_new(Run, [{"id": first, "subscriber_id": subscriber.pk, **fixed}]) == {first}
    waiting = {"status": Run.Status.WAITING, "step_results": {"a": 1}}
    inserted = rows_insert_new(
        Run,
        [
            {"id": second, "subscriber_id": subscriber.pk, **fixed, **waiting},  # the same event × subscriber
            {"id": third, "subscriber_id": other.pk, **fixed, **waiting},
        ],
    )
    assert inserted == {third}
    run = Run.objects.get(pk=third)
    assert (run.status, run.step_results, run.step_index, run.created_at is not None) == ("waiting", {"a": 1}, 0, True)
    assert not Run.objects.filter(pk=second).exists()


# --------------------------------------------------------------------------------------------
# Races that only a real multi-connection database can show (make test-services)
# --------------------------------------------------------------------------------------------


def _in_thread(target: Callable[[], None]) -> threading.Thread:
    def run() -> None:
        try:
            target()
        finally:
            connections.close_all()

    thread = threading.Thread(target=run)
    thread.start()
    return thread


@pytest.mark.services
@pytest.mark.django_db(transaction=True)
def test_the_batch_commit_waits_for_a_cancellation_holding_the_event(flow, monkeypatch):
    assert connection.vendor == "postgresql"
    ids = make_events(flow, 2, "holds")
    locked = threading.Event()

    def cancel_slowly() -> None:
        with transaction.atomic():
            events_mark_cancelled(event_ids=[ids[0]], only_pending=True)  # the row stays locked
            locked.set()
            time.sleep(0.5)

    threads: list[threading.Thread] = []
    after_walk(monkeypatch, lambda: (threads.append(_in_thread(cancel_slowly)), locked.wait(10)))

    engine.process_events(ids)
    threads[0].join(10)

    assert Event.objects.get(pk=ids[0]).status == Event.Status.CANCELLED
    assert not Run.objects.filter(event_id=ids[0]).exists()
    assert Event.objects.get(pk=ids[1]).status == Event.Status.PROCESSED
    assert written("holds") == (1, 2, 1, 2)


@pytest.mark.services
@pytest.mark.django_db(transaction=True)
def test_a_cancellation_waits_for_the_batch_commit_and_stops_its_runs(delayed, monkeypatch):
    assert connection.vendor == "postgresql"
    ids = make_events(delayed, 2, "waits")
    finish = batch.events_fanout_finish
    threads: list[threading.Thread] = []

    def finish_while_a_cancellation_waits(**kwargs: Any) -> None:
        finish(**kwargs)
        threads.append(_in_thread(lambda: engine.event_cancel_runs(event=Event.objects.get(pk=ids[0]))))
        time.sleep(0.3)  # the cancellation is now waiting for this transaction's lock on the event

    monkeypatch.setattr(batch, "events_fanout_finish", finish_while_a_cancellation_waits)
    engine.process_events(ids)
    threads[0].join(10)

    assert Event.objects.get(pk=ids[0]).status == Event.Status.CANCELLED
    assert Run.objects.get(event_id=ids[0]).status == Run.Status.CANCELLED
    assert Run.objects.get(event_id=ids[1]).status == Run.Status.WAITING
    assert StepRun.objects.filter(run__event_id=ids[0], decision=StepRun.Decision.CANCELLED).count() == 1
