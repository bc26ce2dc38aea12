"""The console's home: the whole dashboard selector over a month of rollups worth 1 M messages.

``DATABASE_URL=postgres://…/clarion_bench_h5 python -m bench dashboard [--quick]`` (PostgreSQL only;
``python -m bench`` creates a throwaway database named after ``DATABASE_URL`` and drops it at the end).

Writes, with one ``COPY`` per table (nothing goes through the engine or the fold), what the fold
leaves behind for 1 M messages in one environment: the hour rollups and the day rollups
(``day|<metric>``) of 30 days of traffic shaped like ``bench/analytics.py``'s (10 workflows, 2-3
channels each, a daily load curve, the metrics such traffic counts), plus 3,000 unfolded deltas in
the last half hour. A second environment gets the same volume (the dashboard must not read it),
and the measured one has 8 integrations, two of them with an open circuit.

Then times ``apps.analytics.dashboard.dashboard`` as the home page calls it — every chart: the
analytics statement, the integrations, the run backlog, the broker's queue depth — for 30 d
(the goal: under 200 ms), 7 d and 24 h, the median of ``rounds`` calls after one warm-up, and counts
its queries.
"""

from __future__ import annotations

import io
import math
import random
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from bench.analytics import CHANNELS_OF, MEAN_LOAD, RATIOS, _median_ms
from bench.common import Installation, log
from bench.report import Row, Skipped

GOAL_MS = 200.0
DAY_PREFIX = "day|"  # apps.analytics.services.DAY_PREFIX (read from there when Django is set up)
COLUMNS = ("environment_id", "bucket", "workflow_key", "category_key", "channel", "template_key", "metric", "value")


@dataclass
class Config:
    messages: int = 1_000_000  # sent messages the rollups account for (approximately)
    days: int = 30
    rounds: int = 15

    @classmethod
    def quick(cls) -> Config:
        return cls(messages=50_000, days=7, rounds=3)


def _rollup_rows(environment_id: int, start: datetime, config: Config, seed: int) -> list[tuple[Any, ...]]:
    """The hour and day rollup rows of ``config.days`` of traffic from ``start`` (a UTC midnight)."""
    rng = random.Random(seed)
    combos: list[tuple[str, str, str, str]] = []
    for index, channels in enumerate(CHANNELS_OF):
        workflow, category = f"workflow-{index}", ("billing", "social", "marketing")[index % 3]
        combos.append((workflow, category, "", ""))
        combos += [(workflow, category, channel, f"{workflow}-{channel}") for channel in channels]
    channel_combos = sum(1 for c in combos if c[2])
    hours = config.days * 24
    per_hour = config.messages / (hours * channel_combos * MEAN_LOAD)
    ratios: dict[str, list[tuple[str, float]]] = {}
    for channel, metric, ratio in RATIOS:
        ratios.setdefault(channel, []).append((metric, ratio))
    rows: list[tuple[Any, ...]] = []
    days: dict[tuple[Any, ...], int] = {}
    for hour in range(hours):
        bucket = start + timedelta(hours=hour)
        load = 0.35 + 0.65 * max(0.0, math.sin(math.pi * (bucket.hour - 6) / 16))
        day = bucket.replace(hour=0)
        for workflow, category, channel, template in combos:
            n = per_hour * load * (0.7 + 0.6 * rng.random())
            for metric, ratio in ratios[channel]:
                value = round(n * ratio * (0.9 + 0.2 * rng.random()))
                if value <= 0:
                    continue
                rows.append((environment_id, bucket, workflow, category, channel, template, metric, value))
                key = (environment_id, day, workflow, category, channel, template, f"{DAY_PREFIX}{metric}")
                days[key] = days.get(key, 0) + value
    rows += [(*key, value) for key, value in days.items()]
    return rows


def _copy(table: str, rows: list[tuple[Any, ...]]) -> None:
    from django.db import connection

    buffer = io.StringIO()
    for row in rows:
        buffer.write("\t".join(v.isoformat() if isinstance(v, datetime) else str(v) for v in row))
        buffer.write("\n")
    with connection.cursor() as cursor, cursor.copy(f"COPY {table} ({', '.join(COLUMNS)}) FROM STDIN") as copy:
        copy.write(buffer.getvalue())


def run(installation: Installation, config: Config | None = None) -> dict[str, Any]:
    config = config or Config()
    if installation.database != "postgresql":
        raise Skipped("needs PostgreSQL (DATABASE_URL): the goal is stated for it")
    installation.setup_django()
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from apps.analytics import services
    from apps.analytics.dashboard import dashboard
    from apps.analytics.models import Counter, Rollup
    from apps.delivery.models import Integration
    from apps.tenancy.services import environment_create

    assert services.DAY_PREFIX == DAY_PREFIX, "the day rollups' prefix changed: update bench/dashboard.py"
    now = datetime.now(UTC)
    today = now.replace(hour=0, minute=0, second=0, microsecond=0)
    start = today - timedelta(days=config.days - 1)  # the last day is today, up to its last hour
    environments = [
        environment_create(name=f"dashboard-{name}", project_name=f"dashboard bench {name}").environment
        for name in ("measured", "noise")
    ]
    began = time.monotonic()
    rollups = 0
    for seed, environment in enumerate(environments):
        rows = _rollup_rows(environment.pk, start, config, seed)
        # the hours after now have not happened: leave them out (the day row keeps its whole day,
        # as a fold at the end of today would; the query reads today from the hours anyway)
        rows = [r for r in rows if r[6].startswith(DAY_PREFIX) or r[1] <= now]
        _copy(Rollup._meta.db_table, rows)
        rollups += len(rows)
        last_half_hour = (now - timedelta(minutes=30)).replace(minute=0, second=0, microsecond=0)
        deltas = [
            (environment.pk, last_half_hour, f"workflow-{i % 10}", "", CHANNELS_OF[i % 10][0], "", m, 1)
            for i, m in enumerate(("sent", "delivered", "opened") * 1000)
        ]
        _copy(Counter._meta.db_table, deltas)
    built_seconds = time.monotonic() - began
    measured = environments[0]
    for index in range(8):
        Integration.objects.create(
            environment=measured,
            channel=("email", "sms", "push", "chat")[index % 4],
            provider=("smtp", "twilio", "fcm", "slack")[index % 4],
            name=f"integration {index}",
            priority=index,
            circuit_open_until=now + timedelta(minutes=5) if index < 2 else None,
            circuit_failures=5 if index < 2 else 0,
        )
    with connection.cursor() as cursor:
        cursor.execute(f"ANALYZE {Rollup._meta.db_table}")
        cursor.execute(f"ANALYZE {Counter._meta.db_table}")
    log(f"dashboard: {rollups:,} rollup rows and 6,000 deltas written with COPY in {built_seconds:.1f} s")

    result: dict[str, Any] = {
        "config": config.__dict__,
        "rollup_rows": rollups,
        "build_seconds": round(built_seconds, 1),
        "broker": installation.broker,
    }
    for period in ("30d", "7d", "24h"):

        def call(period: str = period) -> Any:
            return dashboard(environment=measured, period=period, now=now)

        with CaptureQueriesContext(connection) as captured:
            board = call()
        median, rounds = _median_ms(call, config.rounds)
        result[period] = {
            "ms": round(median, 1),
            "rounds_ms": rounds,
            "queries": len(captured.captured_queries),
            "messages_sent": board.messages.total_sent,
            "triggered": board.triggered.total,
        }
        log(f"dashboard {period}: median {median:.1f} ms {rounds}; {len(captured.captured_queries)} queries")
    return result


def rows(result: dict[str, Any]) -> list[Row]:
    month = result["30d"]
    note = (
        f"{month['messages_sent']:,} messages sent in {result['config']['days']} days of rollups "
        f"({result['rollup_rows']:,} rows, two environments)"
        f" + 3,000 unfolded deltas; every chart, {month['queries']} queries "
        f"({result['broker']} broker); median of {result['config']['rounds']} rounds"
    )
    return [
        Row(
            section="dashboard",
            name="console home, 30 d, every chart",
            measured=month["ms"],
            unit="ms",
            goal_max=GOAL_MS,
            lower_is_better=True,
            note=note,
            key="dashboard.home",
        ),
        Row(
            section="dashboard",
            name="console home, 7 d",
            measured=result["7d"]["ms"],
            unit="ms",
            goal_max=GOAL_MS,
            lower_is_better=True,
        ),
        Row(
            section="dashboard",
            name="console home, 24 h",
            measured=result["24h"]["ms"],
            unit="ms",
            goal_max=GOAL_MS,
            lower_is_better=True,
        ),
    ]
