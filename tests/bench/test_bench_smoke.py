"""Smoke test of the benchmark suite: ``python -m bench --quick --json`` runs and reports numbers.

No timing assertions (speed is judged by the ratios in docs/benchmarks.md, on a quiet machine):
only that both benchmarks ran end to end against a real uvicorn process / the real engine and
reported the keys and positive values the docs and ``make bench`` rely on.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bench.report import render

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.system


@pytest.fixture(scope="module")
def quick_results() -> dict[str, Any]:
    # Always the embedded default: never let the bench write into a services test database.
    env = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "REDIS_URL", "DJANGO_SETTINGS_MODULE"}}
    result = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--json"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, f"python -m bench --quick failed\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}"
    return json.loads(result.stdout)


def _positive(mapping: dict[str, Any], *keys: str) -> None:
    for key in keys:
        assert isinstance(mapping[key], int | float) and mapping[key] > 0, (key, mapping[key])


def test_quick_run_reports_machine_and_installation(quick_results: dict[str, Any]) -> None:
    assert quick_results["quick"] is True
    assert quick_results["command"].startswith("python -m bench")
    assert "SQLite" in quick_results["installation"]
    machine = quick_results["machine"]
    assert machine["database"] == "sqlite" and machine["broker"] == "orm"
    _positive(machine, "cpus")
    assert set(quick_results["benchmarks"]) == {"ingest", "fanout", "digest"}


def test_quick_ingest_measures_trigger_against_bare(quick_results: dict[str, Any]) -> None:
    ingest = quick_results["benchmarks"]["ingest"]
    for name in ("bare", "trigger"):
        row = ingest[name]
        assert row["requests"] == ingest["config"]["requests_per_endpoint"] > 0
        assert row["errors"] == 0, row["first_error"]
        _positive(row, "requests_per_s", "p50_ms", "p99_ms", "seconds")
        assert row["p99_ms"] >= row["p50_ms"]
    _positive(ingest, "ratio_trigger_over_bare")
    # The bare endpoint only authenticates; the trigger also resolves the workflow, ensures the
    # subscriber, writes the event and enqueues (an INSERT on the ORM broker).
    assert ingest["queries_per_request"]["bare"] == 1
    assert ingest["queries_per_request"]["trigger"] > ingest["queries_per_request"]["bare"]


def test_quick_fanout_measures_engine_against_bulk_create(quick_results: dict[str, Any]) -> None:
    fanout = quick_results["benchmarks"]["fanout"]
    assert fanout["config"]["subscribers"] > 0
    for name in ("clarion", "baseline"):
        _positive(fanout[name], "seconds", "notifications_per_s")
        assert len(fanout[name]["runs_seconds"]) == fanout["config"]["repeats"]
    _positive(fanout, "ratio_clarion_over_baseline")


def test_quick_digest_measures_ingest_and_flush(quick_results: dict[str, Any]) -> None:
    digest = quick_results["benchmarks"]["digest"]
    config = digest["config"]
    # the run itself checks one message per digest with the full count and no run left waiting
    assert config["entries"] == config["subscribers"] * config["triggers"] > 0
    _positive(digest["ingest"], "seconds", "entries_per_s", "median_trigger_seconds")
    _positive(digest["baseline"], "median_seconds", "entries_per_s")
    _positive(digest["flush"], "seconds", "digests_per_s", "entries_per_s")
    _positive(digest, "ratio_clarion_over_baseline")


def test_table_renders_both_benchmarks(quick_results: dict[str, Any]) -> None:
    table = render(quick_results)
    assert "flush of all" in table
    assert "ratio trigger/bare" in table
    assert "ratio clarion/baseline" in table
