"""Pipeline: the common case end to end, on real processes, at a fixed rate (open loop).

``python -m bench pipeline`` (``--rate R --seconds S``). For each installation — PostgreSQL +
Redis when ``DATABASE_URL`` / ``REDIS_URL`` are set (goal 250 events/s), and always the embedded
default, SQLite + the django-q2 ORM broker (goal 100 events/s):

1. ``bench.procs.Stack``: the fake ESP (Postmark's API), ``uvicorn config.asgi:application``
   (``web_processes``) and ``manage.py clarion_worker`` (``worker_processes``), all real;
2. over the API: an in-app and an email template, a workflow ``in_app`` → ``email``, a Postmark
   integration pointing at the fake ESP, and ``subscribers`` subscribers with an email address;
3. ``bench.loadgen`` in its own process sends ``POST /api/v1/events/trigger`` for ONE subscriber
   each (``to: ["bp-<i mod subscribers>"]``) at ``rate`` per second for ``seconds`` (after an
   untimed warm-up that is drained first), whatever the server's answers take;
4. every ``sample_every`` seconds the orchestrator counts, read-only: events still pending, runs
   active, emails queued / sending / in doubt, in-app messages, emails the fake ESP accepted;
5. after the load it waits (``drain_timeout``) until every accepted event has its in-app message
   and its email at the fake, then stops everything.

Reported per installation: the **sustained rate** (events completed — email accepted by the
fake, the last step — per second over the steady part of the window, from 25 % of it to its
end), the trigger answers (achieved rate, p50/p99 from the due time), the **backlog** (accepted
but not completed) over time and its growth per second over the second half of the window, the
drain time, whether every in-app message was committed and every email accepted, and the **CPU
per event** of every process (web, workers and their children, fake ESP, load generator,
PostgreSQL backends of the run's database + the cluster's background processes, redis-server).
The row's baseline is the offered rate: a ratio of 1.00 means the pipeline kept up.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from bench.common import Installation, log
from bench.procs import Stack, per_unit
from bench.report import Row

WORKFLOW = "bench-pipeline"
BODY = (
    '{"workflow": "bench-pipeline", "to": ["bp-__M__"], '
    '"payload": {"n": __I__, "title": "Order __I__ shipped", "products": ["socks", "shoes"]}}'
)
GOALS = {"services": 250.0, "embedded": 100.0}
KEYS = {"services": "pipeline.pg", "embedded": "pipeline.embedded"}


@dataclass(frozen=True)
class Config:
    rate: float = 250.0  # triggers/s on PostgreSQL + Redis
    embedded_rate: float = 100.0  # triggers/s on the embedded default
    seconds: float = 60.0
    warmup_seconds: float = 5.0
    subscribers: int = 1000
    web_processes: int = 1
    worker_processes: int = 1
    cluster_workers: int | None = None  # CLARION_WORKERS per worker process (None: the settings' 2)
    sample_every: float = 2.0
    drain_timeout: float = 120.0
    embedded: bool = True  # also run the embedded default when the installation is PG + Redis

    @classmethod
    def quick(cls) -> Config:
        return cls(
            rate=10.0,
            embedded_rate=10.0,
            seconds=3.0,
            warmup_seconds=0.0,
            subscribers=10,
            sample_every=0.5,
            drain_timeout=60.0,
        )


class Counter:
    """Read-only counts from the run's database (raw SQL: no Django in the orchestrator)."""

    SQL = """
        SELECT
          (SELECT COUNT(*) FROM events_event) AS events,
          (SELECT COUNT(*) FROM events_event WHERE status = 'pending') AS events_pending,
          (SELECT COUNT(*) FROM workflows_run WHERE status IN ('pending', 'running', 'waiting')) AS runs_active,
          (SELECT COUNT(*) FROM delivery_message
             WHERE channel = 'email' AND status IN ('queued', 'sending', 'in_doubt')) AS emails_pending,
          (SELECT COUNT(*) FROM inbox_inboxmessage) AS inbox
    """
    KEYS = ("events", "events_pending", "runs_active", "emails_pending", "inbox")

    def __init__(self, installation: Installation) -> None:
        self.installation = installation
        self._conn: Any = None
        self._lock = threading.Lock()  # the sampler thread and the main thread share the connection

    def _connect(self) -> Any:
        if self._conn is None:
            if self.installation.database == "postgresql":
                import psycopg

                self._conn = psycopg.connect(self.installation.database_url, autocommit=True, connect_timeout=10)
            else:
                path = self.installation.var_dir / "clarion.sqlite3"
                self._conn = sqlite3.connect(
                    f"file:{path}?mode=ro", uri=True, timeout=30, isolation_level=None, check_same_thread=False
                )
        return self._conn

    def backend_pid(self) -> int | None:
        """The PostgreSQL backend serving these counts (the CPU meter leaves it out)."""
        if self.installation.database != "postgresql":
            return None
        with self._lock:
            return int(self._connect().info.backend_pid)

    def counts(self) -> dict[str, int]:
        with self._lock:
            row = self._connect().execute(self.SQL).fetchone()
        return dict(zip(self.KEYS, (int(v or 0) for v in row), strict=True))

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                with contextlib.suppress(Exception):
                    self._conn.close()
                self._conn = None


@dataclass
class Sampler:
    counter: Counter
    stack: Stack
    every: float
    samples: list[dict[str, float]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    t0: float = 0.0

    def sample(self) -> dict[str, float]:
        row: dict[str, float] = {"t": round(time.monotonic() - self.t0, 2)}
        try:
            row.update(self.counter.counts())
        except Exception as exc:  # a locked SQLite file for a moment: skip this sample
            log(f"pipeline: sample failed ({type(exc).__name__}: {exc})")
            return row
        row["emails_accepted"] = self.stack.esp_accepted()
        self.samples.append(row)
        return row

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            self.sample()

    def start(self) -> None:
        self.t0 = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="pipeline-sampler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)


def _slope(points: list[tuple[float, float]]) -> float:
    """Least-squares slope (per second) of (t, value) points; 0 for fewer than two."""
    if len(points) < 2:
        return 0.0
    mean_t = sum(t for t, _ in points) / len(points)
    mean_v = sum(v for _, v in points) / len(points)
    den = sum((t - mean_t) ** 2 for t, _ in points)
    return sum((t - mean_t) * (v - mean_v) for t, v in points) / den if den else 0.0


def _setup(stack: Stack, secret_key: str, subscribers: int) -> None:
    with stack.client(secret_key) as client:

        def call(method: str, path: str, body: dict[str, Any]) -> None:
            response = client.request(method, path, json=body)
            if response.status_code not in (200, 201, 202):
                raise RuntimeError(f"{method} {path}: {response.status_code} {response.text[:500]}")

        call(
            "PUT",
            "/api/v1/templates/bench-pipeline-inbox",
            {
                "name": "Pipeline in-app",
                "channel": "in_app",
                "publish": True,
                "content": {"en": {"title": "{{ payload.title }}", "body": "Your {{ payload.products | join(', ') }}"}},
            },
        )
        call(
            "PUT",
            "/api/v1/templates/bench-pipeline-mail",
            {
                "name": "Pipeline email",
                "channel": "email",
                "publish": True,
                "content": {
                    "en": {"subject": "{{ payload.title }}", "body": "<p>Order {{ payload.n }} is on its way.</p>"}
                },
            },
        )
        call(
            "PUT",
            f"/api/v1/workflows/{WORKFLOW}",
            {
                "name": "Pipeline",
                "publish": True,
                "steps": [
                    {"id": "inbox", "type": "in_app", "template": "bench-pipeline-inbox"},
                    {"id": "mail", "type": "email", "template": "bench-pipeline-mail"},
                ],
            },
        )
        stack.email_integration(client)
        ids = [f"bp-{n}" for n in range(subscribers)]
        for start in range(0, len(ids), 500):
            call(
                "POST",
                "/api/v1/subscribers/bulk",
                {"subscribers": [{"subscriber_id": s, "email": f"{s}@example.test"} for s in ids[start : start + 500]]},
            )


def _wait_drained(sampler: Sampler, timeout: float) -> tuple[bool, float, dict[str, float]]:
    """Until every event in the database has its in-app message and its email at the fake.

    Counted from the database, not from the load generator's answers: a request the generator
    gave up on (timeout) may still have been accepted by the server."""
    started = time.monotonic()
    last: dict[str, float] = {}
    while time.monotonic() - started < timeout:
        last = sampler.sample()
        events = last.get("events", -1)
        if (
            events >= 0
            and last.get("inbox", 0) >= events
            and last.get("emails_accepted", 0) >= events
            and not last.get("runs_active", 1)
            and not last.get("events_pending", 1)
        ):
            return True, time.monotonic() - started, last
        time.sleep(0.5)
    return False, time.monotonic() - started, last


def run_mode(installation: Installation, config: Config, mode: str) -> dict[str, Any]:
    rate = config.rate if mode == "services" else config.embedded_rate
    log(f"pipeline[{mode}]: starting {config.web_processes} web / {config.worker_processes} worker process(es)")
    with Stack(
        installation,
        web_processes=config.web_processes,
        worker_processes=config.worker_processes,
        cluster_workers=config.cluster_workers,
    ) as stack:
        stack.start(environment="bench")
        secret_key = stack.environment("bench")["secret_key"]
        _setup(stack, secret_key, config.subscribers)
        counter = Counter(installation)
        sampler = Sampler(counter, stack, config.sample_every)
        sampler.t0 = time.monotonic()
        loadgen_args = ["--body", BODY, "--mod", str(config.subscribers)]
        if config.warmup_seconds:
            log(f"pipeline[{mode}]: warm-up {config.warmup_seconds:.0f} s at {rate:g}/s")
            warm = stack.loadgen(
                [*loadgen_args, "--rate", str(rate), "--duration", str(config.warmup_seconds)], secret_key
            )
            ok, seconds, _last = _wait_drained(sampler, config.drain_timeout)
            log(f"pipeline[{mode}]: warm-up {warm['ok']} accepted, drained={ok} in {seconds:.1f} s")
        before = counter.counts()
        esp_before = stack.esp_accepted()
        sampler.samples.clear()
        log(f"pipeline[{mode}]: {config.seconds:.0f} s at {rate:g} triggers/s (open loop)")
        meter = stack.meter()
        backend = counter.backend_pid()
        if backend is not None:
            meter.exclude.add(backend)  # the orchestrator's counting is not the system's work
        with meter:
            sampler.start()
            load = stack.loadgen(
                [*loadgen_args, "--rate", str(rate), "--duration", str(config.seconds)],
                secret_key,
                timeout=config.seconds + 120,
            )
            load_end = time.monotonic() - sampler.t0
            cpu_load = meter.snapshot()  # the load window alone (scale-out compares these)
            sampler.stop()
            drained, drain_seconds, last = _wait_drained(sampler, config.drain_timeout)
            if not drained:
                for proc in (*stack.workers, stack.web):
                    if proc is not None:
                        log(f"pipeline[{mode}]: not drained; {proc.name}'s log ends with:\n{proc.tail(2500)}")
                log(f"pipeline[{mode}]: last counts {last}")
        cpu = meter.result()
        counter.close()
        esp_total = stack.esp_accepted()

    # events the server accepted (from the database: the generator may have given up on some)
    accepted = int((last or counter.counts()).get("events", 0) - before["events"])
    window = float(load.get("schedule_seconds") or config.seconds)
    samples = [
        {
            **s,
            "completed": min(s.get("inbox", 0) - before["inbox"], s["emails_accepted"] - esp_before),
            "backlog": (s["events"] - before["events"])
            - min(s.get("inbox", 0) - before["inbox"], s["emails_accepted"] - esp_before),
        }
        for s in sampler.samples
        if "events" in s
    ]
    in_window = [s for s in samples if s["t"] <= load_end]
    steady = [s for s in in_window if s["t"] >= 0.25 * load_end]
    if len(steady) >= 2:
        sustained = (steady[-1]["completed"] - steady[0]["completed"]) / max(1e-9, steady[-1]["t"] - steady[0]["t"])
    else:
        sustained = (in_window[-1]["completed"] / load_end) if in_window and load_end else 0.0
    steady_backlog = [(s["t"], s["backlog"]) for s in steady]
    inbox_new = int(last.get("inbox", 0) - before["inbox"]) if last else 0
    emails_new = esp_total - esp_before
    result: dict[str, Any] = {
        "mode": mode,
        "database": installation.database,
        "broker": installation.broker,
        "rate": rate,
        "seconds": config.seconds,
        "web_processes": config.web_processes,
        "worker_processes": config.worker_processes,
        "cluster_workers": config.cluster_workers,
        "loadgen": load,
        "accepted": accepted,
        "answered_ok": int(load["ok"]),
        "trigger_errors": int(load["errors"]),
        "sustained_events_per_s": round(sustained, 1),
        "backlog_growth_per_s": round(_slope(steady_backlog), 2),
        "backlog_at_load_end": int(in_window[-1]["backlog"]) if in_window else None,
        "max_backlog": int(max((s["backlog"] for s in samples), default=0)),
        "drained": drained,
        "drain_seconds": round(drain_seconds, 1),
        "inbox_committed": inbox_new,
        "emails_accepted": emails_new,
        "all_inbox": inbox_new >= accepted,
        "all_emails": emails_new >= accepted,
        "window_seconds": round(window, 1),
        "cpu_seconds": cpu,
        "cpu_ms_per_event": per_unit(cpu, accepted),
        "cpu_seconds_load_window": cpu_load,
        "samples": samples,
    }
    log(
        f"pipeline[{mode}]: offered {rate:g}/s, accepted {accepted} "
        f"({load['achieved_rate']}/s, p99 {load['p99_ms']} ms), "
        f"sustained {result['sustained_events_per_s']}/s, backlog growth {result['backlog_growth_per_s']}/s, "
        f"drained={drained} in {result['drain_seconds']} s, CPU/event {result['cpu_ms_per_event']['system']} ms"
    )
    return result


def run(installation: Installation, config: Config | None = None) -> dict[str, Any]:
    """Each mode on a fresh installation: what other sections left queued must not reach its workers."""
    config = config or Config()
    result: dict[str, Any] = {"config": config.__dict__, "modes": {}}
    plans = []
    if installation.database == "postgresql" and installation.redis_url:
        plans.append(("services", installation.fresh))
    if installation.database == "sqlite" or config.embedded:
        plans.append(("embedded", lambda: Installation.create(embedded=True)))
    for mode, make in plans:
        fresh = make()
        try:
            result["modes"][mode] = run_mode(fresh, config, mode)
        finally:
            fresh.cleanup()
    return result


def _note(mode: dict[str, Any]) -> str:
    cpu = mode["cpu_ms_per_event"]
    load = mode["loadgen"]
    return (
        f"trigger p50 {load['p50_ms']} / p99 {load['p99_ms']} ms, errors {mode['trigger_errors']}; "
        f"backlog growth {mode['backlog_growth_per_s']}/s, drained in {mode['drain_seconds']} s; "
        f"in-app {mode['inbox_committed']}/{mode['accepted']}, emails {mode['emails_accepted']}/{mode['accepted']}; "
        f"CPU ms/event: web {cpu['web']}, worker {cpu['worker']}, postgres {cpu['postgres']} "
        f"(whole cluster {cpu['postgres_cluster']}), redis {cpu['redis']}, "
        f"esp {cpu['esp']}, loadgen {cpu['loadgen']}; system {cpu['system']}; "
        f"other work on the machine {mode['cpu_seconds'].get('other_cores', 0)} cores"
    )


def rows(result: dict[str, Any]) -> list[Row]:
    out = []
    for mode, label in (("services", "PG + Redis"), ("embedded", "embedded (SQLite + ORM broker)")):
        data = result["modes"].get(mode)
        if data is None:
            out.append(
                Row(
                    "pipeline",
                    f"in-app + email, {label}",
                    None,
                    "events/s",
                    goal_min=GOALS[mode],
                    key=KEYS[mode],
                    note="needs DATABASE_URL and REDIS_URL" if mode == "services" else "",
                )
            )
            continue
        complete_ok = data["drained"] and data["all_inbox"] and data["all_emails"] and not data["trigger_errors"]
        # growing: it rose by more than 2 % of the rate per second over the steady window AND more
        # than two seconds of arrivals were still waiting when the load ended (latency jitter alone
        # moves a short window's slope; a pipeline that falls behind piles up both)
        backlog_end = data["backlog_at_load_end"] or 0
        growing = data["backlog_growth_per_s"] > 0.02 * data["rate"] and backlog_end > 2 * data["rate"]
        out.append(
            Row(
                "pipeline",
                f"in-app + email, {label}, {data['seconds']:g} s open loop, "
                f"web x{data['web_processes']} worker x{data['worker_processes']}",
                data["sustained_events_per_s"],
                "events/s",
                baseline=data["rate"],
                baseline_name="offered",
                goal_min=GOALS[mode],
                key=KEYS[mode],
                unmet=not complete_ok or growing,
                note=("INCOMPLETE: not everything delivered; " if not complete_ok else "")
                + ("BACKLOG GROWING; " if growing else "")
                + _note(data),
            )
        )
    return out
