"""The savings report: Clarion's sends against the "CPaaS only" baseline, per lever, in money.

The counts come from the engine (``apps.workflows.accounting``): when a run finishes, each message
its workflow version would send under the baseline is counted once — ``baseline``, and one of
``actual`` (a message was created), ``avoided:<lever>`` or ``other:<reason>``. A category digest
sent in place of held messages adds one ``actual`` and one ``replaced:<lever>``. So, for any
period and any group, exactly:

    baseline = actual + Σ avoided (net: counted − replaced by digests) + Σ other

Reading is Rollup plus the Counter deltas not folded yet, in one statement (one snapshot: a fold
running meanwhile moves rows from one side to the other, never both or neither). See
docs/analytics.md, "Savings".
"""

from __future__ import annotations

import base64
import binascii
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

from django.db.models import Sum

from apps.analytics.models import Counter, Rollup
from apps.analytics.pricing import channel_prices
from apps.tenancy.models import Environment
from apps.workflows import accounting
from apps.workflows.selectors import finished_runs_page

MONEY = Decimal("0.000001")  # money is given with six decimals (prices have six)
DIGESTS = ""  # the workflow key of category digests (they gather any workflow of their category)


def money(value: Decimal) -> str:
    return str(value.quantize(MONEY))


def _metrics() -> list[str]:
    names = [
        accounting.BASELINE,
        accounting.ACTUAL,
        accounting.RECIPIENTS,
        accounting.SMS_SEGMENTS,
        accounting.SMS_BODIES,
    ]
    names += [accounting.avoided_metric(lever) for lever in accounting.LEVERS]
    names += [f"{accounting.REPLACED}:{lever}" for lever in accounting.LEVERS]
    names += [accounting.other_metric(reason) for reason in accounting.OTHER_REASONS]
    return names


def counted_sums(*, environment: Environment, start: datetime, end: datetime) -> dict[tuple[str, str, str], int]:
    """(workflow key, channel, metric) → the sum over the period's hours [start, end). One query."""
    columns = ("workflow_key", "channel", "metric")
    filters = {"environment": environment, "bucket__gte": start, "bucket__lt": end, "metric__in": _metrics()}
    folded = Rollup.objects.filter(**filters).values(*columns).annotate(total=Sum("value")).order_by()
    pending = Counter.objects.filter(**filters).values(*columns).annotate(total=Sum("value")).order_by()
    sums: dict[tuple[str, str, str], int] = defaultdict(int)
    for row in folded.union(pending, all=True):
        sums[(row["workflow_key"], row["channel"], row["metric"])] += int(row["total"] or 0)
    return sums


@dataclass
class _Line:
    """Messages and their cost, for one part of the report."""

    messages: int = 0
    cost: Decimal = field(default_factory=Decimal)

    def add(self, messages: int, unit: Decimal) -> None:
        self.messages += messages
        self.cost += messages * unit

    def data(self) -> dict[str, Any]:
        return {"messages": self.messages, "cost": money(self.cost)}


@dataclass
class _Part:
    baseline: _Line = field(default_factory=_Line)
    actual: _Line = field(default_factory=_Line)
    avoided: _Line = field(default_factory=_Line)
    other: _Line = field(default_factory=_Line)

    def data(self) -> dict[str, Any]:
        return {
            "baseline": self.baseline.data(),
            "actual": self.actual.data(),
            "avoided": self.avoided.data(),
            "other": self.other.data(),
        }


def savings_report(*, environment: Environment, start: datetime, end: datetime) -> dict[str, Any]:
    """The report for the hours in [start, end): two queries (the counts, the integrations' prices)."""
    sums = counted_sums(environment=environment, start=start, end=end)
    prices = channel_prices(environment=environment)

    # An SMS costs its segments: the actual SMS bodies' average per workflow in the period, and one
    # segment for a workflow that created none (what the baseline's unsent SMS are priced at too).
    segments: dict[str, Decimal] = {}
    for (workflow_key, _channel, metric), value in sums.items():
        if metric == accounting.SMS_BODIES and value > 0:
            counted_segments = sums.get((workflow_key, "sms", accounting.SMS_SEGMENTS), 0)
            segments[workflow_key] = Decimal(counted_segments) / Decimal(value) if counted_segments > 0 else Decimal(1)

    def unit(workflow_key: str, channel: str) -> Decimal:
        price = prices.get(channel, Decimal(0))
        return price * segments.get(workflow_key, Decimal(1)) if channel == "sms" else price

    total = _Part()
    counted: dict[str, _Line] = {lever: _Line() for lever in accounting.LEVERS}
    replaced: dict[str, _Line] = {lever: _Line() for lever in accounting.LEVERS}
    others: dict[str, _Line] = {reason: _Line() for reason in accounting.OTHER_REASONS}
    by_channel: dict[str, _Part] = {}
    by_workflow: dict[str, _Part] = {}
    recipients: int = 0
    for (workflow_key, channel, metric), value in sorted(sums.items()):
        if metric == accounting.RECIPIENTS:
            recipients += value
            continue
        if metric in (accounting.SMS_SEGMENTS, accounting.SMS_BODIES) or not value:
            continue
        price = unit(workflow_key, channel)
        parts = (total, by_channel.setdefault(channel, _Part()), by_workflow.setdefault(workflow_key, _Part()))
        kind, _, name = metric.partition(":")
        for part in parts:
            if metric == accounting.BASELINE:
                part.baseline.add(value, price)
            elif metric == accounting.ACTUAL:
                part.actual.add(value, price)
            elif kind == "avoided":
                part.avoided.add(value, price)
            elif kind == accounting.REPLACED:
                part.avoided.add(-value, price)
            elif kind == "other":
                part.other.add(value, price)
        if kind == "avoided":
            counted[name].add(value, price)
        elif kind == accounting.REPLACED:
            replaced[name].add(value, price)
        elif kind == "other":
            others[name].add(value, price)

    avoided = []
    for lever in accounting.LEVERS:
        net = _Line(counted[lever].messages - replaced[lever].messages, counted[lever].cost - replaced[lever].cost)
        avoided.append(
            {
                "lever": lever,
                **net.data(),
                "counted": counted[lever].messages,
                "replaced_by_digests": replaced[lever].messages,
            }
        )
    return {
        "currency": environment.currency,
        "baseline": total.baseline.data(),
        "actual": total.actual.data(),
        "avoided": avoided,
        "other": [{"reason": reason, **line.data()} for reason, line in others.items()],
        "by_channel": [
            {"channel": channel, "price": money(prices.get(channel, Decimal(0))), **part.data()}
            for channel, part in sorted(by_channel.items())
        ],
        "by_workflow": [
            {"workflow": workflow_key or None, **part.data()} for workflow_key, part in sorted(by_workflow.items())
        ],
        "recipients": recipients,
    }


# --------------------------------------------------------------------------------------------
# Drill-down: the runs behind a lever
# --------------------------------------------------------------------------------------------

RUNS_SCANNED_PER_PAGE = 2000  # a page reads at most this many finished runs (rare levers: follow the cursor)


def drill_down_names() -> list[str]:
    """What ``savings_runs`` takes as ``lever``: a lever, or ``other:<reason>``."""
    return [*accounting.LEVERS, *(accounting.other_metric(reason) for reason in accounting.OTHER_REASONS)]


def encode_cursor(run_pk: int) -> str:
    return base64.urlsafe_b64encode(f"r:{run_pk}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> int | None:
    """The run pk a cursor continues below; None when it is not one this module issued."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None
    kind, _, pk = raw.partition(":")
    if kind != "r" or not (pk.isascii() and pk.isdigit()) or len(pk) > 19:
        return None
    return int(pk)


def savings_runs(
    *,
    environment: Environment,
    start: datetime,
    end: datetime,
    lever: str,
    before: int | None = None,
    limit: int = 50,
) -> tuple[list[dict[str, Any]], int | None]:
    """The baseline messages the report counted under ``lever`` (or ``other:<reason>``), one row per
    message with its run, newest run first: the runs that finished in [start, end), each read back
    through the same ``accounting.run_outcomes`` the engine counted it with. Returns the rows and
    the run pk to continue below (None: no more). A page ends on a whole run, after at least
    ``limit`` rows or ``RUNS_SCANNED_PER_PAGE`` runs."""
    wanted_other = lever.partition(":")[2] if lever.startswith("other:") else None
    rows: list[dict[str, Any]] = []
    scanned = 0
    while len(rows) < limit and scanned < RUNS_SCANNED_PER_PAGE:
        batch = finished_runs_page(
            environment=environment, start=start, end=end, before=before, limit=min(500, RUNS_SCANNED_PER_PAGE)
        )
        if not batch:
            return rows, None
        for run in batch:
            scanned += 1
            before = run.pk
            for outcome in accounting.run_outcomes(run):
                matched = outcome.reason == wanted_other if wanted_other else outcome.lever == lever
                if matched:
                    rows.append(
                        {
                            "run_id": run.pk,
                            "transaction_id": run.event.transaction_id,
                            "subscriber_id": run.subscriber.subscriber_id,
                            "workflow": run.workflow_version.workflow.key,
                            "step_id": outcome.slot.step_id,
                            "channel": outcome.slot.channel,
                            "template": outcome.slot.template_key or None,
                            "lever": outcome.lever or accounting.other_metric(outcome.reason),
                            "reason": outcome.reason,
                            "run_status": run.status,
                            "completed_at": run.completed_at,
                        }
                    )
            if len(rows) >= limit or scanned >= RUNS_SCANNED_PER_PAGE:
                break
    return rows, before
