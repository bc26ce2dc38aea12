"""Analytics reads: engagement per period and dimension, from rollups plus unfolded deltas.

One SQL statement per query, whatever the range or grouping: it sums ``Rollup`` and ``Counter`` rows
together (one snapshot, so a concurrent fold changes nothing in the answer), grouped by the
requested dimensions, the metric and the UTC hour or day. The rest (rates, the skipped reasons,
medians from the latency histograms) is arithmetic on those sums.
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


def histogram_median(buckets: dict[str, int]) -> float | None:
    """The median of a latency histogram (``{"<le>" | "inf": count}``, see ``counters.LATENCY_BOUNDS``).

    The bucket holding the middle observation is found exactly; within it the value is
    interpolated geometrically between its bounds (the buckets are roughly logarithmic), so the
    estimate is within the bucket's bounds: a factor of 2 to 3. Past the last bound, the last bound
    is returned. ``None`` when the histogram is empty."""
    counts: list[tuple[float, float, int]] = []  # (lower, upper, count)
    lower = 0.0
    for bound in counters.LATENCY_BOUNDS:
        counts.append((lower, float(bound), max(0, buckets.get(str(bound), 0))))
        lower = float(bound)
    counts.append((lower, math.inf, max(0, buckets.get("inf", 0))))
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
    if interval == "hour":
        return "bucket"
    if interval == "day":
        if connection.vendor == "postgresql":
            return "date_trunc('day', bucket, 'UTC')"
        return "substr(bucket, 1, 10)"
    return "NULL"


def _as_bucket(value: Any, interval: Interval | None) -> datetime | None:
    if value is None or interval is None:
        return None
    if isinstance(value, datetime):
        return value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)
    text = str(value)
    parsed = datetime.fromisoformat(text if len(text) > 10 else f"{text}T00:00:00")
    return parsed.astimezone(UTC) if parsed.tzinfo else parsed.replace(tzinfo=UTC)


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
    parts = []
    params: list[Any] = []
    for model in (Rollup, Counter):
        parts.append(
            f"SELECT bucket, {', '.join([*columns, 'metric', 'value'])} FROM {quote(model._meta.db_table)} "
            "WHERE environment_id = %s AND bucket >= %s AND bucket < %s"
        )
        params += [environment_id, adapt(hour_of(start)), adapt(end)]
    sql = f"SELECT {select}, SUM(value) FROM ({' UNION ALL '.join(parts)}) AS deltas GROUP BY {group}"
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        rows = cursor.fetchall()

    sums: dict[tuple[Any, ...], dict[str, int]] = defaultdict(dict)
    for b, *rest in rows:
        *dims, metric, value = rest
        key = (_as_bucket(b, interval), *dims)
        sums[key][metric] = sums[key].get(metric, 0) + int(value or 0)
    names = list(dict.fromkeys(group_by))
    result = []
    for key in sorted(sums, key=lambda k: (k[0] or start, *[str(d) for d in k[1:]])):
        metrics = sums[key]
        row: dict[str, Any] = {"bucket": key[0].isoformat().replace("+00:00", "Z") if key[0] else None}
        row.update(zip(names, key[1:], strict=True))
        for name in COUNT_FIELDS:
            row[name] = metrics.get(name, 0)
        row["skipped"] = {
            metric[len(SKIPPED_PREFIX) :]: value
            for metric, value in sorted(metrics.items())
            if metric.startswith(SKIPPED_PREFIX) and value
        }
        row["delivery_rate"] = _rate(row[counters.DELIVERED], row[counters.SENT])
        row["open_rate"] = _rate(row[counters.OPENED], row[counters.DELIVERED])
        row["click_rate"] = _rate(row[counters.CLICKED], row[counters.DELIVERED])
        row["read_rate"] = _rate(row[counters.READ], row[counters.DELIVERED])
        for field, kind in (
            ("median_open_seconds", counters.LATENCY_OPEN),
            ("median_read_seconds", counters.LATENCY_READ),
        ):
            prefix = f"{kind}:"
            row[field] = histogram_median({m[len(prefix) :]: v for m, v in metrics.items() if m.startswith(prefix)})
        result.append(row)
    return result
