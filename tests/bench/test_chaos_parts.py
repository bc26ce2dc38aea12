"""The fault suite's parts that decide its verdict, without running the suite (``make chaos`` does).

* the fake ESP answers and records each mode, and finds Clarion's message id in what Anymail's
  Postmark backend really sends;
* the load generator's schedule is decided by its seed;
* the verdict fails on a loss, a committed 5xx, a duplicate outside the policy, an unseen circuit.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from apps.delivery.services import message_send_now
from bench.chaos.__main__ import failures_of, render
from bench.chaos.fake_esp import Recorder, State, make_handler
from bench.chaos.loadgen import build_triggers
from tests.factories import IntegrationFactory


@pytest.fixture
def fake_esp(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    log = tmp_path / "esp.sqlite3"
    server = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(State(), Recorder(log, "primary")))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", log
    finally:
        server.shutdown()
        server.server_close()


def _rows(log: Path) -> list[tuple[str, str, int, str]]:
    with sqlite3.connect(log) as db:
        return db.execute("SELECT mode, outcome, status, message_id FROM requests ORDER BY id").fetchall()


def test_fake_esp_modes(fake_esp: tuple[str, Path]) -> None:
    url, log = fake_esp
    body = {"To": "a@example.test", "Headers": [{"Name": "X-Clarion-Message-Id", "Value": "41"}]}
    with httpx.Client(base_url=url, timeout=5) as client:
        ok = client.post("/email", json=body)
        assert ok.status_code == 200 and ok.json()["ErrorCode"] == 0 and ok.json()["MessageID"]
        client.post("/_chaos/mode", json={"mode": "error"}).raise_for_status()
        assert client.post("/email", json=body).status_code == 500
        client.post("/_chaos/mode", json={"mode": "ratelimit", "retry_after": 7}).raise_for_status()
        limited = client.post("/email", json={"To": "a@example.test", "Metadata": {"clarion_message_id": "42"}})
        assert (limited.status_code, limited.headers["Retry-After"]) == (429, "7")
        client.post("/_chaos/mode", json={"mode": "hang", "hang_seconds": 0.05}).raise_for_status()
        assert client.post("/email", json=body).status_code == 200
        assert client.post("/_chaos/mode", json={"mode": "sideways"}).status_code == 400

    assert _rows(log) == [
        ("ok", "accepted", 200, "41"),
        ("error", "rejected_500", 500, "41"),
        ("ratelimit", "rejected_429", 429, "42"),
        ("hang", "accepted_late", 200, "41"),
    ]


@pytest.mark.django_db
def test_fake_esp_sees_the_message_id_anymail_sends(tenant: Any, fake_esp: tuple[str, Path]) -> None:
    url, log = fake_esp
    IntegrationFactory(
        environment=tenant.environment,
        provider="postmark",
        credentials={"server_token": "chaos", "api_url": f"{url}/"},
        settings={"from_email": "chaos@example.test"},
    )
    message = message_send_now(
        environment_id=tenant.environment.pk, channel="email", recipient="a@example.test", subject="Hi", body="<p>x</p>"
    )
    assert message.status == "sent", message.error
    assert _rows(log) == [("ok", "accepted", 200, str(message.pk))]


def test_the_load_is_decided_by_the_seed() -> None:
    plan = {
        "seed": 7,
        "count": 40,
        "rate": 4.0,
        "recipients_per_trigger": 3,
        "subscribers": [f"s{n}" for n in range(10)],
        "workflows": [["updates", 3], ["security", 1]],
        "prefix": "t",
    }
    first, again = build_triggers(plan), build_triggers(plan)
    assert first == again
    assert [t["txid"] for t in first[:2]] == ["t-000000", "t-000001"]
    assert first[-1]["offset"] == pytest.approx(39 / 4.0)
    assert all(len(set(t["to"])) == 3 for t in first)
    assert {t["workflow"] for t in first} == {"updates", "security"}


def _result(**changes: Any) -> dict[str, Any]:
    result: dict[str, Any] = {
        "mode": "services",
        "profile": "short",
        "faults": True,
        "worker_command": "clarion_worker",
        "plan": {"triggers": 10, "recipients_per_trigger": 2, "rate": 1.0},
        "load_seconds": 10.0,
        "setup_seconds": 5.0,
        "sent": 10,
        "sent_notifications": 20,
        "expected": 20,
        "db_only_events": 0,
        "delivered_in_app": 20,
        "emails_received": 21,
        "emails_received_by": {"primary": 21},
        "esp_requests_by_outcome": {},
        "attempts_by_integration": {},
        "email_status": {"sent": 20},
        "state_at_end": {},
        "client_attempts": {"202": 10},
        "client_failed_triggers": 0,
        "kills": {},
        "lost": 0,
        "lost_where": {},
        "lost_triggered_between": {},
        "lost_samples": [],
        "ingest_lost_count": 0,
        "duplicated_in_app": 0,
        "duplicated_email": 1,
        "duplicated_email_allowed": 1,
        "duplicated_email_violations": 0,
        "duplicate_patterns": {"primary:accepted_late → primary:accepted": 1},
        "in_doubt_status_exists": True,
        "in_doubt": 0,
        "in_doubt_ever": 1,
        "in_doubt_not_received": 0,
        "in_doubt_by_policy": {"resends: sent": 1},
        "client_5xx": 2,
        "client_5xx_accepted": 0,
        "client_5xx_accepted_samples": [],
        "circuit": {"opened": 1, "probed": 2, "closed": 1, "notes": []},
        "drained": True,
        "drain_seconds": 3.2,
        "still_moving_per_s": 0.0,
        "evidence": {},
    }
    result.update(changes)
    return result


def test_verdict() -> None:
    assert failures_of(_result()) == []
    assert "verdict: PASS" in render(_result())
    assert "| sent " in render(_result()) and "1 (1 allowed)" in render(_result())
    problems = failures_of(
        _result(
            lost=3,
            lost_where={"run pending step 0": 3},
            client_5xx_accepted=1,
            client_5xx_accepted_samples=["t-1"],
            duplicated_email_violations=1,
            circuit={"opened": 1, "probed": 0, "closed": 0, "notes": []},
            drained=False,
            profile="full",
        )
    )
    assert len(problems) == 5
    assert failures_of(_result(faults=False, circuit={"opened": 0, "probed": 0, "closed": 0, "notes": []})) == []
    # the short profile requires the circuit to open; the full one also to close
    not_closed = {"opened": 1, "probed": 2, "closed": 0, "notes": []}
    assert failures_of(_result(profile="short", circuit=not_closed)) == []
    assert len(failures_of(_result(profile="full", circuit=not_closed))) == 1
    assert len(failures_of(_result(profile="short", circuit={**not_closed, "opened": 0}))) == 1
