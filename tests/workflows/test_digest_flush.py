"""The flush of many digests at once: handed to the workers in chunks within one tick, each digest
sent exactly once (tickers racing, a worker dying mid-flush), at a cost per chunk, not per digest."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import time_machine
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext

from apps.events.services import TriggerRequest, event_trigger
from apps.inbox.models import InboxMessage
from apps.workflows import digests, engine, ticker
from apps.workflows.models import DigestBucket, Run, StepRun
from tests.factories import SubscriberFactory
from tests.workflows.conftest import make_workflow, published_template

pytestmark = pytest.mark.django_db

START = datetime(2026, 3, 10, 10, 0, tzinfo=UTC)
AFTER_WINDOW = START + timedelta(hours=1, seconds=1)


@pytest.fixture
def clock() -> Iterator[Any]:
    with time_machine.travel(START, tick=False) as traveller:
        yield traveller


@pytest.fixture
def digests_of(tenant: Any, django_capture_on_commit_callbacks: Any) -> Any:
    """``digests_of(n, events, key)``: n subscribers, each with an open digest of ``events`` events."""
    env = tenant.environment
    published_template(env, "replies", "in_app", title_en="{{ digest.count }} new replies", body_en="")
    make_workflow(
        env,
        "replies",
        [
            {"id": "batch", "type": "digest", "window": "1h", "key": "payload.thread"},
            {"id": "inbox", "type": "in_app", "template": "replies"},
        ],
    )

    def _make(n: int, events: int = 2, key: str = "t") -> list[str]:
        ids = [f"{key}-{index:03d}" for index in range(n)]
        for subscriber_id in ids:
            SubscriberFactory(environment=env, subscriber_id=subscriber_id)
        for index in range(events):
            with django_capture_on_commit_callbacks(execute=True):
                event_trigger(
                    environment=env,
                    request=TriggerRequest(workflow="replies", to=ids, payload={"thread": key, "n": index}),
                )
        return ids

    return _make


def _assert_each_digest_sent_once(subscriber_ids: list[str], events: int) -> None:
    messages = InboxMessage.objects.filter(subscriber__subscriber_id__in=subscriber_ids)
    assert sorted(messages.values_list("subscriber__subscriber_id", flat=True)) == sorted(subscriber_ids)
    assert set(messages.values_list("title", flat=True)) == {f"{events} new replies"}
    runs = Run.objects.filter(subscriber__subscriber_id__in=subscriber_ids)
    assert runs.count() == len(subscriber_ids) * events
    assert set(runs.values_list("status", flat=True)) == {Run.Status.COMPLETED}
    assert StepRun.objects.filter(run__in=runs, reason="digest_sent").count() == len(subscriber_ids)
    assert StepRun.objects.filter(run__in=runs, reason="digest_merged").count() == len(subscriber_ids) * (events - 1)


def test_digests_ending_together_are_handed_out_within_one_tick_in_chunks(digests_of, clock, settings, monkeypatch):
    """More due leaders than one batch: the ticker takes batch after batch at once (not one batch a
    second) and enqueues them in chunks of the fan-out's size, each a task any worker takes."""
    ids = digests_of(10)
    monkeypatch.setattr(ticker, "WAKE_LIMIT", 4)
    settings.CLARION = {**settings.CLARION, "FANOUT_CHUNK_SIZE": 3}
    enqueued: list[tuple[str, list[int]]] = []
    monkeypatch.setattr(ticker, "enqueue", lambda func, ids: enqueued.append((func, list(ids))))
    clock.move_to(AFTER_WINDOW)

    passes = ticker.tick_until_caught_up()

    assert [p["runs_due"] for p in passes] == [4, 4, 2]
    leaders = sorted(DigestBucket.objects.values_list("leader_run_id", flat=True))
    assert sorted(run for _, chunk in enqueued for run in chunk) == leaders
    assert {func for func, _ in enqueued} == {engine.ADVANCE_TASK}
    assert max(len(chunk) for _, chunk in enqueued) <= 3
    for _, chunk in enqueued:  # what the workers do with the tasks
        engine.advance_runs(chunk)
    _assert_each_digest_sent_once(ids, 2)


def test_the_ticker_stops_catching_up_when_a_pass_takes_less_than_a_batch(digests_of, clock, monkeypatch):
    digests_of(3)
    monkeypatch.setattr(ticker, "enqueue", lambda func, ids: None)
    clock.move_to(AFTER_WINDOW)
    assert [p["runs_due"] for p in ticker.tick_until_caught_up()] == [3]
    assert [p["runs_due"] for p in ticker.tick_until_caught_up()] == [0]


def test_two_tickers_and_duplicate_tasks_send_each_digest_once(digests_of, clock, tenant):
    """Two tickers over the same due leaders: one takes each; and a chunk handed out twice (the
    stall re-drive while the first task still waits in the queue) sends nothing twice."""
    ids = digests_of(6, events=3)
    clock.move_to(AFTER_WINDOW)
    first = ticker.runs_take_due(now=AFTER_WINDOW)
    second = ticker.runs_take_due(now=AFTER_WINDOW)
    assert (len(first[0]), second) == (6, ([], [], []))

    engine.advance_runs(first[0])
    engine.advance_runs(first[0])  # the same chunk again
    assert digests.digests_flush(environment_id=tenant.environment.pk) == []  # nothing open is left
    engine.advance_runs(first[0])
    _assert_each_digest_sent_once(ids, 3)


def test_a_worker_dying_mid_flush_leaves_its_digests_to_the_next_and_none_is_sent_twice(
    digests_of, clock, settings, monkeypatch, django_capture_on_commit_callbacks
):
    """The worker closed the buckets and walked its leaders, then died before its commit: after the
    lease, the ticker hands the leaders on, the next worker sends every digest whole, and the dead
    worker's late commit writes nothing."""
    settings.CLARION = {**settings.CLARION, "RUN_LEASE_SECONDS": 20}
    ids = digests_of(5, events=3)
    clock.move_to(AFTER_WINDOW)
    due, _, _ = ticker.runs_take_due(now=AFTER_WINDOW)
    dead_token, claimed = engine.claim_runs(due)
    data = engine.load_chunk(claimed, AFTER_WINDOW)  # closes the buckets (committed)
    writes = engine.ChunkWrites()
    for run in claimed:
        engine.walk(run, data, writes, AFTER_WINDOW)
    assert set(DigestBucket.objects.values_list("status", flat=True)) == {DigestBucket.Status.SENT}
    assert not InboxMessage.objects.exists()

    later = AFTER_WINDOW + timedelta(seconds=21)
    clock.move_to(later)
    with django_capture_on_commit_callbacks(execute=True):
        assert ticker.tick()["runs_orphaned"] == 5
    _assert_each_digest_sent_once(ids, 3)

    engine.commit_chunk(dead_token, claimed, writes, later)  # the dead worker wakes up
    _assert_each_digest_sent_once(ids, 3)


def _flush_and_send(environment_id: int, key: str) -> int:
    """Close the digests of ``key`` and walk their leaders (one chunk); the statements it took."""
    with transaction.atomic():
        leaders = digests.digests_flush(environment_id=environment_id, key=key)
    with CaptureQueriesContext(connection) as captured:
        engine.advance_runs(leaders)
    return len([q for q in captured.captured_queries if "SAVEPOINT" not in q["sql"]])


def test_sending_a_chunk_of_digests_costs_the_same_statements_for_5_or_30(digests_of, clock, tenant):
    """The leaders' chunk (claim, close, events, render, the members' trace and state, the inbox
    messages, the commit) is set-based: its statements do not grow with the digests it sends (up to
    SQLite's 999 parameters per statement, past which Django splits the messages' INSERT)."""
    env = tenant.environment
    digests_of(3, key="warm")
    few = digests_of(5, events=2, key="few")
    many = digests_of(30, events=3, key="many")
    clock.move_to(START + timedelta(minutes=5))
    _flush_and_send(env.pk, "warm")  # templates compiled, versions cached

    statements = [_flush_and_send(env.pk, "few"), _flush_and_send(env.pk, "many")]

    assert statements[0] == statements[1]
    _assert_each_digest_sent_once(few, 2)
    _assert_each_digest_sent_once(many, 3)
