"""Recovery: how soon work comes back after a worker dies, and how late timers fire.

``python -m bench recovery`` (``--quick`` for a smoke run) against a real worker process (the
worker command: ``manage.py clarion_worker`` when it exists, else ``qcluster``) on the bench's
installation: the embedded default (SQLite + ORM broker), or ``DATABASE_URL`` + ``REDIS_URL``.
Triggers go in through ``event_trigger`` in this process, exactly as the API would, and the
worker does the rest; this process only watches the database.

* **orphaned run → resumed**: a trigger to a topic of N subscribers; the moment one of its
  runs is ``running`` (claimed under a lease by the worker), SIGKILL the worker's whole process
  group and start a new one at once (a supervisor's restart). The result is the time from the
  kill until every run that was ``running`` at the kill has completed. Goal ≤ 30 s.
* **delay lateness**: triggers spread over ``spread`` seconds through ``delay 3s → in_app``;
  lateness = the in-app message's ``created_at`` minus the delay's due time (from the trace).
* **digest lateness**: triggers through ``digest window 4s → in_app``, one bucket each;
  lateness = the digest's in-app message ``created_at`` minus the bucket's ``closes_at``.
  Goal for both: p99 ≤ 5 s.

Reported as goal | measured | ratio (measured / goal; ≤ 1 meets the goal).
"""

from __future__ import annotations

import random
import time
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from bench.chaos.infra import Managed
from bench.chaos.run import worker_argv
from bench.common import Installation, log, median, percentile

TOPIC_KEY = "recovery-all"
GOAL_RESUME_SECONDS = 30.0
GOAL_LATENESS_P99_SECONDS = 5.0
READY_TIMEOUT = 90.0


@dataclass(frozen=True)
class RecoveryConfig:
    subscribers: int = 3000  # topic size: enough chunks that a kill finds runs under lease
    repeats: int = 3
    orphan_timeout: float = 90.0  # stop waiting for the orphans after this (the goal is 30 s)
    delays: int = 120
    digests: int = 40
    spread: float = 30.0  # seconds over which the delay / digest triggers are sent
    delay: str = "3s"
    window: str = "4s"
    timer_timeout: float = 120.0  # stop waiting for the timers this long after the last trigger

    @classmethod
    def quick(cls) -> RecoveryConfig:
        return cls(subscribers=1000, repeats=1, orphan_timeout=60.0, delays=20, digests=10, spread=8.0)


def _setup(config: RecoveryConfig) -> Any:
    from django.db import transaction

    from apps.subscribers.models import Subscriber, TopicSubscription
    from apps.subscribers.services import topic_upsert
    from apps.templates.services import template_save
    from apps.tenancy.services import environment_create
    from apps.workflows.services import workflow_upsert

    with transaction.atomic():
        environment = environment_create(name=f"bench recovery {uuid.uuid4().hex[:6]}").environment
        Subscriber.objects.bulk_create(
            [
                Subscriber(environment=environment, subscriber_id=f"rec-{i:06d}", locale="en")
                for i in range(config.subscribers)
            ],
            batch_size=1000,
        )
        topic, _ = topic_upsert(environment=environment, key=TOPIC_KEY, name="Recovery")
        pks = Subscriber.objects.filter(environment=environment).values_list("pk", flat=True)
        TopicSubscription.objects.bulk_create([TopicSubscription(topic=topic, subscriber_id=pk) for pk in pks])
        template_save(
            environment=environment,
            key="recovery-in-app",
            channel="in_app",
            content={"en": {"title": "Recovery {{ payload.n }}", "body": ""}},
            publish=True,
        )
        inbox = {"id": "inbox", "type": "in_app", "template": "recovery-in-app"}
        for key, first in (
            ("recovery-fan", None),
            ("recovery-delay", {"id": "wait", "type": "delay", "for": config.delay}),
            ("recovery-digest", {"id": "batch", "type": "digest", "window": config.window, "key": "payload.k"}),
        ):
            workflow_upsert(
                environment=environment,
                key=key,
                name=key,
                steps=[step for step in (first, inbox) if step],
                publish=True,
            )
    return environment


def _trigger(environment: Any, workflow: str, to: list[Any], payload: dict[str, Any]) -> Any:
    from apps.events.services import TriggerRequest, event_trigger

    return event_trigger(environment=environment, request=TriggerRequest(workflow, to, payload))


def _start_worker(installation: Installation, worker: Managed | None) -> Managed:
    if worker is None:
        argv, _name = worker_argv()
        worker = Managed(
            "worker",
            argv,
            installation.process_env(CLARION_WORKERS="2", LOG_LEVEL="INFO"),
            installation.var_dir / "worker.log",
        )
    offset = worker.log_path.stat().st_size if worker.log_path.exists() else 0
    worker.start()
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        if not worker.alive():
            raise RuntimeError(f"the worker exited\n{worker.tail()}")
        if "running." in worker.log_path.read_bytes()[offset:].decode(errors="replace"):
            return worker
        time.sleep(0.1)
    raise RuntimeError(f"the worker is not ready after {READY_TIMEOUT:.0f} s\n{worker.tail()}")


def _stats(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {
        "count": len(ordered),
        "p50_s": round(median(ordered), 2),
        "p99_s": round(percentile(ordered, 99), 2),
        "max_s": round(ordered[-1], 2) if ordered else 0.0,
    }


def _timers(environment: Any, config: RecoveryConfig) -> dict[str, Any]:
    """Delays and digest windows, sent spread out, then the lateness of each after its due time."""
    from apps.delivery.models import Message
    from apps.workflows.models import DigestBucket, StepRun

    kinds = ["digest"] * config.digests + ["delay"] * config.delays
    random.Random(0).shuffle(kinds)
    delay_events, digest_events = [], []
    start = time.monotonic()
    for i, kind in enumerate(kinds):
        time.sleep(max(0.0, start + i * config.spread / len(kinds) - time.monotonic()))
        subscriber = f"rec-{i % config.subscribers:06d}"
        if kind == "digest":
            digest_events.append(_trigger(environment, "recovery-digest", [subscriber], {"n": i, "k": f"k{i}"}))
        else:
            delay_events.append(_trigger(environment, "recovery-delay", [subscriber], {"n": i}))
    deadline = time.monotonic() + config.timer_timeout
    while time.monotonic() < deadline:
        done = Message.objects.filter(
            run__event__in=delay_events + digest_events, channel="in_app", step_id="inbox"
        ).count()
        if done >= len(delay_events) + len(digest_events):
            break
        time.sleep(1)

    due = {
        run_id: datetime.fromisoformat(detail["until"])
        for run_id, detail in StepRun.objects.filter(
            run__event__in=delay_events, step_id="wait", decision=StepRun.Decision.WAITING
        ).values_list("run_id", "detail")
    }
    closes = dict(
        DigestBucket.objects.filter(
            environment=environment, workflow__key="recovery-digest", leader_run__isnull=False
        ).values_list("leader_run_id", "closes_at")
    )
    made = dict(
        Message.objects.filter(run_id__in=[*due, *closes], channel="in_app", step_id="inbox").values_list(
            "run_id", "created_at"
        )
    )
    delay_lateness = [(made[r] - when).total_seconds() for r, when in due.items() if r in made]
    digest_lateness = [(made[r] - when).total_seconds() for r, when in closes.items() if r in made]
    return {
        "delay": {**_stats(delay_lateness), "not_done": len(delay_events) - len(delay_lateness)},
        "digest": {**_stats(digest_lateness), "not_done": len(digest_events) - len(digest_lateness)},
    }


def _orphans(installation: Installation, environment: Any, worker: Managed, config: RecoveryConfig) -> dict[str, Any]:
    """Kill the worker while it holds runs under lease; time until those runs have completed."""
    from apps.workflows.models import Run

    measured: list[float] = []
    details: list[dict[str, Any]] = []
    for repeat in range(config.repeats):
        event = _trigger(environment, "recovery-fan", [{"topic": TOPIC_KEY}], {"n": repeat})
        runs = Run.objects.filter(event=event)
        caught = False
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if runs.filter(status=Run.Status.RUNNING).exists():
                caught = True
                break
            if runs.count() >= config.subscribers and not runs.exclude(status=Run.Status.COMPLETED).exists():
                break  # done before a kill could land: try again with the next repeat
            time.sleep(0.02)
        if not caught:
            details.append({"repeat": repeat, "caught": False})
            continue
        worker.kill_group()
        killed = time.monotonic()
        orphaned = list(runs.filter(status=Run.Status.RUNNING).values_list("pk", flat=True))
        _start_worker(installation, worker)
        restarted = time.monotonic() - killed
        resumed: float | None = None
        while time.monotonic() - killed < config.orphan_timeout:
            if not Run.objects.filter(pk__in=orphaned).exclude(status=Run.Status.COMPLETED).exists():
                resumed = time.monotonic() - killed
                break
            time.sleep(0.25)
        measured.append(resumed if resumed is not None else config.orphan_timeout)
        details.append(
            {
                "repeat": repeat,
                "caught": True,
                "orphaned_runs": len(orphaned),
                "worker_ready_s": round(restarted, 2),
                "resumed_s": round(resumed, 2) if resumed is not None else None,
            }
        )
        log(f"recovery: repeat {repeat}: {len(orphaned)} orphaned runs, all completed after {resumed} s")
        finish = time.monotonic() + config.orphan_timeout  # let the rest of the event finish before the next kill
        while time.monotonic() < finish and runs.exclude(status=Run.Status.COMPLETED).exists():
            time.sleep(0.5)
    return {
        "repeats": details,
        "max_s": round(max(measured), 2) if measured else None,
        "median_s": round(median(measured), 2) if measured else None,
        "timed_out": sum(1 for d in details if d.get("caught") and d.get("resumed_s") is None),
    }


def run(installation: Installation, config: RecoveryConfig) -> dict[str, Any]:
    installation.manage("migrate", "--noinput")
    if not installation.redis_url:
        installation.manage("migrate", "--database", "channels", "--noinput")
    installation.setup_django()
    environment = _setup(config)
    _argv, worker_command = worker_argv()
    log(f"recovery: worker command {worker_command}; timers first, then {config.repeats} kill(s)")
    worker = _start_worker(installation, None)
    try:
        timers = _timers(environment, config)
        orphans = _orphans(installation, environment, worker, config)
    except Exception:
        log(f"recovery failed; worker log:\n{worker.tail()}")
        raise
    finally:
        worker.stop()
    return {
        "worker_command": worker_command,
        "orphans": orphans,
        "timers": timers,
        "config": {**config.__dict__},
    }


def render(result: dict[str, Any]) -> str:
    orphans, timers, cfg = result["orphans"], result["timers"], result["config"]

    def ratio(measured: float | None, goal: float) -> str:
        return f"{measured / goal:.2f}" if measured is not None else "n/a"

    rows = [
        (
            f"orphaned run → completed after SIGKILL (max of {len(orphans['repeats'])})",
            f"≤ {GOAL_RESUME_SECONDS:.0f} s",
            f"{orphans['max_s']} s" + (f" ({orphans['timed_out']} timed out)" if orphans["timed_out"] else ""),
            ratio(orphans["max_s"], GOAL_RESUME_SECONDS),
        ),
    ]
    for name, label in (("delay", f"delay {cfg['delay']}"), ("digest", f"digest window {cfg['window']}")):
        row = timers[name]
        rows.append(
            (
                f"{label}: lateness p50 / p99 ({row['count']})",
                f"p99 ≤ {GOAL_LATENESS_P99_SECONDS:.0f} s",
                f"{row['p50_s']} / {row['p99_s']} s" + (f" ({row['not_done']} not done)" if row["not_done"] else ""),
                ratio(row["p99_s"], GOAL_LATENESS_P99_SECONDS),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = [
        f"recovery: worker `{result['worker_command']}`; {cfg['subscribers']:,}-subscriber topic for the kills, "
        f"{cfg['delays']} delays and {cfg['digests']} digests over {cfg['spread']:.0f} s",
        f"  {'measure'.ljust(widths[0])} | {'goal'.ljust(widths[1])} | {'measured'.ljust(widths[2])} | ratio",
    ]
    lines += [f"  {a.ljust(widths[0])} | {b.ljust(widths[1])} | {c.ljust(widths[2])} | {d}" for a, b, c, d in rows]
    lines.append(f"  kills: {orphans['repeats']}")
    return "\n".join(lines)
