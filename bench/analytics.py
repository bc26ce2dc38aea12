"""Analytics: the engagement dashboard's query over a month of rollups worth 1 M messages.

``DATABASE_URL=postgres://…/clarion_bench_h1 python -m bench analytics [--quick]`` (PostgreSQL only;
``python -m bench`` creates a throwaway database named after ``DATABASE_URL`` and drops it at the end).

Builds, with one ``INSERT … SELECT`` over ``generate_series`` (no message goes through the engine),
the counts 1 M messages leave behind in one environment, as deltas the real fold
(``counters_fold``) then moves into hour and day rollups: 30 days × 24 UTC hours × 10 workflows,
each with 2-3 channels (email, SMS, push, in-app) and one template per channel, a daily load curve
and jitter per hour; per hour and channel the metrics such traffic counts (sent, delivered, opened,
clicked, bounced, failed, read, seen, archived, action_completed, skips by reason, open and read
latency buckets) and per workflow triggered and recipients. A second environment gets the same
volume (the query must not read it), and 3,000 unfolded deltas sit in the last half hour.

Then times ``apps.analytics.selectors.analytics_query`` as the dashboard calls it, the median of
``rounds`` calls after one warm-up: 30 days grouped by workflow and channel, daily (the goal of
issue #16: under 200 ms), and the last 24 hours by workflow and channel, hourly.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from bench.common import Installation, log
from bench.report import Row, Skipped

GOAL_MS = 200.0
FOLD_LIMIT = 20_000  # deltas per fold transaction here (the ticker's default is 5,000)
CHANNELS_OF = [
    ("email", "in_app"),
    ("email", "sms"),
    ("in_app", "push"),
    ("email", "push", "in_app"),
    ("email",),
    ("sms", "email"),
    ("in_app", "email", "sms"),
    ("push",),
    ("email", "in_app"),
    ("in_app",),
]
# (channel, metric, share of the hour's sent messages)
RATIOS: list[tuple[str, str, float]] = [
    *[
        ("email", metric, ratio)
        for metric, ratio in (
            ("sent", 1.0),
            ("delivered", 0.97),
            ("opened", 0.42),
            ("clicked", 0.07),
            ("bounced", 0.012),
            ("failed", 0.004),
            ("skipped:preference", 0.11),
            ("skipped:digest", 0.06),
            ("latency_open:60", 0.08),
            ("latency_open:300", 0.1),
            ("latency_open:3600", 0.14),
            ("latency_open:86400", 0.1),
        )
    ],
    *[
        ("sms", metric, ratio)
        for metric, ratio in (
            ("sent", 1.0),
            ("delivered", 0.98),
            ("failed", 0.01),
            ("skipped:no_address", 0.04),
            ("skipped:frequency_cap", 0.05),
        )
    ],
    *[
        ("push", metric, ratio)
        for metric, ratio in (
            ("sent", 1.0),
            ("delivered", 0.92),
            ("opened", 0.09),
            ("failed", 0.02),
            ("latency_open:60", 0.04),
            ("latency_open:600", 0.05),
        )
    ],
    *[
        ("in_app", metric, ratio)
        for metric, ratio in (
            ("sent", 1.0),
            ("delivered", 1.0),
            ("seen", 0.7),
            ("read", 0.38),
            ("archived", 0.09),
            ("action_completed", 0.05),
            ("latency_read:300", 0.1),
            ("latency_read:3600", 0.14),
            ("latency_read:86400", 0.14),
        )
    ],
    ("", "triggered", 0.45),
    ("", "recipients", 0.9),
]
MEAN_LOAD = 0.626  # the mean of the daily curve below (0.35 + 0.65 · max(0, sin)), for the scale


@dataclass
class Config:
    messages: int = 1_000_000  # sent messages the rollups account for (approximately)
    days: int = 30
    rounds: int = 15

    @classmethod
    def quick(cls) -> Config:
        return cls(messages=50_000, days=7, rounds=3)


def _build(environment_id: int, start: datetime, config: Config) -> None:
    from django.db import connection

    combos = []
    for index, channels in enumerate(CHANNELS_OF):
        workflow, category = f"workflow-{index}", ("billing", "social", "marketing")[index % 3]
        combos.append((workflow, category, "", ""))
        combos += [(workflow, category, channel, f"{workflow}-{channel}") for channel in channels]
    channel_combos = sum(1 for c in combos if c[2])
    hours = config.days * 24
    per_hour = config.messages / (hours * channel_combos * MEAN_LOAD)
    combo_values = ", ".join(["(%s, %s, %s, %s)"] * len(combos))
    ratio_values = ", ".join(["(%s, %s, %s::float)"] * len(RATIOS))
    sql = f"""
        WITH combos(workflow, category, channel, template) AS (VALUES {combo_values}),
        ratios(channel, metric, ratio) AS (VALUES {ratio_values}),
        hours AS (
            SELECT b, 0.35 + 0.65 * greatest(0, sin(pi() * (extract(hour FROM b) - 6) / 16)) AS load
            FROM generate_series(%s::timestamptz, %s::timestamptz, interval '1 hour') AS b
        ),
        base AS (
            SELECT h.b, c.workflow, c.category, c.channel, c.template,
                   %s * h.load * (0.7 + 0.6 * random()) AS n
            FROM hours h CROSS JOIN combos c
        ),
        counted AS (
            SELECT b.b, b.workflow, b.category, b.channel, b.template, r.metric,
                   round(b.n * r.ratio * (0.9 + 0.2 * random()))::bigint AS value
            FROM base b JOIN ratios r ON r.channel = b.channel
        )
        INSERT INTO analytics_counter
            (environment_id, bucket, workflow_key, category_key, channel, template_key, metric, value)
        SELECT %s, b, workflow, category, channel, template, metric, value FROM counted WHERE value > 0
    """
    params: list[Any] = [v for combo in combos for v in combo]
    params += [v for ratio in RATIOS for v in ratio]
    params += [start, start + timedelta(hours=hours - 1), per_hour, environment_id]
    with connection.cursor() as cursor:
        cursor.execute(sql, params)


def _deltas(environment_id: int, last_hour: datetime, count: int) -> None:
    """Unfolded deltas of the last hour, as a busy minute leaves them before a fold: one row each."""
    from apps.analytics.models import Counter

    rows = []
    for i in range(count):
        workflow = f"workflow-{i % len(CHANNELS_OF)}"
        channel = CHANNELS_OF[i % len(CHANNELS_OF)][0]
        rows.append(
            Counter(
                environment_id=environment_id,
                bucket=last_hour.replace(minute=0, second=0, microsecond=0),
                metric=("sent", "delivered", "opened")[i % 3],
                workflow_key=workflow,
                channel=channel,
                template_key=f"{workflow}-{channel}",
                value=1,
            )
        )
    Counter.objects.bulk_create(rows, batch_size=1000)


def _median_ms(call: Any, rounds: int) -> tuple[float, list[float]]:
    call()  # warm-up: plans, caches
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        call()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times), [round(t, 1) for t in times]


def run(installation: Installation, config: Config | None = None) -> dict[str, Any]:
    config = config or Config()
    if installation.database != "postgresql":
        raise Skipped("needs PostgreSQL (DATABASE_URL): the goal is stated for it")
    installation.setup_django()
    from django.db import connection

    from apps.analytics.models import Counter, Rollup
    from apps.analytics.selectors import analytics_query
    from apps.analytics.services import counters_fold
    from apps.tenancy.services import environment_create

    end = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)
    start = end - timedelta(days=config.days)
    environments = [
        environment_create(name=f"analytics-{name}", project_name=f"analytics bench {name}").environment
        for name in ("measured", "noise")
    ]
    began = time.monotonic()
    for environment in environments:
        _build(environment.pk, start, config)
    built_seconds = time.monotonic() - began
    # The month's deltas go through the real fold (hour and day rollups), then a last half hour's
    # deltas stay unfolded, as the query finds them between two folds.
    deltas_built = Counter.objects.count()
    began = time.monotonic()
    counters_fold(limit=FOLD_LIMIT, batches=10**6)
    fold_seconds = time.monotonic() - began
    for environment in environments:
        _deltas(environment.pk, end - timedelta(minutes=30), 3000)
    with connection.cursor() as cursor:
        cursor.execute(f"ANALYZE {Rollup._meta.db_table}")
        cursor.execute(f"ANALYZE {Counter._meta.db_table}")
    env = environments[0]
    rollups = Rollup.objects.filter(environment=env).count()
    deltas = Counter.objects.filter(environment=env).count()
    log(
        f"analytics: {deltas_built} deltas built in {built_seconds:.1f} s, folded in {fold_seconds:.1f} s; "
        f"{rollups} rollup rows and {deltas} unfolded deltas per environment"
    )

    def month() -> list[dict[str, Any]]:
        return analytics_query(environment=env, start=start, end=end, group_by=["workflow", "channel"], interval="day")

    def day() -> list[dict[str, Any]]:
        return analytics_query(
            environment=env, start=end - timedelta(hours=24), end=end, group_by=["workflow", "channel"], interval="hour"
        )

    answer = month()
    sent = sum(row["sent"] for row in answer)
    month_ms, month_rounds = _median_ms(month, config.rounds)
    day_ms, day_rounds = _median_ms(day, config.rounds)
    log(
        f"analytics: {config.days} d daily median {month_ms:.1f} ms {month_rounds}; "
        f"24 h hourly {day_ms:.1f} ms {day_rounds}"
    )
    return {
        "config": config.__dict__,
        "rollup_rows": rollups,
        "deltas": deltas,
        "messages_sent": sent,
        "month_rows": len(answer),
        "day_rows": len(day()),
        "build_seconds": round(built_seconds, 1),
        "deltas_folded": deltas_built,
        "fold_seconds": round(fold_seconds, 1),
        "fold_rows_per_s": round(deltas_built / fold_seconds) if fold_seconds else None,
        "month_ms": round(month_ms, 1),
        "month_rounds_ms": month_rounds,
        "day_ms": round(day_ms, 1),
        "day_rounds_ms": day_rounds,
    }


def rows(result: dict[str, Any]) -> list[Row]:
    days = result["config"]["days"]
    note = (
        f"{result['messages_sent']:,} messages sent in {result['rollup_rows']:,} rollup rows "
        f"+ {result['deltas']:,} unfolded deltas (and as much in another environment); "
        f"median of {result['config']['rounds']} rounds; the fold took {result['deltas_folded']:,} deltas "
        f"in {result['fold_seconds']} s"
    )
    return [
        Row(
            section="analytics",
            name=f"dashboard: {days} d by workflow, channel, daily",
            measured=result["month_ms"],
            unit="ms",
            goal_max=GOAL_MS,
            lower_is_better=True,
            note=f"{result['month_rows']} rows; {note}",
            key="analytics.dashboard",
        ),
        Row(
            section="analytics",
            name="dashboard: 24 h by workflow, channel, hourly",
            measured=result["day_ms"],
            unit="ms",
            goal_max=GOAL_MS,
            lower_is_better=True,
            note=f"{result['day_rows']} rows",
        ),
    ]
