"""Retention on a large trace: how fast ``apps.core.retention`` prunes, in ticks of its budget.

``DATABASE_URL=postgres://…/clarion_scratch python -m bench.retention --events 40 --subscribers 500``

Builds, in a scratch database (migrated here; the name must contain ``bench``, ``scratch`` or
``h8``), one environment with ``events × subscribers`` finished runs from 100 days ago (three step
runs, a settled in-app message, its attempt, callback and inbox row each; the fixture of
``tests/core/test_retention.py``), then calls ``prune`` with the scheduled task's 20 s budget
until it reports finished, printing per tick the rows, statements and the largest statement, and
per table the statements and their mean time. Not part of ``python -m bench``'s table.
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import sys
import time
from typing import Any


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.retention")
    parser.add_argument("--events", type=int, default=40)
    parser.add_argument("--subscribers", type=int, default=500)
    parser.add_argument("--budget", type=float, default=20.0)
    args = parser.parse_args(argv)
    database_url = os.environ.get("DATABASE_URL", "")
    if not re.search(r"/[^/]*(bench|scratch|h8)[^/]*$", database_url):
        print("DATABASE_URL must name a scratch database (its name containing bench, scratch or h8)")
        return 2
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    import django

    django.setup()
    from django.core.management import call_command
    from django.db import connection

    from apps.core.retention import prune
    from tests.core.test_retention import _build_trace, _rows
    from tests.factories import EnvironmentFactory, ProjectFactory

    call_command("migrate", verbosity=0)
    slug = f"retention-bench-{int(time.time())}"
    started = time.monotonic()
    trace = _build_trace(
        EnvironmentFactory(slug=slug, project=ProjectFactory(slug=slug)),
        events=args.events,
        subscribers=args.subscribers,
    )
    before = _rows(trace.environment)
    print(f"built {sum(before.values())} rows {before} in {time.monotonic() - started:.0f} s", flush=True)

    timing: dict[str, list[float]] = collections.defaultdict(lambda: [0, 0.0])

    def timed(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        began = time.monotonic()
        try:
            return execute(sql, params, many, context)
        finally:
            match = re.match(r'(DELETE FROM|UPDATE|SELECT .*? FROM) "?(\w+)', sql)
            key = f"{match.group(1).split()[0]} {match.group(2)}" if match else sql[:30]
            timing[key][0] += 1
            timing[key][1] += time.monotonic() - began

    connection.execute_wrappers.append(timed)
    started, ticks, statements = time.monotonic(), 0, 0
    while True:
        began = time.monotonic()
        run = prune(environments=[slug], budget_seconds=args.budget)
        ticks += 1
        statements += len(run.statements)
        largest = max((rows for _, rows in run.statements), default=0)
        print(
            f"tick {ticks}: {sum(run.counts.values())} rows deleted, {len(run.statements)} statements "
            f"(largest {largest} rows), {time.monotonic() - began:.1f} s, finished={run.finished}",
            flush=True,
        )
        if run.finished:
            break
    elapsed = time.monotonic() - started
    connection.execute_wrappers.remove(timed)
    for key, (count, seconds) in sorted(timing.items(), key=lambda item: -item[1][1])[:8]:
        print(f"  {key}: {int(count)} statements, {1000 * seconds / count:.0f} ms each")
    began = time.monotonic()
    idle = prune(environments=[slug])
    print(
        f"pruned in {ticks} tick(s), {elapsed:.1f} s, {statements} statements; "
        f"then an idle tick: {time.monotonic() - began:.2f} s, {len(idle.statements)} statements"
    )
    print(f"left {_rows(trace.environment)}; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    return 0


if __name__ == "__main__":
    sys.exit(main())
