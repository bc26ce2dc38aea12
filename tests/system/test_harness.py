"""The harness itself: processes start, answer, and the worker can be killed and restarted."""

from __future__ import annotations

import pytest

from tests.system.conftest import SYSTEM_DB_NAME, SYSTEM_REDIS_DB, ClarionSystem, WorkerControl

pytestmark = pytest.mark.system


def test_web_serves_the_schema_and_rejects_anonymous_api_calls(clarion_system: ClarionSystem) -> None:
    schema = clarion_system.api("GET", "/api/schema/", auth=False)
    assert schema.status_code == 200
    assert "openapi" in schema.text

    anonymous = clarion_system.api("GET", "/api/v1/subscribers/nobody", auth=False)
    assert anonymous.status_code in (401, 403)
    assert "error" in anonymous.json()


def test_processes_use_the_prepared_installation(clarion_system: ClarionSystem) -> None:
    assert clarion_system.secret_key.startswith("sk_")
    assert clarion_system.publishable_key.startswith("pk_")
    assert clarion_system.web.alive() and clarion_system.worker.alive()
    if clarion_system.mode == "embedded":
        assert (clarion_system.var_dir / "clarion.sqlite3").exists()
        assert (clarion_system.var_dir / "channels.sqlite3").exists()
    else:
        assert clarion_system.env["DATABASE_URL"].endswith(f"/{SYSTEM_DB_NAME}")
        assert clarion_system.env["REDIS_URL"].endswith(f"/{SYSTEM_REDIS_DB}")


def test_worker_can_be_killed_and_restarted(clarion_system: ClarionSystem, clarion_worker: WorkerControl) -> None:
    first_pid = clarion_system.worker.pid
    clarion_worker.kill()
    assert not clarion_worker.alive()
    clarion_worker.start()
    assert clarion_worker.alive()
    assert clarion_system.worker.pid != first_pid
    assert "running." in clarion_system.worker.output(since_start=True, tail=None)
