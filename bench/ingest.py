"""Ingest: the trigger and bulk APIs against baselines that do the same validation and one insert.

For each web process count (``IngestConfig.web_processes``, uvicorn ``--workers N``), a real stack
(``bench.procs.Stack``: uvicorn, ``DEBUG=0``, access log off, no worker: accepted events only
queue their fan-out, which is part of the honest cost of an accepted event) serves:

* ``POST /api/v1/events/trigger`` against ``POST /bench/trigger-baseline`` (bench.views: the same
  authentication, rate-limit scope, parser and ``TriggerSerializer`` validation, then ONE INSERT of
  an Event-shaped row into the same table);
* ``POST /api/v1/events/bulk`` with 1,000 events against ``POST /bench/bulk-baseline`` (the same
  ``BulkTriggerSerializer`` validation, then one ``bulk_create`` of the rows).

Load comes from ``bench.loadgen`` in its own process (``wrk``, closed loop: the maximum rate),
alternating baseline and Clarion rounds so that drift (a warming cache, a growing table, the
machine's other tenants) hits both the same way; each figure is the median of its rounds. The CPU
of every process involved (uvicorn and its workers, the PostgreSQL backends of the run's database,
Redis, the load generator) is counted per request (``bench.procs.CpuMeter``). SQL statements per
request are counted in this process through Django's test client against the same database.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass
from typing import Any

from bench.common import Installation, log
from bench.procs import Stack
from bench.report import Row

TRIGGER_PATH = "/api/v1/events/trigger"
BULK_PATH = "/api/v1/events/bulk"
BASELINE_PATH = "/bench/trigger-baseline"
BULK_BASELINE_PATH = "/bench/bulk-baseline"
WORKFLOW_KEY = "bench"  # bench.views.BENCH_WORKFLOW
TEMPLATE_KEY = "bench-in-app"
TRIGGER_BODY = (
    '{"workflow":"bench","to":["bench-user-__M__"],'
    '"payload":{"title":"Order shipped","order_id":__I__,"products":["book","lamp"]}}'
)
# The rate limit is the same for the trigger and its baseline (one cache round trip each); raised
# so that a fast run is never refused.
RATE_LIMIT_ENV = {"CLARION_RATE_TRIGGER": "100000000/minute"}


def bulk_body(events: int, pool: int) -> str:
    """``events`` triggers to ``pool`` subscribers; ``__I__`` makes every request's payloads distinct."""
    items = ",".join(
        f'{{"workflow":"bench","to":["bench-user-{k % pool}"],"payload":{{"order_id":__I__,"k":{k}}}}}'
        for k in range(events)
    )
    return f'{{"events":[{items}]}}'


@dataclass(frozen=True)
class IngestConfig:
    concurrency: int = 16  # connections of the single-trigger load
    seconds: float = 8.0  # per round and endpoint
    rounds: int = 3  # alternating baseline / Clarion rounds
    warmup_seconds: float = 3.0  # per endpoint, untimed
    subscriber_pool: int = 100
    web_processes: tuple[int, ...] = (1, 2)
    bulk_events: int = 1000
    bulk_concurrency: int = 2
    bulk_seconds: float = 15.0  # per round and endpoint: a 1,000-event request takes seconds on a busy machine

    @classmethod
    def quick(cls) -> IngestConfig:
        return cls(
            concurrency=4,
            seconds=2.0,
            rounds=1,
            warmup_seconds=1.0,
            subscriber_pool=10,
            web_processes=(1,),
            bulk_events=100,
            bulk_concurrency=1,
            bulk_seconds=2.0,
        )


def _setup_workflow(stack: Stack, secret_key: str) -> None:
    with stack.client(secret_key) as client:
        for path, body in (
            (
                f"/api/v1/templates/{TEMPLATE_KEY}",
                {
                    "channel": "in_app",
                    "content": {"en": {"title": "{{ payload.title }}", "body": "Order {{ payload.order_id }}"}},
                    "publish": True,
                },
            ),
            (
                f"/api/v1/workflows/{WORKFLOW_KEY}",
                {
                    "name": "Bench",
                    "steps": [{"id": "inbox", "type": "in_app", "template": TEMPLATE_KEY}],
                    "publish": True,
                },
            ),
        ):
            response = client.put(path, json=body)
            if response.status_code not in (200, 201):
                raise RuntimeError(f"PUT {path} answered {response.status_code}: {response.text[:500]}")


def _phase(
    stack: Stack, secret_key: str, path: str, body: str, concurrency: int, seconds: float, pool: int
) -> dict[str, Any]:
    args = [
        "--engine",
        "wrk",
        "--path",
        path,
        "--body",
        body,
        "--mod",
        str(pool),
        "--concurrency",
        str(concurrency),
        "--duration",
        str(seconds),
    ]
    with stack.meter() as meter:
        load = stack.loadgen(args, secret_key, timeout=seconds + 120)
        cpu = meter.stop()
    if load["errors"]:  # counted and shown in the table (the shared database may refuse a connection)
        web_log = stack.web.tail(1500) if stack.web is not None else ""
        log(f"ingest: {path}: {load['errors']} failed requests; the server's log ends with:\n{web_log}")
    requests = max(1, load["ok"])
    return {
        "errors": load["errors"],
        "requests_per_s": load["requests_per_s"],
        "requests": load["ok"],
        "p50_ms": load["p50_ms"],
        "p99_ms": load["p99_ms"],
        # ms of CPU per request: every process of the system (web, PostgreSQL backends, Redis) and the load generator
        "cpu_ms_per_request": {
            group: round(cpu.get(group, 0.0) * 1000 / requests, 3)
            for group in ("web", "postgres", "redis", "system", "loadgen")
        },
        "system_cores": cpu.get("system_cores", 0.0),
    }


def _summary(rounds: list[dict[str, Any]], per_request: int = 1) -> dict[str, Any]:
    def med(key: str) -> float:
        return round(statistics.median(r[key] for r in rounds), 2)

    return {
        "requests_per_s": med("requests_per_s"),
        "events_per_s": round(med("requests_per_s") * per_request, 1),
        "round_requests_per_s": [r["requests_per_s"] for r in rounds],
        "p50_ms": med("p50_ms"),
        "p99_ms": med("p99_ms"),
        "cpu_ms_per_request": {
            group: round(statistics.median(r["cpu_ms_per_request"][group] for r in rounds), 3)
            for group in rounds[0]["cpu_ms_per_request"]
        },
        "requests": sum(r["requests"] for r in rounds),
        "errors": sum(r["errors"] for r in rounds),
    }


def _compare(
    stack: Stack,
    secret_key: str,
    config: IngestConfig,
    pair: tuple[tuple[str, str], tuple[str, str]],
    body: str,
    concurrency: int,
    per_request: int,
    seconds: float,
) -> dict[str, Any]:
    """Warm both endpoints, then alternate them for ``config.rounds`` rounds; medians."""
    label = f"web x{stack.web_processes}"
    for _, path in pair:
        _phase(stack, secret_key, path, body, concurrency, config.warmup_seconds, config.subscriber_pool)
    rounds: dict[str, list[dict[str, Any]]] = {name: [] for name, _ in pair}
    for index in range(config.rounds):
        for name, path in pair if index % 2 == 0 else tuple(reversed(pair)):
            phase = _phase(stack, secret_key, path, body, concurrency, seconds, config.subscriber_pool)
            rounds[name].append(phase)
            log(
                f"ingest {label}: round {index + 1}/{config.rounds} {name:17s} {phase['requests_per_s']:8.1f} req/s, "
                f"p50 {phase['p50_ms']} ms, p99 {phase['p99_ms']} ms, "
                f"CPU {phase['cpu_ms_per_request']['system']} ms/req"
            )
    return {name: _summary(phases, per_request) for name, phases in rounds.items()}


def _ratio(numerator: float, denominator: float) -> float:
    return round(numerator / denominator, 3) if denominator else 0.0


def _statements(installation: Installation, secret_key: str, bulk_events: int) -> dict[str, int]:
    """SQL statements per request, counted in this process through Django's test client (same database)."""
    installation.setup_django()
    from django.db import connection
    from django.test.utils import CaptureQueriesContext
    from rest_framework.test import APIClient

    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {secret_key}")
    single = json.loads(TRIGGER_BODY.replace("__I__", "1").replace("__M__", "1"))
    bulk = json.loads(bulk_body(bulk_events, 10).replace("__I__", "1"))
    counts: dict[str, int] = {}
    for name, path, body in (
        ("trigger_baseline", BASELINE_PATH, single),
        ("trigger", TRIGGER_PATH, single),
        ("bulk_baseline", BULK_BASELINE_PATH, bulk),
        ("bulk", BULK_PATH, bulk),
    ):
        client.post(path, body, format="json")  # caches warm, as on the server
        with CaptureQueriesContext(connection) as queries:
            response = client.post(path, body, format="json")
        if response.status_code != 202:
            raise RuntimeError(f"{path} answered {response.status_code}: {response.content[:300]!r}")
        counts[name] = len(queries)
    return counts


def _clean(installation: Installation, environment_ids: list[int]) -> None:
    """Delete the run's events (the Clarion ones are pending: no later worker may pick them up)."""
    installation.setup_django()
    from django.db import connection

    placeholders = ",".join("%s" for _ in environment_ids)
    with connection.cursor() as cursor:
        cursor.execute(f"DELETE FROM events_event WHERE environment_id IN ({placeholders})", environment_ids)


def profile_trigger(installation: Installation, secret_key: str, requests: int = 300) -> str:
    """cProfile of ``requests`` trigger calls through Django's test client (no uvicorn)."""
    import cProfile
    import io
    import pstats

    installation.setup_django()
    from rest_framework.test import APIClient

    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {secret_key}")
    bodies = [json.loads(TRIGGER_BODY.replace("__I__", str(i)).replace("__M__", str(i % 10))) for i in range(requests)]
    for body in bodies[:20]:
        client.post(TRIGGER_PATH, body, format="json")
    profiler = cProfile.Profile()
    profiler.enable()
    for body in bodies:
        client.post(TRIGGER_PATH, body, format="json")
    profiler.disable()
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out).sort_stats("cumulative")
    stats.print_stats(40)
    out.write("\n--- by own time ---\n")
    stats.sort_stats("tottime").print_stats(25)
    return out.getvalue()


def run(installation: Installation, config: IngestConfig, *, profile: bool = False) -> dict[str, Any]:
    installation.migrate()
    result: dict[str, Any] = {
        "config": {
            **{k: v for k, v in config.__dict__.items() if k != "web_processes"},
            "web_processes": list(config.web_processes),
            "server": "uvicorn config.asgi:application --workers N, DEBUG=0, --no-access-log; no task worker",
            "client": "bench.loadgen --engine wrk (closed loop) in its own process",
        },
        "by_web_processes": {},
    }
    environment_ids: list[int] = []
    secret_key = ""
    bulk = bulk_body(config.bulk_events, config.subscriber_pool)
    try:
        for processes in config.web_processes:
            stack = Stack(
                installation, web_processes=processes, worker_processes=0, esp=False, extra_env=RATE_LIMIT_ENV
            )
            with stack:
                stack.start(workers=False)
                keys = stack.environment(f"bench-ingest-{processes}")
                secret_key = keys["secret_key"]
                environment_ids.append(int(keys["environment"]["id"]))
                _setup_workflow(stack, secret_key)
                log(f"ingest: web x{processes} on {stack.base_url}, {config.concurrency} connections")
                single = _compare(
                    stack,
                    secret_key,
                    config,
                    (("trigger_baseline", BASELINE_PATH), ("trigger", TRIGGER_PATH)),
                    TRIGGER_BODY,
                    config.concurrency,
                    1,
                    config.seconds,
                )
                many = _compare(
                    stack,
                    secret_key,
                    config,
                    (("bulk_baseline", BULK_BASELINE_PATH), ("bulk", BULK_PATH)),
                    bulk,
                    config.bulk_concurrency,
                    config.bulk_events,
                    config.bulk_seconds,
                )
            entry = {**single, **many}
            entry["ratio_trigger_over_baseline"] = _ratio(
                single["trigger"]["requests_per_s"], single["trigger_baseline"]["requests_per_s"]
            )
            entry["cpu_ratio_trigger_over_baseline"] = _ratio(
                single["trigger_baseline"]["cpu_ms_per_request"]["system"],
                single["trigger"]["cpu_ms_per_request"]["system"],
            )
            entry["ratio_bulk_over_baseline"] = _ratio(
                many["bulk"]["events_per_s"], many["bulk_baseline"]["events_per_s"]
            )
            result["by_web_processes"][str(processes)] = entry
        result["statements_per_request"] = _statements(installation, secret_key, config.bulk_events)
        if profile:
            log("ingest: profiling trigger requests in-process (cProfile)")
            result["profile"] = profile_trigger(installation, secret_key)
    finally:
        if environment_ids:
            _clean(installation, environment_ids)
    return result


def rows(result: dict[str, Any]) -> list[Row]:
    statements = result.get("statements_per_request", {})
    out: list[Row] = []
    for processes, entry in result["by_web_processes"].items():
        trigger, base = entry["trigger"], entry["trigger_baseline"]
        out.append(
            Row(
                "ingest",
                f"trigger API, web x{processes}",
                trigger["requests_per_s"],
                "req/s",
                baseline=base["requests_per_s"],
                baseline_name="same validation + one insert",
                goal_min=400,
                ratio_min=0.8,
                unmet=bool(trigger.get("errors")),
                note=(
                    (f"{trigger['errors']} FAILED REQUESTS; " if trigger.get("errors") else "")
                    + f"p50 {trigger['p50_ms']} / p99 {trigger['p99_ms']} ms "
                    f"(baseline {base['p50_ms']} / {base['p99_ms']}); "
                    f"CPU {trigger['cpu_ms_per_request']['system']} ms/req all processes "
                    f"(baseline {base['cpu_ms_per_request']['system']}); "
                    f"SQL {statements.get('trigger', '?')} statements/req "
                    f"(baseline {statements.get('trigger_baseline', '?')})"
                ),
            )
        )
        bulk, bulk_base = entry["bulk"], entry["bulk_baseline"]
        events = result["config"]["bulk_events"]
        out.append(
            Row(
                "ingest",
                f"bulk, {events:,} events per request, web x{processes}",
                bulk["events_per_s"],
                "events/s",
                baseline=bulk_base["events_per_s"],
                baseline_name="same validation + one bulk_create",
                goal_min=5000,
                unmet=bool(bulk.get("errors")),
                note=(
                    (f"{bulk['errors']} FAILED REQUESTS; " if bulk.get("errors") else "")
                    + f"p50 {bulk['p50_ms']} ms per request; "
                    f"CPU {round(bulk['cpu_ms_per_request']['system'] / events, 3)} ms/event all processes; "
                    f"SQL {statements.get('bulk', '?')} statements/req "
                    f"(baseline {statements.get('bulk_baseline', '?')})"
                ),
            )
        )
    return out
