"""Fan-out and broadcast: in-app notifications committed per second by real workers, against a
COPY of exactly the rows the design writes and against django-notifications-hq in the same run.

One environment holds ``subscribers`` subscribers, all in one topic, and a published workflow with
a single ``in_app`` step (the title reads only the payload, the body the subscriber's first name).
``clarion_worker`` processes (``bench.procs.Stack``: the django-q2 cluster on the real broker —
Redis with ``REDIS_URL``, the ORM broker otherwise) do the work. Each round, in alternating order:

* **topic**: ``events.services.event_trigger`` to the topic (the service the API calls); the
  wake-up goes through the broker; the clock stops when every run is completed (polled every
  0.25 s). Then every row is counted: N runs completed, N step runs, N messages, N inbox rows.
* **broadcast**: the same through ``events.broadcasts.event_broadcast`` (every subscriber of the
  environment: the same N).
* **copy**: the rows the first topic round wrote (its runs, step runs, messages and inbox rows,
  read back whole), with new keys and a new event, written by four ``COPY … FROM STDIN`` in one
  transaction; the rows are built and the keys reserved before the clock starts.

The realtime push after commit is whatever the worker does (with Redis: channels-redis, no
socket listening). The CPU of every process (workers, PostgreSQL backends, Redis) is metered per
round. With PostgreSQL, ``bench.peers.run_notifications_hq`` then runs django-notifications-hq's
``notify.send`` to as many users in its own virtualenv against a database on the same server.

``--profile``: one extra in-process, eager run (no broker) with phase timings and a cProfile.
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
from bench.report import Row

TOPIC_KEY = "bench-topic"
WORKFLOW_KEY = "bench-fanout"
TEMPLATE_KEY = "bench-fanout-in-app"
TITLE = "Order {{ payload.order_id }} shipped"
BODY = "Hello {{ subscriber.first_name }}, your {{ payload.products | join(', ') }} are on their way."
PAYLOAD = {"order_id": 42, "products": ["book", "lamp"]}


@dataclass(frozen=True)
class FanoutConfig:
    subscribers: int = 100_000
    repeats: int = 3
    worker_processes: int = 1
    cluster_workers: int = 2
    peer: bool = True  # django-notifications-hq (PostgreSQL only)
    broadcast: bool = True
    timeout: float = 1800.0  # per round

    @classmethod
    def quick(cls) -> FanoutConfig:
        return cls(subscribers=500, repeats=1, peer=False)


@dataclass
class _Fixture:
    environment: Any
    workflow: Any
    subscribers: list[tuple[int, str, str]]  # (pk, subscriber_id, first_name)
    template_version: Any


def _setup(config: FanoutConfig, tag: str) -> _Fixture:
    from django.db import transaction

    from apps.subscribers.models import Subscriber, TopicSubscription
    from apps.subscribers.services import topic_upsert
    from apps.templates.services import template_save
    from apps.tenancy.services import environment_create
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
    return _Fixture(
        environment=environment,
        workflow=workflow,
        subscribers=subscribers,
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


def _rate(count: int, seconds: float) -> float:
    return round(count / seconds, 1) if seconds else 0.0


def _counts(event_pk: int) -> dict[str, int]:
    from apps.delivery.models import Message
    from apps.inbox.models import InboxMessage
    from apps.workflows.models import Run, StepRun

    return {
        "runs completed": Run.objects.filter(event_id=event_pk, status=Run.Status.COMPLETED).count(),
        "step runs": StepRun.objects.filter(run__event_id=event_pk).count(),
        "messages": Message.objects.filter(run__event_id=event_pk).count(),
        "inbox messages": InboxMessage.objects.filter(message__run__event_id=event_pk).count(),
    }


def _through_workers(fixture: _Fixture, stack: Any, label: str, *, broadcast: bool, timeout: float) -> dict[str, Any]:
    """One event through the service and the real broker; seconds until every run completed."""
    from django.db import close_old_connections

    from apps.events.broadcasts import BroadcastRequest, event_broadcast
    from apps.events.models import Event
    from apps.events.services import TriggerRequest, event_trigger
    from apps.workflows.models import Run

    n = len(fixture.subscribers)
    transaction_id = f"fanout-{label}"
    with stack.meter() as cpu:
        started = time.perf_counter()
        if broadcast:
            request = BroadcastRequest(workflow=WORKFLOW_KEY, payload=PAYLOAD, transaction_id=transaction_id)
            event = event_broadcast(environment=fixture.environment, request=request)
        else:
            event = event_trigger(
                environment=fixture.environment,
                request=TriggerRequest(
                    workflow=WORKFLOW_KEY, to=[{"topic": TOPIC_KEY}], payload=PAYLOAD, transaction_id=transaction_id
                ),
            )
        done = 0
        while True:
            done = Run.objects.filter(event_id=event.pk, status=Run.Status.COMPLETED).count()
            if done >= n:
                break
            if time.perf_counter() - started > timeout:
                raise RuntimeError(f"fan-out {label}: {done} of {n} runs completed after {timeout:.0f} s")
            time.sleep(0.25)
        seconds = time.perf_counter() - started
    close_old_connections()
    counts = _counts(event.pk)
    wrong = {k: v for k, v in counts.items() if v != n}
    if wrong or Event.objects.get(pk=event.pk).status != Event.Status.PROCESSED:
        raise RuntimeError(f"fan-out {label}: expected {n} of each and a processed event, got {counts}")
    usage = cpu.result()
    return {"event": event.pk, "seconds": seconds, "cpu": usage}


_TABLES = ("workflows_run", "workflows_steprun", "delivery_message", "inbox_inboxmessage")
_JSON_OIDS = (114, 3802)


def _design_rows(event_pk: int) -> dict[str, tuple[list[str], list[list[Any]], list[int]]]:
    """Every row the design wrote for one event, per table: (columns, rows, indexes of JSON columns)."""
    from django.db import connection

    queries = {
        "workflows_run": "SELECT r.* FROM workflows_run r WHERE r.event_id = %s ORDER BY r.id",
        "workflows_steprun": "SELECT s.* FROM workflows_steprun s JOIN workflows_run r ON r.id = s.run_id "
        "WHERE r.event_id = %s ORDER BY s.id",
        "delivery_message": "SELECT m.* FROM delivery_message m JOIN workflows_run r ON r.id = m.run_id "
        "WHERE r.event_id = %s ORDER BY m.id",
        "inbox_inboxmessage": "SELECT i.* FROM inbox_inboxmessage i JOIN delivery_message m ON m.id = i.message_id "
        "JOIN workflows_run r ON r.id = m.run_id WHERE r.event_id = %s ORDER BY i.id",
    }
    found = {}
    with connection.cursor() as cursor:
        for table, sql in queries.items():
            cursor.execute(sql, [event_pk])
            columns = [d.name for d in cursor.description]
            json_columns = [i for i, d in enumerate(cursor.description) if d.type_code in _JSON_OIDS]
            found[table] = (columns, [list(row) for row in cursor.fetchall()], json_columns)
    return found


def _copy_once(fixture: _Fixture, design: dict[str, Any], label: str) -> dict[str, Any]:
    """The design's rows again, new keys and a new event, by four COPYs in one transaction."""
    from django.db import connection, transaction

    from apps.events.models import Event

    event = Event.objects.create(
        environment=fixture.environment,
        transaction_id=f"copy-{label}",
        workflow=fixture.workflow,
        workflow_version_id=fixture.workflow.published_version_id,
        payload=PAYLOAD,
        recipients=[{"topic": TOPIC_KEY}],
        status=Event.Status.PROCESSED,
    )
    new_keys: dict[str, dict[int, int]] = {}
    prepared: dict[str, tuple[list[str], list[list[Any]]]] = {}
    with connection.cursor() as cursor:
        for table in _TABLES:
            columns, rows, json_columns = design[table]
            cursor.execute(
                "SELECT nextval(pg_get_serial_sequence(%s, 'id')) FROM generate_series(1, %s)", [table, len(rows)]
            )
            ids = [pk for (pk,) in cursor.fetchall()]
            new_keys[table] = {row[columns.index("id")]: pk for row, pk in zip(rows, ids, strict=True)}
            remap: dict[str, Any] = {
                "workflows_run": lambda: {"event_id": lambda _old: event.pk},
                "workflows_steprun": lambda: {"run_id": new_keys["workflows_run"].__getitem__},
                "delivery_message": lambda: {"run_id": new_keys["workflows_run"].__getitem__},
                "inbox_inboxmessage": lambda: {"message_id": new_keys["delivery_message"].__getitem__},
            }[table]()
            positions = [(columns.index(name), change) for name, change in remap.items()]
            id_position = columns.index("id")
            out = []
            for row, pk in zip(rows, ids, strict=True):
                row = list(row)
                row[id_position] = pk
                for position, change in positions:
                    row[position] = change(row[position])
                for position in json_columns:
                    row[position] = None if row[position] is None else json.dumps(row[position])
                out.append(row)
            prepared[table] = (columns, out)
    gc.collect()
    started = time.perf_counter()
    with transaction.atomic(), connection.cursor() as cursor:
        for table in _TABLES:
            columns, rows = prepared[table]
            names = ", ".join(f'"{c}"' for c in columns)
            with cursor.cursor.copy(f'COPY "{table}" ({names}) FROM STDIN') as copy:
                for row in rows:
                    copy.write_row(row)
    seconds = time.perf_counter() - started
    return {"event": event.pk, "seconds": seconds, "rows": {t: len(prepared[t][1]) for t in _TABLES}}


def run(installation: Installation, config: FanoutConfig, *, profile: bool = False) -> dict[str, Any]:
    from bench.procs import Stack

    installation.setup_django()
    from django.conf import settings

    tag = str(int(time.time() * 1000))
    log(f"fanout: creating {config.subscribers} subscribers in one topic")
    fixture = _setup(config, tag)
    n = len(fixture.subscribers)
    postgres = installation.database == "postgresql"
    series: dict[str, list[float]] = {"topic": [], "broadcast": [], "copy": []}
    cpu: dict[str, list[dict[str, float]]] = {"topic": [], "broadcast": []}
    design: dict[str, Any] | None = None
    result: dict[str, Any] = {}
    with Stack(
        installation,
        web_processes=0,
        worker_processes=config.worker_processes,
        cluster_workers=config.cluster_workers,
        esp=False,
    ) as stack:
        stack.start(web=False, workers=True)
        # Untimed warm-up: imports, template compilation, connections in every worker process.
        warm = _through_workers(fixture, stack, f"{tag}-warm", broadcast=False, timeout=config.timeout)
        if postgres:
            design = _design_rows(warm["event"])
        for index in range(config.repeats):
            names = ["topic", "broadcast", "copy"] if index % 2 == 0 else ["copy", "broadcast", "topic"]
            for name in names:
                if name == "copy":
                    if design is None:
                        continue
                    seconds = _copy_once(fixture, design, f"{tag}-{index}")["seconds"]
                elif name == "broadcast" and not config.broadcast:
                    continue
                else:
                    measured = _through_workers(
                        fixture, stack, f"{tag}-{name}-{index}", broadcast=name == "broadcast", timeout=config.timeout
                    )
                    seconds = measured["seconds"]
                    cpu[name].append(measured["cpu"])
                series[name].append(seconds)
                log(
                    f"fanout: round {index + 1}/{config.repeats} {name:9s} {seconds:7.2f} s "
                    f"{n / seconds:9.1f} notifications/s"
                )

    def summary(name: str) -> dict[str, Any]:
        runs = series[name]
        if not runs:
            return {}
        seconds = median(runs)
        out: dict[str, Any] = {
            "seconds": round(seconds, 3),
            "notifications_per_s": _rate(n, seconds),
            "runs_seconds": [round(s, 3) for s in runs],
        }
        if cpu.get(name):
            system = median([c["system"] for c in cpu[name]])
            out["cpu_ms_per_notification"] = round(1000 * system / n, 4)
            out["cpu_median_round"] = cpu[name][len(cpu[name]) // 2]
        return out

    result.update(
        {
            "config": {
                "subscribers": n,
                "repeats": config.repeats,
                "worker_processes": config.worker_processes,
                "cluster_workers": config.cluster_workers,
                "fanout_chunk_size": settings.CLARION["FANOUT_CHUNK_SIZE"],
                "broker": "redis" if installation.redis_url else "django ORM",
                "copy_rows_per_notification": (
                    {t: len(design[t][1]) // n for t in _TABLES} if design is not None else None
                ),
            },
            "topic": summary("topic"),
            "broadcast": summary("broadcast"),
            "copy": summary("copy"),
        }
    )
    if config.peer and postgres:
        from bench.peers import run_notifications_hq

        log(f"fanout: django-notifications-hq notify.send to {n} users ({config.repeats} runs)")
        result["peer"] = run_notifications_hq(installation.database_url, n, repeats=config.repeats)
    if profile:
        phases: dict[str, float] = {}
        with _phase_timer(phases):
            seconds = _clarion_once(fixture, f"{tag}-phases")
        ordered = sorted(phases.items(), key=lambda item: (item[0].startswith(" "), -item[1]))
        result["phases"] = {"total": round(seconds, 3), **{k: round(v, 3) for k, v in ordered}}
        log("fanout: phases of one in-process run: " + json.dumps(result["phases"]))
        profiler = cProfile.Profile()
        _clarion_once(fixture, f"{tag}-profile", profiler=profiler)
        out = io.StringIO()
        stats = pstats.Stats(profiler, stream=out).sort_stats("cumulative")
        stats.print_stats(45)
        out.write("\n--- by own time ---\n")
        stats.sort_stats("tottime").print_stats(30)
        result["profile"] = out.getvalue()
    return result


def rows(result: dict[str, Any]) -> list[Row]:
    n = result.get("config", {}).get("subscribers", 0)
    topic = result.get("topic", {}).get("notifications_per_s")
    broadcast = result.get("broadcast", {}).get("notifications_per_s")
    copy = result.get("copy", {}).get("notifications_per_s")
    peer = result.get("peer", {}).get("notifications_per_s")
    workers = result.get("config", {}).get("worker_processes", 1)
    cpu = result.get("topic", {}).get("cpu_ms_per_notification")
    note = f"{workers} worker process(es); CPU {cpu} ms/notification (all processes)" if cpu else ""
    return [
        Row(
            section="fanout",
            name=f"in-app fan-out to a {n:,} topic, committed",
            measured=topic,
            unit="notifications/s",
            baseline=copy,
            baseline_name="COPY of the same rows (run, step run, message, inbox row)",
            goal_min=10_000,
            ratio_min=0.6,
            note=note,
            key="fanout.copy",
        ),
        Row(
            section="fanout",
            name="fan-out vs django-notifications-hq notify.send",
            measured=topic,
            unit="notifications/s",
            baseline=peer,
            baseline_name="django-notifications-hq notify.send (own virtualenv)",
            goal_min=10_000,
            ratio_min=7,
            key="fanout.peer",
            note=f"peer {result['peer'].get('version', '')}" if "peer" in result else "peer not run (PostgreSQL only)",
        ),
        Row(
            section="fanout",
            name=f"broadcast to every subscriber ({n:,})",
            measured=broadcast,
            unit="notifications/s",
            baseline=topic,
            baseline_name="the same fan-out to a topic",
            goal_min=10_000,
            ratio_min=0.9,
            key="fanout.broadcast",
        ),
    ]
