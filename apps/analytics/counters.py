"""The one way to count for analytics: collect deltas, write them in the caller's transaction.

Every app that changes something analytics counts (events triggered, runs, message statuses,
inbox reads, skip decisions, savings) calls this module and nothing else of ``apps.analytics``;
it imports no domain app. A ``Tally`` sums deltas in memory by bucket, dimensions and metric and
writes them as ``Counter`` rows in one statement, so a chunk of 1,000 status changes costs one
INSERT of a few rows, inside the same transaction as the changes it counts.
"""

from __future__ import annotations

from collections import Counter as _Sums
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, NamedTuple, cast

from django.db import connection, transaction
from django.db.models import QuerySet
from django.db.models.sql.subqueries import UpdateQuery

from apps.analytics.models import Counter

# The metric names (docs/analytics.md, "Engagement"). Messages are counted by workflow, category,
# channel and template; events by workflow and category.
TRIGGERED = "triggered"  # an event accepted (single, bulk item, broadcast)
SENT = "sent"  # a provider accepted the message (in-app: its inbox row was written)
DELIVERED = "delivered"  # reached the recipient (in-app: the inbox row, at once)
OPENED = "opened"
CLICKED = "clicked"
READ = "read"  # in-app: the first read of the inbox message
SEEN = "seen"  # in-app: the first time it was seen
ARCHIVED = "archived"  # in-app: net (an unarchive takes its archive back)
ACTION_COMPLETED = "action_completed"  # in-app: the first action button completed
BOUNCED = "bounced"
FAILED = "failed"
ENGAGEMENT_METRICS = (
    TRIGGERED,
    SENT,
    DELIVERED,
    OPENED,
    CLICKED,
    READ,
    SEEN,
    ARCHIVED,
    ACTION_COMPLETED,
    BOUNCED,
    FAILED,
)
# Latency histograms: "latency_open:<le>" counts messages opened at most <le> seconds after they were
# sent (and more than the bound below); "inf" past the last bound. Read the same for "latency_read".
LATENCY_OPEN = "latency_open"
LATENCY_READ = "latency_read"
LATENCY_BOUNDS: tuple[int, ...] = (
    1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200, 14400, 28800, 86400, 172800, 604800,
)  # fmt: skip


def latency_metric(kind: str, seconds: float) -> str:
    """The histogram metric of a latency: ``kind`` is ``LATENCY_OPEN`` or ``LATENCY_READ``."""
    for bound in LATENCY_BOUNDS:
        if seconds <= bound:
            return f"{kind}:{bound}"
    return f"{kind}:inf"


class Dims(NamedTuple):
    """What a message is counted by (besides its environment)."""

    environment_id: int
    workflow_key: str = ""
    category_key: str = ""
    channel: str = ""
    template_key: str = ""


class Key(NamedTuple):
    environment_id: int
    bucket: datetime
    workflow_key: str
    category_key: str
    channel: str
    template_key: str
    metric: str


def hour_of(at: datetime) -> datetime:
    """The start of the UTC hour of ``at``: the bucket it is counted in."""
    return at.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


class Tally:
    """Deltas summed in memory; ``write`` inserts them (call it inside the transaction counted)."""

    __slots__ = ("sums",)

    def __init__(self) -> None:
        self.sums: _Sums[Key] = _Sums()

    def add(
        self,
        *,
        environment_id: int,
        at: datetime,
        metric: str,
        workflow_key: str = "",
        category_key: str = "",
        channel: str = "",
        template_key: str = "",
        value: int = 1,
    ) -> None:
        key = Key(environment_id, hour_of(at), workflow_key, category_key, channel, template_key, metric)
        self.sums[key] += value

    def add_dims(self, dims: Dims, *, at: datetime, metric: str, value: int = 1) -> None:
        """``add`` with the dimensions of ``dims``."""
        self.add(
            environment_id=dims.environment_id,
            at=at,
            metric=metric,
            workflow_key=dims.workflow_key,
            category_key=dims.category_key,
            channel=dims.channel,
            template_key=dims.template_key,
            value=value,
        )

    def __bool__(self) -> bool:
        return any(self.sums.values())

    def write(self) -> int:
        """Insert the non-zero sums as Counter rows (one statement); returns how many rows."""
        rows = [
            Counter(
                environment_id=key.environment_id,
                bucket=key.bucket,
                workflow_key=key.workflow_key,
                category_key=key.category_key,
                channel=key.channel,
                template_key=key.template_key,
                metric=key.metric,
                value=value,
            )
            for key, value in self.sums.items()
            if value
        ]
        if rows:
            Counter.objects.bulk_create(rows)
        self.sums.clear()
        return len(rows)


def counted_rows_sql(*, source: str, metric: str, at: datetime, dims: Mapping[int, Dims]) -> tuple[str, list[Any]]:
    """PostgreSQL: an ``INSERT … SELECT`` that adds one to ``metric`` (in ``at``'s hour) for each row
    of ``source`` (a data-modifying CTE returning ``id``), with the dimensions ``dims`` gives each id.

    For a hot path that already changes its rows in one statement: put this in the same ``WITH`` and
    the count is exactly the rows that statement changed, in the same statement (no extra round
    trip, no transaction needed around it). The same rows as ``Tally.write`` would insert."""
    quote = connection.ops.quote_name
    values: list[Any] = []
    for pk, d in dims.items():
        values += [pk, d.environment_id, d.workflow_key, d.category_key, d.channel, d.template_key]
    rows = ", ".join(["(%s::bigint, %s::bigint, %s::text, %s::text, %s::text, %s::text)"] * len(dims))
    sql = (
        f"INSERT INTO {quote(Counter._meta.db_table)} "
        "(environment_id, bucket, workflow_key, category_key, channel, template_key, metric, value) "
        f"SELECT d.e, %s, d.w, d.c, d.ch, d.t, %s, count(*) FROM {source} "
        f"JOIN (VALUES {rows}) AS d(id, e, w, c, ch, t) ON d.id = {source}.id "
        "GROUP BY d.e, d.w, d.c, d.ch, d.t"
    )
    return sql, [connection.ops.adapt_datetimefield_value(hour_of(at)), metric, *values]


def counted_all_sql(*, source: str, metric: str, at: datetime, dims: Dims) -> tuple[str, list[Any]]:
    """PostgreSQL: like ``counted_rows_sql``, with the same dimensions for every row of ``source``
    (no row inserted when ``source`` returns none)."""
    quote = connection.ops.quote_name
    sql = (
        f"INSERT INTO {quote(Counter._meta.db_table)} "
        "(environment_id, bucket, workflow_key, category_key, channel, template_key, metric, value) "
        f"SELECT %s, %s, %s, %s, %s, %s, %s, count(*) FROM {source} HAVING count(*) > 0"
    )
    bucket = connection.ops.adapt_datetimefield_value(hour_of(at))
    return sql, [dims.environment_id, bucket, *dims[1:], metric]


def update_counted(queryset: QuerySet[Any], updates: dict[str, Any], *, dims: Dims, metric: str, at: datetime) -> int:
    """``queryset.update(**updates)`` that also counts ``metric`` once per row it changed, atomically.

    On PostgreSQL one statement (``WITH moved AS (UPDATE … RETURNING id) INSERT …``): no transaction
    and no round trip beyond the UPDATE's. Elsewhere the UPDATE and, if it changed rows, one INSERT
    in a transaction. Returns the rows changed."""
    if connection.vendor != "postgresql":
        with transaction.atomic(using=queryset.db):
            moved = queryset.update(**updates)
            if moved:
                tally = Tally()
                tally.add(
                    environment_id=dims.environment_id,
                    at=at,
                    metric=metric,
                    workflow_key=dims.workflow_key,
                    category_key=dims.category_key,
                    channel=dims.channel,
                    template_key=dims.template_key,
                    value=moved,
                )
                tally.write()
        return moved
    query = cast(UpdateQuery, queryset.query.chain(UpdateQuery))
    query.add_update_values(updates)
    update_sql, update_params = query.get_compiler(using=queryset.db).as_sql()
    counted, counted_params = counted_all_sql(source="moved", metric=metric, at=at, dims=dims)
    with connection.cursor() as cursor:
        cursor.execute(
            f"WITH moved AS ({update_sql} RETURNING 1), counted AS ({counted} RETURNING 1) SELECT count(*) FROM moved",
            [*update_params, *counted_params],
        )
        row = cursor.fetchone()
    return int(row[0]) if row else 0
