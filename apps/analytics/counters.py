"""The one way to count for analytics: collect deltas, write them in the caller's transaction.

Every app that changes something analytics counts (events triggered, runs, message statuses,
inbox reads, skip decisions, savings) calls this module and nothing else of ``apps.analytics``;
it imports no domain app. A ``Tally`` sums deltas in memory by bucket, dimensions and metric and
writes them as ``Counter`` rows in one statement, so a chunk of 1,000 status changes costs one
INSERT of a few rows, inside the same transaction as the changes it counts.
"""

from __future__ import annotations

from collections import Counter as _Sums
from datetime import UTC, datetime
from typing import NamedTuple

from apps.analytics.models import Counter


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
