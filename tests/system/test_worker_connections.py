"""Real workers on PostgreSQL: every worker process has its own connection, also after the
sentinel forks a replacement for a killed worker, and a connection the server dropped is never
handed to a task."""

from __future__ import annotations

import json
import os
import signal
import time
from collections import defaultdict
from pathlib import Path

import psycopg
import pytest

from tests.system.conftest import ClarionSystem

pytestmark = [pytest.mark.system, pytest.mark.services]

PROBE = "tests.system.probes.connection_identity"


def _enqueue(system: ClarionSystem, path: Path, tag: str, count: int) -> None:
    system.manage(
        "shell",
        "-c",
        "from django_q.tasks import async_task\n"
        f"for _ in range({count}): async_task({PROBE!r}, {str(path)!r}, {tag!r}, 0.1)",
    )


def _results(path: Path, tag: str, count: int, timeout: float = 60) -> list[dict[str, int]]:
    deadline = time.monotonic() + timeout
    rows: list[dict[str, int]] = []
    while time.monotonic() < deadline:
        if path.exists():
            rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
            rows = [row for row in rows if row["tag"] == tag]
            if len(rows) >= count:
                return rows
        time.sleep(0.2)
    raise AssertionError(f"only {len(rows)} of {count} probes of {tag!r} ran")


def _sessions_by_process(rows: list[dict[str, int]]) -> dict[int, set[int]]:
    processes: dict[int, set[int]] = defaultdict(set)
    for row in rows:
        processes[row["backend"]].add(row["pid"])
    return processes


def _terminate_sessions(system: ClarionSystem, backends: set[int]) -> None:
    url = system.env["DATABASE_URL"]
    with psycopg.connect(url, autocommit=True) as admin:
        for backend in backends:
            admin.execute("SELECT pg_terminate_backend(%s)", [backend])


def test_each_worker_process_has_its_own_connection_after_a_restart_and_dead_ones_are_discarded(
    clarion_system: ClarionSystem, clarion_worker, tmp_path: Path
) -> None:
    path = tmp_path / "probes.jsonl"
    _enqueue(clarion_system, path, "first", 20)
    first = _results(path, "first", 20)
    # The sentinel queries the database itself every 30 s (django-q2's scheduler), so its pool holds
    # a connection when it forks the replacement below: the case that shared one socket before.
    time.sleep(32)

    victim = first[0]["pid"]
    os.kill(victim, signal.SIGKILL)
    time.sleep(2)  # the sentinel notices within a guard cycle and forks a new worker
    _enqueue(clarion_system, path, "after-kill", 20)
    # Not all 20: a kill can take the tasks the cluster had prefetched with it (plain tasks, unlike
    # the engine's, have no row to come back from), and if the victim held the cluster's queue lock
    # the watchdog restarts the whole cluster. Ten are enough to see the replacement processes.
    after_kill = _results(path, "after-kill", 10, timeout=90)

    sharing = {backend: pids for backend, pids in _sessions_by_process(first + after_kill).items() if len(pids) > 1}
    assert sharing == {}, f"PostgreSQL sessions used by more than one process: {sharing}"
    assert victim not in {row["pid"] for row in after_kill}
    assert {row["pid"] for row in after_kill} - {row["pid"] for row in first}, "no replacement worker ran a probe"

    # The server drops every session the workers hold (a restart, a failover): the next tasks get
    # fresh connections instead of failing on the dead ones.
    _terminate_sessions(clarion_system, {row["backend"] for row in after_kill})
    _enqueue(clarion_system, path, "after-terminate", 10)
    after_terminate = _results(path, "after-terminate", 10)
    assert not {row["backend"] for row in after_terminate} & {row["backend"] for row in after_kill}
