"""Digests under real concurrency: several processes, one PostgreSQL, one open bucket (make test-services)."""

from __future__ import annotations

import multiprocessing
import traceback
from datetime import timedelta
from typing import Any

import pytest
import time_machine
from django.db import connection, connections
from django.utils import timezone

from apps.delivery.models import Message
from apps.events.services import TriggerRequest, event_trigger
from apps.workflows import engine
from apps.workflows.models import DigestBucket, DigestEntry, Run
from tests.factories import SubscriberFactory
from tests.workflows.conftest import make_workflow, published_template

pytestmark = [pytest.mark.services, pytest.mark.django_db(transaction=True)]

PROCESSES = 4
EVENTS = 500


def _close_connections() -> None:
    """Nothing open may cross a fork: each process makes its own connections (and pool)."""
    for conn in connections.all():
        conn.close()
        close_pool = getattr(conn, "close_pool", None)
        if close_pool is not None and conn.settings_dict.get("OPTIONS", {}).get("pool"):
            close_pool()


def _fire(environment_id: int, worker: int, count: int, round_: int, barrier: Any, errors: Any) -> None:
    try:
        from apps.tenancy.models import Environment

        environment = Environment.objects.get(pk=environment_id)
        barrier.wait(timeout=60)
        for index in range(count):
            event_trigger(
                environment=environment,
                request=TriggerRequest("comments", ["u1"], {"post": "p1", "comment": f"r{round_}-w{worker}-{index}"}),
            )
    except BaseException:
        errors.put(traceback.format_exc())
    finally:
        _close_connections()


def fire_from_processes(environment_id: int, round_: int) -> None:
    context = multiprocessing.get_context("fork")
    barrier = context.Barrier(PROCESSES)
    errors = context.Queue()
    _close_connections()
    per_process = EVENTS // PROCESSES
    processes = [
        context.Process(target=_fire, args=(environment_id, worker, per_process, round_, barrier, errors))
        for worker in range(PROCESSES)
    ]
    for process in processes:
        process.start()
    for process in processes:
        process.join(180)
    failures = []
    while not errors.empty():
        failures.append(errors.get())
    assert not failures, "\n".join(failures)
    assert [p.exitcode for p in processes] == [0] * PROCESSES


@pytest.fixture
def digest_env(tenant: Any, settings: Any) -> Any:
    assert connection.vendor == "postgresql"
    env = tenant.environment
    published_template(
        env,
        "digest-mail",
        "email",
        subject_en="{{ digest.count }} new comments",
        body_en="<ul>{% for e in digest.events %}<li>{{ e.payload.comment }}</li>{% endfor %}</ul>",
    )
    make_workflow(
        env,
        "comments",
        [
            {"id": "batch", "type": "digest", "window": "1h", "key": "payload.post"},
            {"id": "mail", "type": "email", "template": "digest-mail"},
        ],
    )
    SubscriberFactory(environment=env, subscriber_id="u1")
    return env


def _close_window(django_capture_on_commit_callbacks: Any, at: Any) -> None:
    with time_machine.travel(at, tick=False):
        for _ in range(2):
            with django_capture_on_commit_callbacks(execute=True):
                engine.sweep()


def test_500_concurrent_events_make_exactly_one_digest(digest_env, django_capture_on_commit_callbacks):
    fire_from_processes(digest_env.pk, round_=1)

    bucket = DigestBucket.objects.get()
    assert (bucket.status, bucket.entry_count, bucket.entries.count()) == ("open", EVENTS, EVENTS)
    runs = Run.objects.filter(event__workflow__key="comments")
    assert runs.count() == EVENTS
    assert runs.filter(status=Run.Status.WAITING, resume_at__isnull=False).count() == 1  # the leader
    assert runs.filter(status=Run.Status.WAITING, resume_at__isnull=True).count() == EVENTS - 1
    assert not Message.objects.exists()

    _close_window(django_capture_on_commit_callbacks, timezone.now() + timedelta(hours=2))
    message = Message.objects.get()
    assert message.subject == f"{EVENTS} new comments"
    comments = {f"r1-w{w}-{i}" for w in range(PROCESSES) for i in range(EVENTS // PROCESSES)}
    assert message.body.count("<li>") == EVENTS
    assert all(f"<li>{c}</li>" in message.body for c in comments)
    assert set(runs.values_list("status", flat=True)) == {Run.Status.COMPLETED}

    # The same burst again after the window closed: a new digest, not the old one reopened.
    fire_from_processes(digest_env.pk, round_=2)
    assert DigestBucket.objects.filter(status="open").get().entry_count == EVENTS
    _close_window(django_capture_on_commit_callbacks, timezone.now() + timedelta(hours=4))
    second = Message.objects.exclude(pk=message.pk).get()
    assert second.subject == f"{EVENTS} new comments"
    assert "r2-w0-0" in second.body and "r1-w0-0" not in second.body
    assert list(DigestBucket.objects.order_by("id").values_list("status", "entry_count")) == [
        ("sent", EVENTS),
        ("sent", EVENTS),
    ]


def _flush_repeatedly(environment_id: int, stop: Any, errors: Any, flushes: Any) -> None:
    """POST /digests/flush's service and the leaders' runs, over and over while events arrive."""
    try:
        from apps.workflows import digests

        while True:
            stopping = stop.is_set()
            leaders = digests.digests_flush(environment_id=environment_id)
            if leaders:
                engine.advance_runs(sorted(leaders))
                with flushes.get_lock():
                    flushes.value += 1
            if stopping:
                return
    except BaseException:
        errors.put(traceback.format_exc())
    finally:
        _close_connections()


def test_flushes_racing_arriving_events_send_every_event_exactly_once(digest_env, django_capture_on_commit_callbacks):
    """Four processes fire 500 events to one digest key while a fifth flushes it again and again:
    every event ends in exactly one sent digest (no entry lost, none in two), and each message
    holds exactly the events of its bucket."""
    context = multiprocessing.get_context("fork")
    stop, errors, flushes = context.Event(), context.Queue(), context.Value("i", 0)
    _close_connections()
    flusher = context.Process(target=_flush_repeatedly, args=(digest_env.pk, stop, errors, flushes))
    flusher.start()
    try:
        fire_from_processes(digest_env.pk, round_=3)
    finally:
        stop.set()
        flusher.join(180)
    failures = []
    while not errors.empty():
        failures.append(errors.get())
    assert not failures, "\n".join(failures)
    assert flusher.exitcode == 0
    # whatever the last flush left open goes out when its window closes
    _close_window(django_capture_on_commit_callbacks, timezone.now() + timedelta(hours=2))

    runs = Run.objects.filter(event__workflow__key="comments")
    assert runs.count() == EVENTS
    assert set(runs.values_list("status", flat=True)) == {Run.Status.COMPLETED}
    entries = list(DigestEntry.objects.values_list("run_id", "bucket_id"))
    assert sorted(run for run, _ in entries) == sorted(runs.values_list("pk", flat=True))  # each run once
    buckets = DigestBucket.objects.exclude(status="empty")
    assert set(buckets.values_list("status", flat=True)) == {"sent"}
    messages = list(Message.objects.filter(channel="email").order_by("pk"))
    assert len(messages) == buckets.count() and flushes.value >= 1
    seen: list[str] = []
    for message in messages:
        comments = [part.split("</li>")[0] for part in message.body.split("<li>")[1:]]
        assert message.subject == f"{len(comments)} new comments"
        seen += comments
    assert sorted(seen) == sorted(f"r3-w{w}-{i}" for w in range(PROCESSES) for i in range(EVENTS // PROCESSES))
