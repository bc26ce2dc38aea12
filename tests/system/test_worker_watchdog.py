"""A wedged task cluster (workers alive but taking no task while tasks wait) is restarted by
clarion_worker's watchdog, and the waiting work is done. The wedge is made with SIGSTOP on every
process of the cluster: alive, holding nothing, doing nothing — as a worker killed while it held
the cluster's queue lock leaves the others."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from apps.workflows.watchdog import descendants
from tests.system.conftest import ROOT, ClarionSystem, WorkerControl
from tests.system.test_live_inbox import TEMPLATE, WORKFLOW

pytestmark = pytest.mark.system

WEDGE_SECONDS = 6


def _wait_for(predicate, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


def test_a_wedged_cluster_is_restarted_and_the_waiting_work_done(
    clarion_system: ClarionSystem, clarion_worker: WorkerControl, tmp_path: Path
) -> None:
    system = clarion_system
    for method, path, body in [
        ("PUT", "/api/v1/templates/comment-in-app", TEMPLATE),
        ("PUT", "/api/v1/workflows/comment-created", WORKFLOW),
        ("PUT", "/api/v1/subscribers/wedge-user", {"email": "wedge@example.com"}),
    ]:
        assert system.api(method, path, body).status_code in (200, 201)

    clarion_worker.kill()  # this test runs its own worker, with a short wedge limit
    log_path = tmp_path / "worker.log"
    with log_path.open("w") as log:
        worker = subprocess.Popen(
            [sys.executable, "manage.py", "clarion_worker"],
            cwd=ROOT,
            env={**system.env, "CLARION_WORKER_WEDGE_SECONDS": str(WEDGE_SECONDS)},
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    try:
        _wait_for(lambda: "running." in log_path.read_text(), 60, "the cluster to start")
        cluster = descendants(worker.pid)
        assert cluster, "the cluster has no processes"
        for pid in cluster:
            os.kill(pid, signal.SIGSTOP)  # alive, doing nothing: wedged

        response = system.api(
            "POST", "/api/v1/events/trigger", {"workflow": "comment-created", "to": ["wedge-user"], "payload": {}}
        )
        assert response.status_code == 202, response.text
        transaction_id = response.json()["transaction_id"]

        def delivered() -> bool:
            trace = system.api("GET", f"/api/v1/events/{transaction_id}").json()
            return bool(trace.get("runs")) and trace["runs"][0]["status"] == "completed"

        _wait_for(delivered, WEDGE_SECONDS + 60, "the event to be delivered after the restart")
        assert "task cluster wedged" in log_path.read_text()
        assert worker.poll() is None  # the same clarion_worker process carried on
    finally:
        try:
            os.killpg(worker.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        for pid in cluster if "cluster" in locals() else []:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        worker.wait(timeout=10)
