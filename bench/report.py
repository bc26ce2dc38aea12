"""The one table ``python -m bench`` prints: goal | measured | baseline | ratio, one row per figure.

How a benchmark module contributes rows (H1 ingest, H3 delivery, H4 fanout, H5 digest/websocket,
H6 pipeline/scaleout):

* its ``run(...)`` returns a JSON-able ``dict`` (kept whole under ``benchmarks.<name>`` in
  ``--json``), and
* it defines ``rows(result: dict) -> list[Row]`` that turns that dict into table rows (a plain
  dict per row with ``name``, ``measured``, ``goal`` like ">= 500/s", ``baseline``… is accepted
  too, see :func:`coerce_row`, but a Row says exactly which goal applies). The
  ``__main__`` calls ``module.rows(result)``; a module without ``rows`` gets a fallback row that
  says so. Keep ``rows`` pure (no I/O): it also runs on saved ``--json`` output.
* a module that cannot run on this installation raises :class:`Skipped` ("needs REDIS_URL"):
  not a failure; its expected rows show "(not measured)" and the reason.
* in-process Django (``installation.setup_django()``) binds this process to ONE installation's
  database for good: a section on ``installation.fresh()`` must do its in-process work in a
  subprocess or through the API (``setup_django`` on a second installation raises).
* processes, load and CPU: ``bench.procs.Stack`` (web / workers / fake ESP on loopback, and
  ``CpuMeter`` over every process incl. PostgreSQL backends and Redis), ``bench.loadgen`` (open
  loop at a fixed rate, or closed loop / wrk), ``bench.baselines.copy_rows`` (COPY), and
  ``bench.peers.run_notifications_hq`` (the django-notifications-hq peer).

A :class:`Row` is one line of the table::

    Row(
        section="ingest",                       # groups rows: ingest, pipeline, fanout, delivery, ...
        name="trigger API, 1 web process",      # what was measured
        measured=412.0, unit="req/s",           # the figure (None: not measured in this run)
        baseline=480.0,                         # the same-run baseline in the same unit, or None
        baseline_name="same validation + one insert",
        goal_min=400, ratio_min=0.8,            # the issue's goals: measured >= goal_min,
                                                # measured <= goal_max, measured/baseline >= ratio_min
        note="p99 37 ms; CPU 2.1 ms/req (all processes)",
    )

Give ``key`` (one of :data:`EXPECTED`'s: ``ingest.trigger``, ``ingest.bulk``, ``pipeline.pg``,
``pipeline.embedded``, ``websocket.p50`` / ``.p99`` / ``.storm``, ``fanout.peer`` / ``.copy`` /
``.broadcast``, ``delivery.email`` / ``.sms`` / ``.push``, ``digest.ingest`` / ``.flush``,
``scaleout``) so that a figure of the issue your section did not produce still shows as
"(not measured)" instead of vanishing.

``ratio`` is ``measured / baseline`` unless given (give it when the baseline is in another
unit, e.g. a cost ratio from CPU per event). ``met`` is derived: True when every goal given holds,
False when one fails or ``unmet=True`` (a condition beyond the number failed: something lost, a
growing backlog, errors — say which in ``note``), None when there is no goal or no measurement.
Use ``lower_is_better=True`` for latencies and durations (then the ratio is ``baseline / measured``,
so > 1 is still better).
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any


class Skipped(Exception):
    """Raised by a module's ``run`` when it does not apply to this installation (e.g. needs Redis).

    ``python -m bench`` then shows the section's expected rows as "(not measured)" with the reason,
    and it is not a failure."""


@dataclass
class Row:
    section: str
    name: str
    measured: float | None
    unit: str = ""
    baseline: float | None = None
    baseline_name: str = ""
    goal_min: float | None = None
    goal_max: float | None = None
    ratio_min: float | None = None
    ratio: float | None = None
    lower_is_better: bool = False
    unmet: bool = False  # a condition beyond the numbers failed (lost messages, growing backlog, errors)
    note: str = ""
    key: str = ""  # which figure of the issue this row measures (see EXPECTED), e.g. "fanout.copy"

    def computed_ratio(self) -> float | None:
        if self.ratio is not None:
            return self.ratio
        if self.measured is None or not self.baseline:
            return None
        if self.lower_is_better:
            return self.baseline / self.measured if self.measured else None
        return self.measured / self.baseline

    def met(self) -> bool | None:
        if self.measured is None:
            return None
        if self.unmet:
            return False
        checks: list[bool] = []
        if self.goal_min is not None:
            checks.append(self.measured >= self.goal_min)
        if self.goal_max is not None:
            checks.append(self.measured <= self.goal_max)
        ratio = self.computed_ratio()
        if self.ratio_min is not None:
            checks.append(ratio is not None and ratio >= self.ratio_min)
        return all(checks) if checks else None

    def goal_text(self) -> str:
        parts = []
        if self.goal_min is not None:
            parts.append(f">= {_num(self.goal_min)}")
        if self.goal_max is not None:
            parts.append(f"<= {_num(self.goal_max)}")
        if self.ratio_min is not None:
            parts.append(f">= {self.ratio_min:g}x base")
        return ", ".join(parts) or "-"

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        ratio = self.computed_ratio()
        data["ratio"] = round(ratio, 3) if ratio is not None else None
        data["met"] = self.met()
        data["goal"] = self.goal_text()
        return data


def row_from_dict(data: dict[str, Any]) -> Row:
    fields: dict[str, Any] = {k: data[k] for k in Row.__dataclass_fields__ if k in data}
    return Row(**fields)


_GOAL = re.compile(r"(>=|<=)\s*([\d,.]+)")


def coerce_row(section: str, obj: Row | dict[str, Any]) -> Row:
    """A :class:`Row`, or a plain dict with at least ``name`` and ``measured`` (``goal`` may be a
    text like ">= 500/s"; keys that are no Row field go into the note)."""
    if isinstance(obj, Row):
        return obj
    data = dict(obj)
    known = {k: data.pop(k) for k in list(data) if k in Row.__dataclass_fields__}
    known.setdefault("section", section)
    known.setdefault("name", "?")
    known.setdefault("measured", None)
    goal = str(data.pop("goal", "") or "")
    for op, number in _GOAL.findall(goal):
        known.setdefault("goal_min" if op == ">=" else "goal_max", float(number.replace(",", "")))
    met = data.pop("met", None)
    if met is False and not any(k in known for k in ("goal_min", "goal_max", "ratio_min")):
        known["unmet"] = True
    extra = "; ".join(f"{k} {v}" for k, v in data.items() if v is not None)
    known["note"] = "; ".join(x for x in (known.get("note", ""), extra) if x)
    return Row(**known)


def _num(value: float | None) -> str:
    if value is None:
        return "-"
    if float(value).is_integer():
        return f"{int(value):,}"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:,.1f}"
    return f"{value:,.2f}"


def table(rows: list[Row]) -> str:
    """The fixed-width table; long notes go on the next line."""
    header = ("section", "what", "goal", "measured", "baseline", "ratio", "met")
    lines_data: list[tuple[str, ...]] = []
    notes: list[str] = []
    for row in rows:
        ratio = row.computed_ratio()
        met = row.met()
        measured = "(not measured)" if row.measured is None else f"{_num(row.measured)} {row.unit}".strip()
        baseline = "-" if row.baseline is None else f"{_num(row.baseline)} {row.unit}".strip()
        if row.baseline_name:
            baseline += f" [{row.baseline_name}]"
        lines_data.append(
            (
                row.section,
                row.name,
                row.goal_text() + (f" {row.unit}" if row.goal_min is not None or row.goal_max is not None else ""),
                measured,
                baseline,
                "-" if ratio is None else f"{ratio:.2f}x",
                {True: "yes", False: "NO", None: "-"}[met],
            )
        )
        notes.append(row.note)
    widths = [max(len(h), *(len(r[i]) for r in lines_data)) if lines_data else len(h) for i, h in enumerate(header)]
    widths[4] = min(widths[4], 60)

    left = {0, 1, 4}

    def fmt(cells: tuple[str, ...]) -> str:
        padded = [c.ljust(w) if i in left else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True))]
        return " | ".join(padded).rstrip()

    out = [fmt(header), "-+-".join("-" * w for w in widths)]
    for cells, note in zip(lines_data, notes, strict=True):
        out.append(fmt(cells))
        if note:
            out.append(" " * (widths[0] + 3) + "  " + note)
    return "\n".join(out)


def header(results: dict[str, Any]) -> str:
    machine = results["machine"]
    lines = [
        f"Clarion benchmarks: {results['installation']}"
        + (f" (PostgreSQL {machine['postgresql']})" if "postgresql" in machine else "")
        + f", broker {machine.get('broker', '?')}"
        + (f" (Redis {machine['redis']})" if "redis" in machine else "")
        + (f"; {machine['database_connections']}" if "database_connections" in machine else ""),
        f"machine: {machine['cpus']} x {machine['cpu_model']}, {machine['memory_gb']} GB, {machine['os']}, "
        f"Python {machine['python']}, Django {machine.get('django', '?')}, SQLite {machine['sqlite']}"
        + (" [quick: smoke sizes, the numbers mean nothing]" if results.get("quick") else ""),
        f"load average (1 min) at start {machine['load_average_at_start']}, "
        f"at end {machine.get('load_average_at_end', '?')}; command: {results.get('command', '?')}",
    ]
    return "\n".join(lines)


def render(results: dict[str, Any]) -> str:
    """Header + the one table (rows already collected under ``results['table']``)."""
    rows = [row_from_dict(r) for r in results.get("table", [])]
    return header(results) + "\n\n" + table(rows)


# --- every figure of issue #15: shown "(not measured)" when its section did not run -------------

EXPECTED: tuple[Row, ...] = (
    Row("ingest", "trigger API", None, "req/s", goal_min=400, ratio_min=0.8, key="ingest.trigger"),
    Row("ingest", "bulk, 1,000 events per request", None, "events/s", goal_min=5000, key="ingest.bulk"),
    Row("pipeline", "in-app + email, PG + Redis, 60 s open loop", None, "events/s", goal_min=250, key="pipeline.pg"),
    Row("pipeline", "in-app + email, embedded", None, "events/s", goal_min=100, key="pipeline.embedded"),
    Row("websocket", "trigger -> frame p50, 1,000 clients, 50/s", None, "ms", goal_max=50, key="websocket.p50"),
    Row("websocket", "trigger -> frame p99, 1,000 clients, 50/s", None, "ms", goal_max=250, key="websocket.p99"),
    Row("websocket", "connection storm: 1,000 reconnect, errors", None, "errors", goal_max=0, key="websocket.storm"),
    Row(
        "fanout",
        "fan-out to 100k vs django-notifications-hq",
        None,
        "notif/s",
        goal_min=10000,
        ratio_min=7,
        key="fanout.peer",
    ),
    Row("fanout", "fan-out to 100k vs COPY", None, "notif/s", goal_min=10000, ratio_min=0.6, key="fanout.copy"),
    Row("fanout", "broadcast to 100k", None, "notif/s", goal_min=10000, key="fanout.broadcast"),
    Row("delivery", "email, one worker, fake ESP", None, "msg/s", goal_min=500, key="delivery.email"),
    Row("delivery", "SMS, one worker, fake provider", None, "msg/s", key="delivery.sms"),
    Row("delivery", "push, one worker, fake provider", None, "msg/s", key="delivery.push"),
    Row("digest", "ingest, 1M events into 10k digests", None, "entries/s", goal_min=10000, key="digest.ingest"),
    Row("digest", "flush of 10k digests", None, "s", goal_max=30, lower_is_better=True, key="digest.flush"),
    Row(
        "analytics",
        "dashboard: 30 d by workflow, channel, daily",
        None,
        "ms",
        goal_max=200,
        lower_is_better=True,
        key="analytics.dashboard",
    ),
    Row(
        "dashboard",
        "console home, 30 d, every chart",
        None,
        "ms",
        goal_max=200,
        lower_is_better=True,
        key="dashboard.home",
    ),
    Row("scaleout", "workers 1/2/4 x web 1/2", None, "events/s", key="scaleout"),
)
SECTION_ORDER = (
    "ingest",
    "pipeline",
    "websocket",
    "fanout",
    "delivery",
    "digest",
    "analytics",
    "dashboard",
    "scaleout",
)


def complete(rows: list[Row], skipped: dict[str, str] | None = None) -> list[Row]:
    """The measured rows, plus a "(not measured)" row for each expected figure nobody measured.

    A placeholder goes when a measured row has its ``key``; a section whose rows carry no keys at
    all replaces all of its placeholders (its rows name their figures their own way)."""
    reasons = skipped or {}
    keys = {row.key for row in rows if row.key}
    keyless_sections = {row.section for row in rows} - {row.section for row in rows if row.key}
    missing = [
        Row(**{**asdict(row), "note": reasons.get(row.section, row.note)})
        for row in EXPECTED
        if row.key not in keys and row.section not in keyless_sections
    ]
    order = {name: i for i, name in enumerate(SECTION_ORDER)}
    return sorted([*rows, *missing], key=lambda r: order.get(r.section, len(order)))  # stable


# --- rows for result shapes of modules that do not define rows() yet --------------------------


def legacy_rows(name: str, result: dict[str, Any]) -> list[Row]:
    try:
        if name == "ingest":
            trigger, bare = result["trigger"], result["bare"]
            return [
                Row(
                    "ingest",
                    "trigger API (old baseline: a bare endpoint)",
                    trigger["requests_per_s"],
                    "req/s",
                    baseline=bare["requests_per_s"],
                    baseline_name="bare DRF endpoint",
                    goal_min=400,
                    ratio_min=0.8,
                    note=f"p99 {trigger['p99_ms']} ms; web CPU {trigger['server_cpu_ms_per_request']} ms/req",
                )
            ]
        if name == "fanout":
            cfg = result["config"]
            return [
                Row(
                    "fanout",
                    f"in-app fan-out to {cfg['subscribers']:,} (old: eager, vs bulk_create)",
                    result["clarion"]["notifications_per_s"],
                    "notif/s",
                    baseline=result["baseline"]["notifications_per_s"],
                    baseline_name="bulk_create",
                    goal_min=10000,
                )
            ]
        if name == "digest":
            cfg = result["config"]
            return [
                Row(
                    "digest",
                    f"ingest, {cfg['entries']:,} events into {cfg['digests']:,} digests",
                    result["ingest"]["entries_per_s"],
                    "entries/s",
                    baseline=result["baseline"]["entries_per_s"],
                    baseline_name="bulk_create Run + DigestEntry",
                    goal_min=10000,
                ),
                Row(
                    "digest",
                    f"flush of {cfg['digests']:,} digests",
                    result["flush"]["seconds"],
                    "s",
                    goal_max=30,
                    lower_is_better=True,
                ),
            ]
    except (KeyError, TypeError) as exc:
        return [Row(name, f"(result shape not understood: {exc!r})", None)]
    return [Row(name, "(this module defines no rows(); see its section of --json)", None)]
