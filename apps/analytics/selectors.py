"""Analytics reads: engagement per period and dimension, from rollups plus unfolded deltas.

One SQL statement per query, whatever the range or grouping: it sums ``Rollup`` (the day rows for
whole UTC days in the range, the hourly rows at its edges) and ``Counter`` rows together (one
snapshot, so a concurrent fold changes nothing in the answer), grouped by the requested
dimensions, the metric and the UTC hour or day. The rest (rates, the skipped reasons, medians from
the latency histograms) is arithmetic on those sums.
"""

from __future__ import annotations

import math
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from django.db import connection

from apps.analytics import counters
from apps.analytics.counters import hour_of
from apps.analytics.models import Counter, Rollup
from apps.analytics.services import DAY_PREFIX

Interval = Literal["hour", "day"]
GROUP_COLUMNS: dict[str, str] = {
    "workflow": "workflow_key",
    "category": "category_key",
    "channel": "channel",
    "template": "template_key",
}
INTERVALS = ("hour", "day")
MAX_RANGE = timedelta(days=366)  # the API refuses longer ranges
MAX_HOURLY_RANGE = timedelta(days=31)  # … and longer hourly ones
# The counts of each row, in this order (then skipped, rates and medians).
COUNT_FIELDS = (
    counters.TRIGGERED,
    "recipients",
    counters.SENT,
    counters.DELIVERED,
    counters.OPENED,
    counters.CLICKED,
    counters.READ,
    counters.SEEN,
    counters.ARCHIVED,
    counters.ACTION_COMPLETED,
    counters.BOUNCED,
    counters.FAILED,
)
SKIPPED_PREFIX = "skipped:"


# (bucket name, lower bound, upper bound) of the latency histograms, in order
_HISTOGRAM: list[tuple[str, float, float]] = [
    (str(high), float(low), float(high))
    for low, high in zip((0, *counters.LATENCY_BOUNDS[:-1]), counters.LATENCY_BOUNDS, strict=True)
] + [("inf", float(counters.LATENCY_BOUNDS[-1]), math.inf)]
_OPEN_PREFIX, _READ_PREFIX = f"{counters.LATENCY_OPEN}:", f"{counters.LATENCY_READ}:"


def histogram_median(buckets: dict[str, int]) -> float | None:
    """The median of a latency histogram (``{"<le>" | "inf": count}``, see ``counters.LATENCY_BOUNDS``).

    The bucket holding the middle observation is found exactly; within it the value is
    interpolated geometrically between its bounds (the buckets are roughly logarithmic), so the
    estimate is within the bucket's bounds: a factor of 2 to 3. Past the last bound, the last bound
    is returned. ``None`` when the histogram is empty."""
    if not buckets:
        return None
    counts = [(low, high, max(0, buckets.get(name, 0))) for name, low, high in _HISTOGRAM]
    total = sum(c for _, _, c in counts)
    if total <= 0:
        return None
    middle = total / 2
    seen = 0
    for low, high, count in counts:
        if count and seen + count >= middle:
            if math.isinf(high):
                return low
            fraction = (middle - seen) / count
            if low <= 0:
                return round(high * fraction, 1)  # the first bucket: linear from 0
            return round(low * (high / low) ** fraction, 1)
        seen += count
    return None  # pragma: no cover - unreachable: the counts add up to total


def _rate(numerator: int, denominator: int) -> float | None:
    return round(numerator / denominator, 4) if denominator > 0 else None


def _bucket_sql(interval: Interval | None) -> str:
    """The bucket as the ISO 8601 text the API answers (UTC), formatted by the database: no
    timestamp is parsed per row."""
    if interval is None:
        return "NULL"
    if connection.vendor == "postgresql":
        hour = '"T"HH24":00:00Z"' if interval == "hour" else '"T00:00:00Z"'
        return f"to_char(bucket AT TIME ZONE 'UTC', 'YYYY-MM-DD{hour}')"
    # SQLite keeps UTC datetimes as text, "YYYY-MM-DD HH:MM:SS…"
    if interval == "hour":
        return "substr(bucket, 1, 10) || 'T' || substr(bucket, 12, 2) || ':00:00Z'"
    return "substr(bucket, 1, 10) || 'T00:00:00Z'"


def analytics_query(
    *,
    environment: Any,
    start: datetime,
    end: datetime,
    group_by: list[str],
    interval: Interval | None,
) -> list[dict[str, Any]]:
    """Engagement in ``[start, end)`` (UTC hours: ``start`` counts from the start of its hour) for one
    environment, one row per bucket (hour, UTC day, or the whole range when ``interval`` is None)
    and combination of ``group_by`` dimensions (workflow, category, channel, template). One query.

    ``triggered`` and ``recipients`` are counted per workflow and category only: grouped by channel
    or template they appear in rows whose channel / template is ``""``."""
    unknown = [name for name in group_by if name not in GROUP_COLUMNS]
    if unknown:
        raise ValueError(f"unknown group_by: {unknown}")
    if interval is not None and interval not in INTERVALS:
        raise ValueError(f"unknown interval: {interval}")
    environment_id = getattr(environment, "pk", environment)
    columns = [GROUP_COLUMNS[name] for name in dict.fromkeys(group_by)]
    bucket = _bucket_sql(interval)
    quote = connection.ops.quote_name
    adapt = connection.ops.adapt_datetimefield_value
    select = ", ".join([f"{bucket} AS b", *columns, "metric"])
    group = ", ".join(["b", *columns, "metric"]) if interval else ", ".join([*columns, "metric"])
    parts: list[str] = []
    params: list[Any] = []

    def part(model: type[Rollup | Counter], since: datetime, until: datetime, *, days: bool = False) -> None:
        if since >= until:
            return
        metric = f"substr(metric, {len(DAY_PREFIX) + 1}) AS metric" if days else "metric"
        if days:
            # The day rows by their buckets (the index finds each day's start; a range would
            # walk every hour between them).
            starts = [since + timedelta(days=n) for n in range((until - since).days)]
            where = f"environment_id = %s AND bucket IN ({', '.join(['%s'] * len(starts))})"
            params.extend([environment_id, *(adapt(day) for day in starts)])
        else:
            where = "environment_id = %s AND bucket >= %s AND bucket < %s"
            params.extend([environment_id, adapt(since), adapt(until)])
        if model is Rollup:
            where += f" AND metric {'' if days else 'NOT '}LIKE %s"
            params.append(f"{DAY_PREFIX}%")
        parts.append(
            f"SELECT bucket, {', '.join([*columns, metric, 'value'])} FROM {quote(model._meta.db_table)} WHERE {where}"
        )

    first = hour_of(start)
    # Whole UTC days inside the range are read from the day rollups (24 times fewer rows), the
    # hours at its edges from the hourly ones; deltas not folded yet are hourly.
    first_day = first if first.hour == 0 else first.replace(hour=0) + timedelta(days=1)
    last_day = end.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    if interval != "hour" and first_day < last_day:
        part(Rollup, first, first_day)
        part(Rollup, first_day, last_day, days=True)
        part(Rollup, last_day, end)
    else:
        part(Rollup, first, end)
    part(Counter, first, end)
    sql = f"SELECT {select}, SUM(value) FROM ({' UNION ALL '.join(parts)}) AS deltas GROUP BY {group}"
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        rows = cursor.fetchall()

    sums: dict[tuple[Any, ...], dict[str, int]] = defaultdict(dict)
    for b, *rest in rows:
        *dims, metric, value = rest
        key = (b, *dims)
        sums[key][metric] = sums[key].get(metric, 0) + int(value or 0)
    names = list(dict.fromkeys(group_by))
    result = []
    for key in sorted(sums, key=lambda k: tuple(str(d or "") for d in k)):
        metrics = sums[key]
        row: dict[str, Any] = {"bucket": key[0]}
        row.update(zip(names, key[1:], strict=True))
        for name in COUNT_FIELDS:
            row[name] = metrics.get(name, 0)
        skipped: dict[str, int] = {}
        opens: dict[str, int] = {}
        reads: dict[str, int] = {}
        for metric, value in metrics.items():  # one pass over the row's metrics
            if metric.startswith(SKIPPED_PREFIX):
                if value:
                    skipped[metric[len(SKIPPED_PREFIX) :]] = value
            elif metric.startswith(_OPEN_PREFIX):
                opens[metric[len(_OPEN_PREFIX) :]] = value
            elif metric.startswith(_READ_PREFIX):
                reads[metric[len(_READ_PREFIX) :]] = value
        row["skipped"] = dict(sorted(skipped.items()))
        row["delivery_rate"] = _rate(row[counters.DELIVERED], row[counters.SENT])
        row["open_rate"] = _rate(row[counters.OPENED], row[counters.DELIVERED])
        row["click_rate"] = _rate(row[counters.CLICKED], row[counters.DELIVERED])
        row["read_rate"] = _rate(row[counters.READ], row[counters.DELIVERED])
        row["median_open_seconds"] = histogram_median(opens)
        row["median_read_seconds"] = histogram_median(reads)
        result.append(row)
    return result
