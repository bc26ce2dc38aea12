"""Digest ingest and flush: events/s into open digests against a raw ``bulk_create``, and flush time.

In this process (``bench.settings``, the temporary SQLite database or ``DATABASE_URL``), one
environment holds ``subscribers`` subscribers in one topic and a published workflow
``digest (window 1h, key payload.thread) → in_app "{{ digest.count }} new replies"``.

* **ingest (clarion)**: ``events`` triggers addressed to the topic, each through
  ``process_event`` with eager tasks: the fan-out creates one Run per subscriber, and
  ``advance_runs`` walks each chunk of 500 to the digest step, where the chunk's runs join their
  subscriber's open bucket (opened by the first event): lock the open buckets, insert the
  entries, bump their counts, park the runs — in the chunk's one transaction.
  ``subscribers × events`` digest entries in all (100 triggers × 10,000 subscribers = 1,000,000
  events-for-a-person into 10,000 digests by default).
* **ingest (baseline)**, interleaved (one baseline repetition after every tenth trigger): one
  transaction that ``bulk_create``s the least a durable digest membership needs for the same
  number of recipients — a Run row (status waiting) and a DigestEntry row each, into buckets that
  already exist. No locks, no fan-out walk, no trace.
* **ingest (COPY)**, PostgreSQL only, right after each baseline repetition: ``COPY`` of the rows
  Clarion's design writes per entry (a waiting Run, its DigestEntry, its ``digest_joined`` trace
  row) and one UPDATE of the buckets' counts, in one transaction: the floor for these rows, as
  the fan-out section's COPY baseline (the bulk_create baseline writes less and flatters the ratio).
* **flush**: ``digests_flush`` for the whole environment (every bucket closes, its leader is due
  now), then the leaders' runs through the engine in chunks of 500: close each bucket, load its
  events, render the in-app message with ``digest.count``, complete the other runs
  (``digest_merged``). By default on real ``clarion_worker`` processes (``BENCH_DIGEST_WORKERS``,
  1; each a django-q2 cluster + ticker, started untimed): their tickers take the due leaders and
  hand them to the cluster, as when windows end; ``BENCH_DIGEST_FLUSH=eager`` walks them in this
  process instead, one chunk after another. Reported: seconds, digests/s and entries/s. Checked
  afterwards: one message per subscriber with the full count, every run completed.

The ingest runs in this one process with eager tasks: no broker hop between a fan-out chunk and
its walk, and nothing in parallel with it (a deployment's workers would walk chunks while the
fan-out goes on). The wall time of a trigger includes PostgreSQL's work (the process waits for
each statement); it is also the wall time of a machine other work may be using. So each trigger,
baseline repetition and the flush is also metered in CPU seconds of *every* process involved:
this process and the PostgreSQL backends of the run's database (``bench.procs.CpuMeter``),
reported per entry: the steadier figure on a shared machine. On PostgreSQL the tables are
``ANALYZE``d after the setup and before the flush (untimed), as autovacuum would have done in the
minutes a deployment has between importing subscribers and triggering, and within a digest's window.
"""

from __future__ import annotations

import gc
import json
import os
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any
from unittest import mock

from bench.common import Installation, log, median
from bench.report import Row

TOPIC_KEY = "bench-digest-topic"
WORKFLOW_KEY = "bench-digest"
TEMPLATE_KEY = "bench-digest-in-app"
TITLE = "{{ digest.count }} new replies in {{ payload.thread }}"
RUN_COLUMNS = (
    *("id", "environment_id", "event_id", "workflow_version_id", "subscriber_id", "status", "step_index"),
    *("step_results", "attempts", "created_at", "updated_at"),
)


@dataclass(frozen=True)
class DigestConfig:
    subscribers: int = 10_000  # one digest each
    events: int = 100  # triggers to the whole topic

    @classmethod
    def quick(cls) -> DigestConfig:
        return cls(subscribers=200, events=5)


def _setup(config: DigestConfig, tag: str) -> tuple[Any, Any, list[int]]:
    from django.db import transaction

    from apps.subscribers.models import Subscriber, TopicSubscription
    from apps.subscribers.services import topic_upsert
    from apps.templates.services import template_save
    from apps.tenancy.services import environment_create
    from apps.workflows.services import workflow_upsert

    with transaction.atomic():
        environment = environment_create(name=f"bench digest {tag}").environment
        Subscriber.objects.bulk_create(
            [
                Subscriber(environment=environment, subscriber_id=f"dig-{i:06d}", first_name=f"R{i}", locale="en")
                for i in range(config.subscribers)
            ],
            batch_size=1000,
        )
        pks = list(Subscriber.objects.filter(environment=environment).order_by("pk").values_list("pk", flat=True))
        topic, _ = topic_upsert(environment=environment, key=TOPIC_KEY, name="Bench digest topic")
        TopicSubscription.objects.bulk_create(
            [TopicSubscription(topic=topic, subscriber_id=pk) for pk in pks], batch_size=1000
        )
        template_save(
            environment=environment,
            key=TEMPLATE_KEY,
            channel="in_app",
            content={"en": {"title": TITLE, "body": ""}},
            publish=True,
        )
        workflow, _ = workflow_upsert(
            environment=environment,
            key=WORKFLOW_KEY,
            name="Bench digest",
            steps=[
                {"id": "batch", "type": "digest", "window": "1h", "key": "payload.thread"},
                {"id": "inbox", "type": "in_app", "template": TEMPLATE_KEY},
            ],
            publish=True,
        )
        workflow.refresh_from_db()
    return environment, workflow, pks


def _analyze() -> None:
    """PostgreSQL: refresh the planner's statistics of the tables the runs read and write.

    The setup inserts 10,000 subscribers a second before the first trigger, and the flush follows
    the last trigger at once, while a deployment's autovacuum (every minute) would have analysed
    them long before: a subscriber table estimated at 36 rows made the claim's runs-with-their-
    subscriber query a nested loop over the whole table per chunk (a second per chunk at 1,000
    subscribers, growing with them). Run outside the timed sections."""
    from django.db import connection

    if connection.vendor != "postgresql":
        return
    from apps.events.models import Event
    from apps.subscribers.models import Subscriber, TopicSubscription
    from apps.workflows.models import DigestBucket, DigestEntry, Run, StepRun

    with connection.cursor() as cursor:
        for model in (Subscriber, TopicSubscription, Event, Run, StepRun, DigestBucket, DigestEntry):
            cursor.execute(f"ANALYZE {connection.ops.quote_name(model._meta.db_table)}")


def _event(environment: Any, workflow: Any, label: str) -> Any:
    from apps.events.models import Event

    return Event.objects.create(
        environment=environment,
        transaction_id=f"digest-{label}",
        workflow=workflow,
        workflow_version_id=workflow.published_version_id,
        payload={"thread": "t-1", "reply": label},
        recipients=[{"topic": TOPIC_KEY}],
    )


def _meter(installation: Installation) -> Any:
    """A CPU meter (not started) over this process and the PostgreSQL backends of the run's database."""
    from bench.procs import CpuMeter

    return CpuMeter(
        roots={"worker": [os.getpid()]},
        postmaster=installation.postmaster(),
        database_name=installation.database_name,
    )


def _cpu(usage: dict[str, float]) -> dict[str, float]:
    return {"process": usage["worker"], "postgres": usage["postgres"], "total": usage["system"]}


def _baseline_once(
    installation: Installation, environment: Any, workflow: Any, pks: list[int], buckets: list[int], label: str
) -> tuple[float, dict[str, float]]:
    """Run + DigestEntry rows for every recipient, into existing buckets, in one transaction."""
    from django.db import transaction

    from apps.workflows.models import DigestEntry, Run

    event = _event(environment, workflow, f"baseline-{label}")
    gc.collect()
    meter = _meter(installation).start()
    started = time.perf_counter()
    with transaction.atomic():
        runs = Run.objects.bulk_create(
            [
                Run(
                    environment=environment,
                    event=event,
                    workflow_version_id=workflow.published_version_id,
                    subscriber_id=pk,
                    status=Run.Status.WAITING,
                )
                for pk in pks
            ],
            batch_size=500,
        )
        if runs and runs[0].pk is None:  # SQLite before RETURNING support: read them back
            runs = list(Run.objects.filter(event=event).order_by("subscriber_id"))
        DigestEntry.objects.bulk_create(
            [
                DigestEntry(bucket_id=bucket, run_id=run.pk, step_id="batch")
                for bucket, run in zip(buckets, runs, strict=True)
            ],
            batch_size=1000,
        )
    seconds = time.perf_counter() - started
    return seconds, _cpu(meter.stop())


def _copy_baseline_once(
    installation: Installation, environment: Any, workflow: Any, pks: list[int], buckets: list[int], label: str
) -> tuple[float, dict[str, float]] | None:
    """The rows Clarion's design writes per entry, by ``COPY`` (PostgreSQL only), in one transaction:
    a Run in its waiting state, its DigestEntry and its ``digest_joined`` trace row, then the
    buckets' counts by one UPDATE. Ids and rows are built before the clock starts."""
    from django.db import connection, transaction
    from django.db.models import F
    from django.utils import timezone

    from apps.workflows.models import DigestBucket, DigestEntry, Run, StepRun

    if connection.vendor != "postgresql":
        return None
    event = _event(environment, workflow, f"baseline-copy-{label}")
    now = timezone.now()
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT nextval(pg_get_serial_sequence(%s, 'id')) FROM generate_series(1, %s)",
            [Run._meta.db_table, len(pks)],
        )
        run_ids = [row[0] for row in cursor.fetchall()]
    state = json.dumps({"batch": {"type": "digest", "in_progress": True, "key": "t-1", "role": "member"}})
    closes_at = (event.created_at + timedelta(hours=1)).isoformat()
    copies: list[tuple[str, tuple[str, ...], list[tuple[Any, ...]]]] = [
        (
            Run._meta.db_table,
            RUN_COLUMNS,
            [
                (run_id, environment.pk, event.pk, workflow.published_version_id, pk, "waiting", 0, state, 1, now, now)
                for run_id, pk in zip(run_ids, pks, strict=True)
            ],
        ),
        (
            DigestEntry._meta.db_table,
            ("bucket_id", "run_id", "step_id", "content", "created_at"),
            [(bucket, run_id, "batch", "{}", now) for bucket, run_id in zip(buckets, run_ids, strict=True)],
        ),
        (
            StepRun._meta.db_table,
            ("run_id", "step_id", "step_type", "decision", "reason", "detail", "created_at"),
            [
                (
                    run_id,
                    "batch",
                    "digest",
                    "waiting",
                    "digest_joined",
                    json.dumps({"key": "t-1", "role": "member", "bucket": bucket, "closes_at": closes_at}),
                    now,
                )
                for bucket, run_id in zip(buckets, run_ids, strict=True)
            ],
        ),
    ]
    gc.collect()
    meter = _meter(installation).start()
    started = time.perf_counter()
    with transaction.atomic():
        connection.ensure_connection()
        with connection.connection.cursor() as cursor:
            for table, columns, rows in copies:
                with cursor.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy:
                    for row in rows:
                        copy.write_row(row)
            cursor.execute(
                f"UPDATE {DigestBucket._meta.db_table} SET entry_count = entry_count + 1, last_event_at = %s "
                "WHERE id = ANY(%s)",
                [now, buckets],
            )
    seconds = time.perf_counter() - started
    usage = _cpu(meter.stop())
    # out of the flush again: the entries and the counts they added (the runs stay, excluded by name)
    with transaction.atomic():
        DigestEntry.objects.filter(run__event=event).delete()
        DigestBucket.objects.filter(pk__in=buckets).update(entry_count=F("entry_count") - 1)
    return seconds, usage


FLUSH_TIMEOUT = float(os.environ.get("BENCH_DIGEST_FLUSH_TIMEOUT", "900"))


def _profile(pid: int, phase: str) -> subprocess.Popen[bytes] | None:
    """``BENCH_DIGEST_PYSPY=/path/to/py-spy``: record ``pid`` and its children (raw, folded stacks)
    into ``$TMPDIR/digest-<phase>-<pid>.txt`` while the phase runs."""
    py_spy = os.environ.get("BENCH_DIGEST_PYSPY")
    if not py_spy:
        return None
    out = os.path.join(tempfile.gettempdir(), f"digest-{phase}-{pid}.txt")
    argv = [py_spy, "record", "--subprocesses", "--format", "raw", "--rate", "50", "--pid", str(pid), "-o", out]
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _flush_through_workers(
    installation: Installation, environment: Any, workflow: Any, n: int
) -> tuple[float, dict[str, float]]:
    """The flush on ``BENCH_DIGEST_WORKERS`` real ``clarion_worker`` processes (django-q2 cluster +
    ticker each, ``CLARION_WORKERS`` cluster processes; started before the clock, untimed): close
    every bucket (``digests_flush``: the leaders are due now), and the workers' tickers take the
    due leaders and hand them to the cluster in chunks, as when 10,000 windows end together.
    Timed until no run of the flush waits any more; metered over the workers and PostgreSQL."""
    from django.db import close_old_connections, transaction

    from apps.workflows import digests
    from apps.workflows.models import Run
    from bench.procs import Stack

    processes = int(os.environ.get("BENCH_DIGEST_WORKERS", "1"))
    waiting = Run.objects.filter(
        environment=environment, status__in=[Run.Status.WAITING, Run.Status.PENDING, Run.Status.RUNNING]
    ).exclude(event__transaction_id__startswith="digest-baseline-")
    with Stack(installation, web_processes=0, worker_processes=processes, esp=False) as stack:
        stack.start(web=False, workers=True)
        close_old_connections()
        gc.collect()
        profiler = _profile(stack.workers[0].pid, "flush")
        with stack.meter() as cpu:
            started = time.perf_counter()
            with transaction.atomic():
                leaders = digests.digests_flush(environment_id=environment.pk, workflow_id=workflow.pk)
            while waiting.exists():
                if time.perf_counter() - started > FLUSH_TIMEOUT:
                    raise RuntimeError(f"digest flush: {waiting.count()} runs still open after {FLUSH_TIMEOUT:.0f} s")
                time.sleep(0.25)
            seconds = time.perf_counter() - started
        usage = cpu.result()
        if profiler is not None:
            profiler.send_signal(signal.SIGINT)
            profiler.wait(timeout=60)
    log(f"digest: {len(leaders)} leaders flushed by {processes} clarion_worker process(es)")
    return seconds, {"process": usage["worker"], "postgres": usage["postgres"], "total": usage["system"]}


def run(installation: Installation, config: DigestConfig) -> dict[str, Any]:
    installation.setup_django()
    flush_mode = os.environ.get("BENCH_DIGEST_FLUSH", "workers")
    from django.db import transaction
    from django.test import override_settings

    from apps.inbox.models import InboxMessage
    from apps.workflows import digests
    from apps.workflows.engine import advance_runs, process_event
    from apps.workflows.models import DigestBucket, DigestEntry, Run

    tag = str(int(time.time() * 1000))
    log(f"digest: {config.subscribers} subscribers in one topic, {config.events} triggers")
    environment, workflow, pks = _setup(config, tag)
    _analyze()
    n = len(pks)
    no_push = mock.patch("apps.inbox.realtime.publish_messages_created", lambda messages: None)

    clarion: list[float] = []
    baseline: list[float] = []
    clarion_cpu: list[dict[str, float]] = []
    baseline_cpu: list[dict[str, float]] = []
    copy_baseline: list[float] = []  # PostgreSQL: COPY of the rows the design writes
    copy_cpu: list[dict[str, float]] = []
    buckets: list[int] = []
    profiler = _profile(os.getpid(), "ingest")
    with override_settings(CLARION_TASKS_EAGER=True), no_push:
        for index in range(config.events):
            event = _event(environment, workflow, f"{tag}-{index}")
            gc.collect()
            meter = _meter(installation).start()
            started = time.perf_counter()
            process_event(event.pk)
            clarion.append(time.perf_counter() - started)
            clarion_cpu.append(_cpu(meter.stop()))
            if index == 0:
                buckets = list(
                    DigestBucket.objects.filter(environment=environment)
                    .order_by("subscriber_id")
                    .values_list("pk", flat=True)
                )
            if index % 10 == 0:
                seconds, usage = _baseline_once(installation, environment, workflow, pks, buckets, f"{tag}-{index}")
                baseline.append(seconds)
                baseline_cpu.append(usage)
                copied = _copy_baseline_once(installation, environment, workflow, pks, buckets, f"{tag}-{index}")
                if copied is not None:
                    copy_baseline.append(copied[0])
                    copy_cpu.append(copied[1])
                # the baseline's rows must not take part in the flush
                DigestEntry.objects.filter(run__event__transaction_id=f"digest-baseline-{tag}-{index}").delete()
            if (index + 1) % 10 == 0 or index + 1 == config.events:
                done = (index + 1) * n
                log(f"digest: {done:,} entries in {sum(clarion):7.1f} s ({done / sum(clarion):9.1f} entries/s)")

        if profiler is not None:
            profiler.send_signal(signal.SIGINT)
            profiler.wait(timeout=60)
        entries = DigestEntry.objects.filter(bucket__environment=environment).count()
        open_buckets = DigestBucket.objects.filter(environment=environment, status="open").count()
        expected = n * config.events
        if entries != expected or open_buckets != n:
            raise RuntimeError(
                f"digest ingest: {entries} entries in {open_buckets} open buckets, expected {expected} in {n}"
            )

        _analyze()  # a window's hour later, autovacuum would have
        if flush_mode == "eager":
            gc.collect()
            meter = _meter(installation).start()
            started = time.perf_counter()
            with transaction.atomic():
                leaders = digests.digests_flush(environment_id=environment.pk, workflow_id=workflow.pk)
            advance_runs(sorted(leaders))
            flush_seconds = time.perf_counter() - started
            flush_cpu = _cpu(meter.stop())
    if flush_mode != "eager":
        flush_seconds, flush_cpu = _flush_through_workers(installation, environment, workflow, n)

    messages = InboxMessage.objects.filter(environment=environment)
    titles = set(messages.values_list("title", flat=True))
    waiting = Run.objects.filter(environment=environment, status=Run.Status.WAITING).exclude(
        event__transaction_id__startswith="digest-baseline-"
    )
    if messages.count() != n or titles != {f"{config.events} new replies in t-1"} or waiting.exists():
        raise RuntimeError(f"digest flush: {messages.count()} messages {sorted(titles)[:3]}, {waiting.count()} waiting")
    log(f"digest: flush of {n} digests ({expected:,} entries) {flush_seconds:.1f} s")

    per_event = median(clarion)
    per_baseline = median(baseline)

    def per_entry(usages: list[dict[str, float]], entries: int) -> dict[str, float]:
        """Median CPU ms per entry of each part, over the rounds (the first trigger, which opens
        the buckets, is left out of the median when there are others, like the wall-time median)."""
        rounds = usages[1:] or usages
        return {part: round(1000 * median([u[part] for u in rounds]) / entries, 4) for part in rounds[0]}

    cpu_ingest = per_entry(clarion_cpu, n)
    cpu_baseline = {part: round(1000 * median([u[part] for u in baseline_cpu]) / n, 4) for part in baseline_cpu[0]}
    copy: dict[str, Any] = {}
    if copy_baseline:
        copy = {
            "rows": "a Run (waiting), a DigestEntry and a digest_joined StepRun per entry; one UPDATE of the counts",
            "median_seconds": round(median(copy_baseline), 3),
            "entries_per_s": round(n / median(copy_baseline), 1),
            "repetitions": len(copy_baseline),
            "cpu_ms_per_entry": {
                part: round(1000 * median([u[part] for u in copy_cpu]) / n, 4) for part in copy_cpu[0]
            },
        }
    return {
        "config": {
            "subscribers": n,
            "digests": n,
            "triggers": config.events,
            "entries": expected,
            "window": "1h",
            "push": "replaced by a no-op (publish_messages_created)",
            "baseline_inserts": f"{n} Run + {n} DigestEntry rows per trigger (bulk_create, one transaction)",
        },
        "ingest": {
            "seconds": round(sum(clarion), 2),
            "entries_per_s": round(expected / sum(clarion), 1),
            "median_trigger_seconds": round(per_event, 3),
            "cpu_ms_per_entry": cpu_ingest,
        },
        "baseline": {
            "median_seconds": round(per_baseline, 3),
            "entries_per_s": round(n / per_baseline, 1),
            "repetitions": len(baseline),
            "cpu_ms_per_entry": cpu_baseline,
        },
        "copy_baseline": copy,
        "ratio_clarion_over_baseline": round((n / per_event) / (n / per_baseline), 3),
        "flush": {
            "seconds": round(flush_seconds, 2),
            "digests_per_s": round(n / flush_seconds, 1),
            "entries_per_s": round(expected / flush_seconds, 1),
            "cpu_seconds": flush_cpu,
            "cpu_ms_per_digest": round(1000 * flush_cpu["total"] / n, 3),
            "mode": flush_mode,
            "worker_processes": None if flush_mode == "eager" else int(os.environ.get("BENCH_DIGEST_WORKERS", "1")),
        },
    }


def rows(result: dict[str, Any]) -> list[Row]:
    """The table's digest rows: ingest entries/s (against the bulk_create baseline) and the flush."""
    cfg, ingest, flush = result["config"], result["ingest"], result["flush"]
    scale = f"{cfg['entries']:,} events into {cfg['digests']:,} digests"
    copy = result.get("copy_baseline") or {}
    rows = [
        Row(
            "digest",
            f"ingest, {scale}",
            ingest["entries_per_s"],
            "entries/s",
            baseline=result["baseline"]["entries_per_s"],
            baseline_name="Run + DigestEntry bulk_create",
            goal_min=10000,
            key="digest.ingest",
            note=(
                f"median trigger of {cfg['subscribers']:,} recipients {ingest['median_trigger_seconds']} s; "
                f"CPU {ingest['cpu_ms_per_entry']['total']} ms/entry (all processes), "
                f"baseline {result['baseline']['cpu_ms_per_entry']['total']}"
            ),
        ),
        Row(
            "digest",
            f"flush of {cfg['digests']:,} digests ({cfg['entries']:,} entries)",
            flush["seconds"],
            "s",
            goal_max=30,
            lower_is_better=True,
            key="digest.flush",
            note=(
                f"{flush['digests_per_s']:,} digests/s, {flush['entries_per_s']:,} entries/s, "
                f"CPU {flush['cpu_ms_per_digest']} ms/digest; every message checked"
            ),
        ),
    ]
    if copy:
        rows.insert(
            1,
            Row(
                "digest",
                f"ingest, {scale}, vs COPY",
                ingest["entries_per_s"],
                "entries/s",
                baseline=copy["entries_per_s"],
                baseline_name="COPY of the rows the design writes",
                key="digest.ingest_copy",
                note=f"COPY: {copy['rows']}; CPU {copy['cpu_ms_per_entry']['total']} ms/entry",
            ),
        )
    return rows
