"""The console's home: the system at a glance, one dataclass per chart, in a fixed number of queries.

``dashboard(environment=…, period="24h" | "7d" | "30d", now=…)`` reads, whatever the data size and
the period:

1. the engagement counts of the period from the analytics rollups (``analytics_query``, one
   statement: triggered per hour or day, messages per channel and status, skipped by reason, and
   the error rate per channel from the same sums);
2. the environment's integrations and their circuit breakers (one query over the environment's
   few rows);
3. the engine's backlog (``workflows.gauges.run_backlog``, two aggregates over indexes) and the
   broker's queue depth (``observability.collectors.queue_depth``: Redis ``LLEN``, or one count on
   the ORM queue) — the numbers ``/metrics`` serves, for the whole installation.

So 4 queries (5 on the ORM broker). The error rate comes from the analytics sums rather than from
``DeliveryAttempt``: the sums are already in the one statement, whereas counting attempts of a
period reads one index entry per attempt (a million for a busy month). See docs/console.md, "Home".
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from apps.analytics import counters
from apps.analytics.selectors import Interval, analytics_query
from apps.delivery.selectors import integration_list
from apps.observability.collectors import queue_depth
from apps.workflows.gauges import run_backlog

logger = logging.getLogger(__name__)

PERIODS: dict[str, tuple[str, Interval]] = {  # name -> (label, bucket of the time chart)
    "24h": ("24 h", "hour"),
    "7d": ("7 d", "day"),
    "30d": ("30 d", "day"),
}
DEFAULT_PERIOD = "24h"
STATUSES = (counters.SENT, counters.DELIVERED, counters.OPENED, counters.CLICKED, counters.BOUNCED, counters.FAILED)
# Skip reasons always shown (0 when none), then any other reason the period counted.
MAIN_SKIP_REASONS = ("preference", "no_address", "frequency_cap", "throttled")

# Chart geometry (SVG user units; the SVGs scale to the page's width through their viewBox).
CHART_WIDTH = 640
LABEL_WIDTH = 130
VALUE_WIDTH = 110
BAR_HEIGHT = 14
ROW_HEIGHT = 20
COLUMN_CHART_HEIGHT = 160
AXIS_HEIGHT = 22


@dataclass(frozen=True)
class Bar:
    """One horizontal bar: its label, value and geometry."""

    label: str
    value: int
    y: float
    width: float
    kind: str = ""
    text: str = ""  # what is written after the bar (the value, formatted)

    @property
    def rect_y(self) -> float:
        return self.y + (ROW_HEIGHT - BAR_HEIGHT) / 2

    @property
    def text_y(self) -> float:
        return self.y + ROW_HEIGHT * 0.7

    @property
    def value_x(self) -> float:
        return round(LABEL_WIDTH + self.width + 6, 1)


@dataclass(frozen=True)
class Column:
    """One bucket of the time chart."""

    label: str  # "2026-11-30 14:00 UTC" or "2026-11-30"
    value: int
    x: float
    y: float
    width: float
    height: float


@dataclass
class TriggeredChart:
    interval: str  # "hour" or "day"
    columns: list[Column]
    total: int
    peak: int
    first_label: str
    last_label: str
    width: int = CHART_WIDTH
    height: int = COLUMN_CHART_HEIGHT + AXIS_HEIGHT
    plot_height: int = COLUMN_CHART_HEIGHT
    axis_label_y: int = COLUMN_CHART_HEIGHT + AXIS_HEIGHT - 5

    @property
    def total_text(self) -> str:
        return f"{self.total:,}"

    @property
    def peak_text(self) -> str:
        return f"{self.peak:,}"


@dataclass
class ChannelStatuses:
    channel: str
    counts: dict[str, int]  # status -> messages, in STATUSES order
    bars: list[Bar]
    y: float  # where its heading goes


@dataclass
class MessagesChart:
    channels: list[ChannelStatuses]
    height: float
    width: int = CHART_WIDTH
    label_width: int = LABEL_WIDTH

    @property
    def total_sent(self) -> int:
        return sum(c.counts[counters.SENT] for c in self.channels)

    @property
    def total_sent_text(self) -> str:
        return f"{self.total_sent:,}"


@dataclass
class SkippedChart:
    bars: list[Bar]
    total: int
    height: float
    width: int = CHART_WIDTH
    label_width: int = LABEL_WIDTH

    @property
    def total_text(self) -> str:
        return f"{self.total:,}"


@dataclass(frozen=True)
class ChannelHealth:
    channel: str
    sent: int
    failed: int
    error_rate: float | None  # failed / (sent + failed); None when neither


@dataclass(frozen=True)
class IntegrationHealth:
    integration_id: int
    name: str
    provider: str
    channel: str
    active: bool
    state: str  # "closed", "open", "half-open"
    failures: int
    open_until: datetime | None


@dataclass
class HealthChart:
    channels: list[ChannelHealth]
    bars: list[Bar]
    integrations: list[IntegrationHealth]
    height: float
    width: int = CHART_WIDTH
    label_width: int = LABEL_WIDTH
    track_width: int = CHART_WIDTH - LABEL_WIDTH - VALUE_WIDTH

    @property
    def circuits_not_closed(self) -> int:
        return sum(1 for i in self.integrations if i.state != "closed")


@dataclass(frozen=True)
class Backlog:
    """Installation-wide (every environment): the engine's and the broker's backlog."""

    runs_waiting: int | None
    runs_pending: int | None
    due_oldest_seconds: float | None  # how long the oldest waiting run whose time came has been due
    queue_depth: int | None  # None: the broker did not answer

    @property
    def due_oldest_text(self) -> str:
        if self.due_oldest_seconds is None:
            return "unknown"
        return duration_text(self.due_oldest_seconds) if self.due_oldest_seconds > 0 else "none is late"


def duration_text(seconds: float) -> str:
    """``95`` -> ``"1 min 35 s"``; two units at most."""
    whole = int(seconds)
    parts: list[str] = []
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60), ("s", 1)):
        if whole >= size or (unit == "s" and not parts):
            parts.append(f"{whole // size} {unit}")
            whole %= size
    return " ".join(parts[:2])


@dataclass
class Dashboard:
    period: str
    period_label: str
    start: datetime
    end: datetime
    triggered: TriggeredChart
    messages: MessagesChart
    skipped: SkippedChart
    health: HealthChart
    backlog: Backlog


def period_bounds(period: str, now: datetime) -> tuple[datetime, datetime]:
    """``[start, now)``: the last 24 UTC hours including the current one, or the last 7 / 30 UTC
    days including today."""
    now = now.astimezone(UTC)
    if period == "24h":
        return counters.hour_of(now) - timedelta(hours=23), now
    days = 7 if period == "7d" else 30
    today = now.replace(hour=0, minute=0, second=0, microsecond=0)
    return today - timedelta(days=days - 1), now


def _bucket_keys(start: datetime, end: datetime, interval: str) -> list[datetime]:
    step = timedelta(hours=1) if interval == "hour" else timedelta(days=1)
    keys, at = [], start
    while at < end:
        keys.append(at)
        at += step
    return keys


def _bucket_text(value: Any, interval: str) -> str:
    """The key of a bucket the query answered (ISO 8601 text), to the hour or day."""
    if isinstance(value, datetime):
        value = value.astimezone(UTC).isoformat()
    return str(value)[: 13 if interval == "hour" else 10]


def _scale(value: int, largest: int, width: float) -> float:
    return round(width * value / largest, 1) if largest > 0 and value > 0 else 0.0


def _triggered(rows: list[dict[str, Any]], start: datetime, end: datetime, interval: str) -> TriggeredChart:
    sums: dict[str, int] = {}
    for row in rows:
        key = _bucket_text(row["bucket"], interval)
        sums[key] = sums.get(key, 0) + row[counters.TRIGGERED]
    buckets = _bucket_keys(start, end, interval)
    values = [sums.get(_bucket_text(b, interval), 0) for b in buckets]
    peak = max(values, default=0)
    slot = CHART_WIDTH / max(len(buckets), 1)
    columns = []
    for index, (bucket, value) in enumerate(zip(buckets, values, strict=True)):
        height = round(COLUMN_CHART_HEIGHT * value / peak, 1) if peak else 0.0
        label = f"{bucket:%Y-%m-%d %H:00} UTC" if interval == "hour" else f"{bucket:%Y-%m-%d}"
        columns.append(
            Column(
                label=label,
                value=value,
                x=round(index * slot + slot * 0.1, 1),
                y=round(COLUMN_CHART_HEIGHT - height, 1),
                width=round(slot * 0.8, 1),
                height=height,
            )
        )
    return TriggeredChart(
        interval=interval,
        columns=columns,
        total=sum(values),
        peak=peak,
        first_label=columns[0].label if columns else "",
        last_label=columns[-1].label if columns else "",
    )


def _channel_totals(rows: list[dict[str, Any]]) -> dict[str, dict[str, int]]:
    totals: dict[str, dict[str, int]] = {}
    for row in rows:
        channel = row.get("channel") or ""
        counts = totals.setdefault(channel, {status: 0 for status in STATUSES})
        for status in STATUSES:
            counts[status] += row[status]
    return {channel: counts for channel, counts in sorted(totals.items()) if any(counts.values())}


def _messages(totals: dict[str, dict[str, int]]) -> MessagesChart:
    bar_width = CHART_WIDTH - LABEL_WIDTH - VALUE_WIDTH
    largest = max((v for counts in totals.values() for v in counts.values()), default=0)
    channels, y = [], 0.0
    for channel, counts in totals.items():
        heading_y = y
        y += ROW_HEIGHT
        bars = []
        for status in STATUSES:
            bars.append(
                Bar(
                    label=status,
                    value=counts[status],
                    y=y,
                    width=_scale(counts[status], largest, bar_width),
                    kind=status,
                    text=f"{counts[status]:,}",
                )
            )
            y += ROW_HEIGHT
        channels.append(ChannelStatuses(channel=channel or "(no channel)", counts=counts, bars=bars, y=heading_y))
        y += ROW_HEIGHT / 2
    return MessagesChart(channels=channels, height=max(y, ROW_HEIGHT))


def _skipped(rows: list[dict[str, Any]]) -> SkippedChart:
    reasons: dict[str, int] = dict.fromkeys(MAIN_SKIP_REASONS, 0)
    for row in rows:
        for reason, value in row["skipped"].items():
            reasons[reason] = reasons.get(reason, 0) + value
    main = [(r, reasons[r]) for r in MAIN_SKIP_REASONS]
    others = sorted(
        ((r, v) for r, v in reasons.items() if r not in MAIN_SKIP_REASONS and v), key=lambda i: (-i[1], i[0])
    )
    items = main + others
    largest = max((v for _, v in items), default=0)
    bar_width = CHART_WIDTH - LABEL_WIDTH - VALUE_WIDTH
    bars = [
        Bar(label=reason, value=value, y=index * ROW_HEIGHT, width=_scale(value, largest, bar_width), text=f"{value:,}")
        for index, (reason, value) in enumerate(items)
    ]
    return SkippedChart(bars=bars, total=sum(v for _, v in items), height=len(bars) * ROW_HEIGHT)


def _circuit_state(open_until: datetime | None, now: datetime) -> str:
    """As the breaker reads it (``delivery.services.circuit``, and ``delivery.gauges`` for /metrics):
    no time is closed, a time to come is open, a time passed is half-open (one probe may go)."""
    if open_until is None:
        return "closed"
    return "open" if open_until > now else "half-open"


def _health(totals: dict[str, dict[str, int]], environment: Any, now: datetime) -> HealthChart:
    channels = []
    for channel, counts in totals.items():
        sent, failed = counts[counters.SENT], counts[counters.FAILED]
        rate = round(failed / (sent + failed), 4) if sent + failed else None
        channels.append(ChannelHealth(channel=channel or "(no channel)", sent=sent, failed=failed, error_rate=rate))
    bar_width = CHART_WIDTH - LABEL_WIDTH - VALUE_WIDTH
    bars = [
        Bar(
            label=health.channel,
            value=health.failed,
            y=index * ROW_HEIGHT,
            width=round(bar_width * (health.error_rate or 0), 1),
            kind="failed",
            text="no sends" if health.error_rate is None else f"{health.error_rate:.1%}",
        )
        for index, health in enumerate(channels)
    ]
    rows = integration_list(environment=environment).order_by("channel", "priority", "pk")
    integrations = [
        IntegrationHealth(
            integration_id=i.pk,
            name=i.name or i.provider,
            provider=i.provider,
            channel=i.channel,
            active=i.active,
            state=_circuit_state(i.circuit_open_until, now),
            failures=i.circuit_failures,
            open_until=i.circuit_open_until,
        )
        for i in rows.only("pk", "name", "provider", "channel", "active", "circuit_open_until", "circuit_failures")
    ]
    return HealthChart(channels=channels, bars=bars, integrations=integrations, height=len(bars) * ROW_HEIGHT)


def _backlog(now: datetime) -> Backlog:
    """The ``/metrics`` gauges; a source that fails is shown as unknown, never a 500."""
    waiting = pending = None
    due: float | None = None
    try:
        runs = run_backlog(now=now)
    except Exception:
        logger.warning("console home: could not read the run backlog", exc_info=True)
    else:
        waiting, pending, due = runs.waiting, runs.pending, runs.due_oldest_seconds
    try:
        depth: int | None = queue_depth()
    except Exception:
        logger.warning("console home: could not read the broker's queue depth", exc_info=True)
        depth = None
    return Backlog(runs_waiting=waiting, runs_pending=pending, due_oldest_seconds=due, queue_depth=depth)


def dashboard(*, environment: Any, period: str, now: datetime) -> Dashboard:
    """The home page's charts for one environment and period (``PERIODS``); see the module's doc
    for the queries (4, or 5 on the ORM broker)."""
    if period not in PERIODS:
        raise ValueError(f"unknown period: {period}")
    label, interval = PERIODS[period]
    start, end = period_bounds(period, now)
    rows = analytics_query(environment=environment, start=start, end=end, group_by=["channel"], interval=interval)
    totals = _channel_totals(rows)
    return Dashboard(
        period=period,
        period_label=label,
        start=start,
        end=end,
        triggered=_triggered(rows, start, end, interval),
        messages=_messages(totals),
        skipped=_skipped(rows),
        health=_health(totals, environment, now),
        backlog=_backlog(now),
    )
