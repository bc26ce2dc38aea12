"""Fan-out: notifications/s of the engine against a raw ``bulk_create`` of the same rows.

In this process (``bench.settings``, the temporary SQLite database or ``DATABASE_URL``), one
environment holds a topic with ``subscribers`` members and a published workflow with a single
``in_app`` step. Each repetition measures, alternating which goes first:

* **clarion**: ``process_event(event_id)`` for a new event addressed to the topic, with tasks
  eager (``CLARION_TASKS_EAGER=True``): the keyset walk of the topic, one Run per member
  (``bulk_create``), then ``advance_runs`` per chunk of ``FANOUT_CHUNK_SIZE``: claim with a
  lease, load chunk data (templates, categories, preferences), render the template in the
  Jinja sandbox, bulk-create Message + InboxMessage + StepRun rows, bulk-update the Runs. The
  websocket push after commit (``apps.inbox.realtime.publish_messages_created``) is replaced
  by a no-op: its cost belongs to the websocket benchmark. One extra, informational run with
  the real push into Channels' in-memory layer times the push calls themselves (counts query,
  frame building, ``group_send``) and reports their share of that run.
* **baseline**: build and ``bulk_create`` (batches of 500, one transaction) the same number of
  Message rows (channel in_app, status sent, fixed title/body) and InboxMessage rows (each
  linked to its Message) for the same subscribers. The Messages point at Runs created once
  before timing (Message.run is required); subscriber rows are loaded before timing too. No
  Runs, StepRuns, template rendering, preferences or leases: the least any design must write
  to show one in-app notification with a delivery record.
"""

from __future__ import annotations

import cProfile
import gc
import io
import json
import pstats
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from unittest import mock

from bench.common import Installation, log, median

TOPIC_KEY = "bench-topic"
WORKFLOW_KEY = "bench-fanout"
TEMPLATE_KEY = "bench-fanout-in-app"
TITLE = "Order {{ payload.order_id }} shipped"
BODY = "Hello {{ subscriber.first_name }}, your {{ payload.products | join(', ') }} are on their way."
PAYLOAD = {"order_id": 42, "products": ["book", "lamp"]}


@dataclass(frozen=True)
class FanoutConfig:
    subscribers: int = 10_000
    repeats: int = 3
    with_push: bool = True  # one extra informational run with the real push (in-memory layer)

    @classmethod
    def quick(cls) -> FanoutConfig:
        return cls(subscribers=300, repeats=1, with_push=False)


@dataclass
class _Fixture:
    environment: Any
    workflow: Any
    subscribers: list[tuple[int, str, str]]  # (pk, subscriber_id, first_name)
    baseline_run_ids: list[int]
    template_version: Any


def _setup(config: FanoutConfig, tag: str) -> _Fixture:
    from django.db import transaction

    from apps.events.models import Event
    from apps.subscribers.models import Subscriber, TopicSubscription
    from apps.subscribers.services import topic_upsert
    from apps.templates.services import template_save
    from apps.tenancy.services import environment_create
    from apps.workflows.models import Run
    from apps.workflows.services import workflow_upsert

    with transaction.atomic():
        environment = environment_create(name=f"bench fanout {tag}").environment
        Subscriber.objects.bulk_create(
            [
                Subscriber(
                    environment=environment,
                    subscriber_id=f"fan-{i:06d}",
                    email=f"fan-{i:06d}@example.com",
                    first_name=f"Reader{i}",
                    locale="en",
                )
                for i in range(config.subscribers)
            ],
            batch_size=1000,
        )
        subscribers = list(
            Subscriber.objects.filter(environment=environment)
            .order_by("pk")
            .values_list("pk", "subscriber_id", "first_name")
        )
        topic, _ = topic_upsert(environment=environment, key=TOPIC_KEY, name="Bench topic")
        TopicSubscription.objects.bulk_create(
            [TopicSubscription(topic=topic, subscriber_id=pk) for pk, _, _ in subscribers], batch_size=1000
        )
        saved = template_save(
            environment=environment,
            key=TEMPLATE_KEY,
            channel="in_app",
            content={"en": {"title": TITLE, "body": BODY}},
            publish=True,
        )
        workflow, _ = workflow_upsert(
            environment=environment,
            key=WORKFLOW_KEY,
            name="Bench fan-out",
            steps=[{"id": "inbox", "type": "in_app", "template": TEMPLATE_KEY}],
            publish=True,
        )
        workflow.refresh_from_db()
        baseline_event = Event.objects.create(
            environment=environment,
            transaction_id="baseline-runs",
            workflow=workflow,
            workflow_version_id=workflow.published_version_id,
            payload=PAYLOAD,
            recipients=[{"topic": TOPIC_KEY}],
            status=Event.Status.PROCESSED,
        )
        Run.objects.bulk_create(
            [
                Run(
                    environment=environment,
                    event=baseline_event,
                    workflow_version_id=workflow.published_version_id,
                    subscriber_id=pk,
                    status=Run.Status.COMPLETED,
                )
                for pk, _, _ in subscribers
            ],
            batch_size=500,
        )
    baseline_run_ids = list(
        Run.objects.filter(event=baseline_event).order_by("subscriber_id").values_list("pk", flat=True)
    )
    return _Fixture(
        environment=environment,
        workflow=workflow,
        subscribers=subscribers,
        baseline_run_ids=baseline_run_ids,
        template_version=saved.version,
    )


@contextmanager
def _push(real: bool, timings: list[float] | None = None) -> Iterator[None]:
    """No push (default), or the real push into Channels' in-memory layer, timed per call."""
    if not real:
        with mock.patch("apps.inbox.realtime.publish_messages_created", lambda messages: None):
            yield
        return
    from django.test import override_settings

    from apps.inbox import realtime

    original = realtime.publish_messages_created

    def timed(messages: Any) -> None:
        started = time.perf_counter()
        try:
            original(messages)
        finally:
            if timings is not None:
                timings.append(time.perf_counter() - started)

    layers = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
    with override_settings(CHANNEL_LAYERS=layers), mock.patch.object(realtime, "publish_messages_created", timed):
        yield


@contextmanager
def _phase_timer(phases: dict[str, float]) -> Iterator[None]:
    """Accumulate wall time per engine phase by wrapping the engine's functions (no profiler
    overhead): claim, chunk data, the walk (rendering included), the chunk commit and, inside
    it and in the fan-out, every bulk_create / bulk_update by model."""
    from django.db.models import QuerySet

    from apps.workflows.engine import chunks

    def timed(name: str, func: Any) -> Any:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return func(*args, **kwargs)
            finally:
                phases[name] = phases.get(name, 0.0) + time.perf_counter() - started

        return wrapper

    def by_model(verb: str, func: Any) -> Any:
        def wrapper(self: QuerySet, *args: Any, **kwargs: Any) -> Any:
            return timed(f"{verb} {self.model.__name__}", func)(self, *args, **kwargs)

        return wrapper

    with (
        mock.patch.object(chunks, "claim_runs", timed("claim_runs", chunks.claim_runs)),
        mock.patch.object(chunks, "load_chunk", timed("load_chunk", chunks.load_chunk)),
        mock.patch.object(chunks, "walk", timed("walk (render, decide)", chunks.walk)),
        mock.patch.object(chunks, "commit_chunk", timed("commit_chunk (all writes)", chunks.commit_chunk)),
        mock.patch.object(QuerySet, "bulk_create", by_model("  bulk_create", QuerySet.bulk_create)),
        mock.patch.object(QuerySet, "bulk_update", by_model("  bulk_update", QuerySet.bulk_update)),
    ):
        yield


def _clarion_once(
    fixture: _Fixture,
    label: str,
    *,
    push: bool = False,
    push_timings: list[float] | None = None,
    profiler: cProfile.Profile | None = None,
    direct: int | None = None,
) -> float:
    """One event through the engine; ``direct=k`` addresses the first k subscribers by id
    instead of the topic (the warm-up)."""
    from django.test import override_settings

    from apps.delivery.models import Message
    from apps.events.models import Event
    from apps.inbox.models import InboxMessage
    from apps.workflows.engine import process_event
    from apps.workflows.models import Run, StepRun

    event = Event.objects.create(
        environment=fixture.environment,
        transaction_id=f"fanout-{label}",
        workflow=fixture.workflow,
        workflow_version_id=fixture.workflow.published_version_id,
        payload=PAYLOAD,
        recipients=[{"topic": TOPIC_KEY}]
        if direct is None
        else [{"subscriber_id": sid} for _, sid, _ in fixture.subscribers[:direct]],
    )
    gc.collect()
    with override_settings(CLARION_TASKS_EAGER=True), _push(push, push_timings):
        if profiler is not None:
            profiler.enable()
        started = time.perf_counter()
        process_event(event.pk)
        seconds = time.perf_counter() - started
        if profiler is not None:
            profiler.disable()

    expected = len(fixture.subscribers) if direct is None else direct
    counts = {
        "runs completed": Run.objects.filter(event=event, status=Run.Status.COMPLETED).count(),
        "step runs": StepRun.objects.filter(run__event=event).count(),
        "messages": Message.objects.filter(run__event=event).count(),
        "inbox messages": InboxMessage.objects.filter(message__run__event=event).count(),
    }
    wrong = {k: v for k, v in counts.items() if v != expected}
    if wrong:
        raise RuntimeError(f"fan-out {label}: expected {expected} of each, got {counts}")
    return seconds


def _baseline_once(fixture: _Fixture, label: str, *, limit: int | None = None) -> float:
    from django.db import transaction
    from django.utils import timezone

    from apps.delivery.models import Message
    from apps.inbox.models import InboxMessage

    environment_id = fixture.environment.pk
    version = fixture.template_version
    step_id = f"baseline-{label}"
    title = "Order 42 shipped"
    rows = list(zip(fixture.baseline_run_ids, fixture.subscribers, strict=True))[:limit]
    gc.collect()
    started = time.perf_counter()
    now = timezone.now()
    with transaction.atomic():
        messages = [
            Message(
                environment_id=environment_id,
                run_id=run_id,
                step_id=step_id,
                channel="in_app",
                subscriber_id=pk,
                template_version=version,
                locale="en",
                recipient=subscriber_id,
                subject=title,
                body=f"Hello {first_name}, your book, lamp are on their way.",
                status=Message.Status.SENT,
                provider="inbox",
                sent_at=now,
            )
            for run_id, (pk, subscriber_id, first_name) in rows
        ]
        Message.objects.bulk_create(messages, batch_size=500)
        InboxMessage.objects.bulk_create(
            [
                InboxMessage(
                    environment_id=environment_id,
                    subscriber_id=message.subscriber_id,
                    message=message,
                    workflow_key=WORKFLOW_KEY,
                    title=message.subject,
                    body=message.body,
                    data={"transaction_id": step_id, "payload": PAYLOAD},
                )
                for message in messages
            ],
            batch_size=500,
        )
    seconds = time.perf_counter() - started
    inserted = InboxMessage.objects.filter(message__step_id=step_id).count()
    if inserted != len(rows):
        raise RuntimeError(f"baseline {label}: expected {len(rows)} inbox rows, got {inserted}")
    return seconds


def _rate(count: int, seconds: float) -> float:
    return round(count / seconds, 1) if seconds else 0.0


def run(installation: Installation, config: FanoutConfig, *, profile: bool = False) -> dict[str, Any]:
    installation.setup_django()
    from django.conf import settings

    tag = str(int(time.time() * 1000))
    log(f"fanout: creating {config.subscribers} subscribers in one topic")
    fixture = _setup(config, tag)
    n = len(fixture.subscribers)
    # One small untimed warm-up of each path: imports, template compilation, caches.
    warm = min(n, 200)
    _baseline_once(fixture, f"{tag}-warm", limit=warm)
    _clarion_once(fixture, f"{tag}-warm", direct=warm)

    clarion: list[float] = []
    baseline: list[float] = []
    for index in range(config.repeats):
        order = ("baseline", "clarion") if index % 2 == 0 else ("clarion", "baseline")
        for name in order:
            if name == "clarion":
                seconds = _clarion_once(fixture, f"{tag}-{index}")
                clarion.append(seconds)
            else:
                seconds = _baseline_once(fixture, f"{tag}-{index}")
                baseline.append(seconds)
            log(
                f"fanout: repeat {index + 1}/{config.repeats} {name:8s} {seconds:7.2f} s "
                f"{n / seconds:9.1f} notifications/s"
            )

    result: dict[str, Any] = {
        "config": {
            "subscribers": n,
            "repeats": config.repeats,
            "fanout_chunk_size": settings.CLARION["FANOUT_CHUNK_SIZE"],
            "push": "replaced by a no-op (publish_messages_created)",
            "baseline_inserts": f"{n} Message + {n} InboxMessage rows (bulk_create, batch 500, one transaction)",
            "clarion_writes": f"{n} Run + {n} StepRun + {n} Message + {n} InboxMessage rows, {n} Run updates",
        },
        "clarion": {
            "seconds": round(median(clarion), 3),
            "notifications_per_s": _rate(n, median(clarion)),
            "runs_seconds": [round(s, 3) for s in clarion],
        },
        "baseline": {
            "seconds": round(median(baseline), 3),
            "notifications_per_s": _rate(n, median(baseline)),
            "runs_seconds": [round(s, 3) for s in baseline],
        },
    }
    result["ratio_clarion_over_baseline"] = (
        round(result["clarion"]["notifications_per_s"] / result["baseline"]["notifications_per_s"], 3)
        if result["baseline"]["notifications_per_s"]
        else 0.0
    )
    if config.with_push:
        push_timings: list[float] = []
        seconds = _clarion_once(fixture, f"{tag}-push", push=True, push_timings=push_timings)
        push_seconds = sum(push_timings)
        log(f"fanout: clarion with the push to an in-memory layer {seconds:7.2f} s, of which push {push_seconds:.2f} s")
        result["clarion_with_inmemory_push"] = {
            "seconds": round(seconds, 3),
            "notifications_per_s": _rate(n, seconds),
            "push_seconds": round(push_seconds, 3),
            "push_share": round(push_seconds / seconds, 3) if seconds else 0.0,
        }
    if profile:
        phases: dict[str, float] = {}
        with _phase_timer(phases):
            seconds = _clarion_once(fixture, f"{tag}-phases")
        ordered = sorted(phases.items(), key=lambda item: (item[0].startswith(" "), -item[1]))
        result["phases"] = {"total": round(seconds, 3), **{k: round(v, 3) for k, v in ordered}}
        log("fanout: phases of one clarion run: " + json.dumps(result["phases"]))
        log("fanout: profiling one clarion run (cProfile)")
        profiler = cProfile.Profile()
        _clarion_once(fixture, f"{tag}-profile", profiler=profiler)
        out = io.StringIO()
        stats = pstats.Stats(profiler, stream=out).sort_stats("cumulative")
        stats.print_stats(45)
        out.write("\n--- by own time ---\n")
        stats.sort_stats("tottime").print_stats(30)
        result["profile"] = out.getvalue()
    return result
