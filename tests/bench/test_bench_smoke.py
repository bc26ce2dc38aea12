"""Smoke test of the benchmark suite: ``python -m bench --quick --json`` runs and prints one table.

Embedded default only (never a services test database), smoke sizes, no timing assertions (speed
is judged from docs/benchmarks.md's quiet runs): every benchmark ran or said why it was skipped,
the table has a row for every figure of issue #15, and the end-to-end pipeline really went through
real processes — every in-app message committed, every email at the fake ESP, CPU counted for
the web, the workers and the load generator.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bench.report import SECTION_ORDER, render

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.system


@pytest.fixture(scope="module")
def quick_results() -> dict[str, Any]:
    drop = {"DATABASE_URL", "REDIS_URL", "DJANGO_SETTINGS_MODULE", "BENCH_PORT_BASE"}
    env = {k: v for k, v in os.environ.items() if k not in drop}
    result = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--json"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=420,
    )
    assert result.returncode == 0, f"python -m bench --quick failed\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}"
    return dict(json.loads(result.stdout))


def test_quick_run_reports_machine_and_installation(quick_results: dict[str, Any]) -> None:
    assert quick_results["quick"] is True
    assert quick_results["command"].startswith("python -m bench")
    assert "SQLite" in quick_results["installation"]
    machine = quick_results["machine"]
    assert machine["database"] == "sqlite" and machine["broker"] == "orm"
    assert machine["cpus"] > 0


def test_every_benchmark_ran_or_says_why_not(quick_results: dict[str, Any]) -> None:
    for name, result in quick_results["benchmarks"].items():
        assert "error" not in result, (name, result["error"])
    # on the embedded default these need PostgreSQL + Redis
    assert "skipped" in quick_results["benchmarks"]["scaleout"]
    assert "skipped" in quick_results["benchmarks"]["websocket"]


def test_table_has_every_figure_of_the_issue(quick_results: dict[str, Any]) -> None:
    table = quick_results["table"]
    assert {row["section"] for row in table} == set(SECTION_ORDER)
    for row in table:
        assert set(row) >= {"goal", "measured", "baseline", "ratio", "met", "unit"}
    measured = {row["section"] for row in table if row["measured"] is not None}
    ran = {name for name, r in quick_results["benchmarks"].items() if "skipped" not in r}
    assert ran <= measured | {"recovery"}, "a benchmark ran but put no measured row in the table"
    text = render(quick_results)
    assert "goal" in text and "measured" in text and "baseline" in text and "ratio" in text


def test_quick_pipeline_goes_through_real_processes(quick_results: dict[str, Any]) -> None:
    embedded = quick_results["benchmarks"]["pipeline"]["modes"]["embedded"]
    assert embedded["accepted"] == embedded["loadgen"]["scheduled"] > 0
    assert embedded["trigger_errors"] == 0
    assert embedded["drained"] is True
    assert embedded["inbox_committed"] == embedded["accepted"]
    assert embedded["emails_accepted"] == embedded["accepted"]
    cpu = embedded["cpu_seconds"]
    for group in ("web", "worker", "loadgen"):
        assert cpu[group] > 0, (group, cpu)
    assert cpu["postgres"] == cpu["redis"] == 0  # SQLite and the ORM broker: nothing else to count
    assert embedded["sustained_events_per_s"] >= 0  # smoke sizes: completions may all land after the window
    assert embedded["samples"], "the backlog was never sampled"
