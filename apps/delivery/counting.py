"""What a message status change counts for analytics (docs/analytics.md, "Engagement").

Every count is written by ``apps.analytics.counters`` in the transaction of the change it counts,
and only when the conditional UPDATE really moved the message, so a duplicate callback, a retry or
a race counts nothing twice. A message that skips ahead counts what the later status implies:

- reaching sent, delivered, an engagement status or bounced from before ``sent`` (queued, sending,
  in doubt) also counts ``sent`` (the provider had it);
- reaching an engagement status (opened, read, clicked) from before ``delivered`` also counts
  ``delivered``;
- ``clicked`` from before ``opened`` also counts ``opened`` (the open pixel was blocked or the
  provider does not report opens), except for in-app messages, which are never "opened";
- in-app messages count ``sent`` and ``delivered`` when their inbox row is written (they start
  ``sent``): later moves never count those again.

Opening and reading also add the send→open / send→read latency to their histogram when the
message's ``sent_at`` is known.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from apps.analytics import counters
from apps.analytics.counters import Dims, Tally
from apps.delivery.models import Message
from apps.delivery.status import RANK

S = Message.Status


def message_dims(*, environment_id: int, channel: str, data: Mapping[str, Any] | None) -> Dims:
    """A message's dimensions: the keys the engine put in its data at build time (no query)."""
    data = data if isinstance(data, Mapping) else {}
    return Dims(
        environment_id=environment_id,
        workflow_key=str(data.get("workflow") or "")[:100],
        category_key=str(data.get("category") or "")[:100],
        channel=channel,
        template_key=str(data.get("template") or "")[:100],
    )


def dims_of(message: Message) -> Dims:
    return message_dims(environment_id=message.environment_id, channel=message.channel, data=message.data)


def status_change_metrics(*, old: str, new: str, channel: str) -> list[str]:
    """The metrics one forward move ``old → new`` counts (see the module docstring)."""
    in_app = channel == "in_app"
    rank = RANK.get(old, 0)
    if in_app and old == S.SENT:
        rank = RANK[S.DELIVERED]  # delivered when its inbox row was written
    metrics: list[str] = []
    if new in (S.BOUNCED, S.FAILED):
        if new == S.BOUNCED and rank < RANK[S.SENT]:
            metrics.append(counters.SENT)
        metrics.append(str(new))
        return metrics
    new_rank = RANK.get(new, 0)
    if rank < RANK[S.SENT] <= new_rank:
        metrics.append(counters.SENT)
    if rank < RANK[S.DELIVERED] <= new_rank:
        metrics.append(counters.DELIVERED)
    if new == S.OPENED or (new == S.CLICKED and not in_app and rank < RANK[S.OPENED]):
        metrics.append(counters.OPENED)
    if new == S.READ:
        metrics.append(counters.READ)
    if new == S.CLICKED:
        metrics.append(counters.CLICKED)
    return metrics


def count_status_change(
    tally: Tally, *, dims: Dims, old: str, new: str, at: datetime, sent_at: datetime | None
) -> list[str]:
    """Add what ``old → new`` counts to ``tally``; returns the metrics added."""
    metrics = status_change_metrics(old=old, new=new, channel=dims.channel)
    for metric in metrics:
        tally.add_dims(dims, at=at, metric=metric)
        if sent_at is not None and metric in (counters.OPENED, counters.READ):
            kind = counters.LATENCY_OPEN if metric == counters.OPENED else counters.LATENCY_READ
            seconds = max(0.0, (at - sent_at).total_seconds())
            tally.add_dims(dims, at=at, metric=counters.latency_metric(kind, seconds))
    return metrics
