"""The worker host's exporter (clarion_worker with CLARION_METRICS_PORT): same text, same access rules."""

from __future__ import annotations

import urllib.error
import urllib.request
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from apps.observability import metrics
from apps.observability.exporter import exporter_start

PORT = 8701  # helper 7's range


@pytest.fixture
def exporter(transactional_db: Any) -> Any:
    server = exporter_start(port=PORT, address="127.0.0.1")
    assert server is not None
    yield server
    server.shutdown()
    server.server_close()


def test_the_exporter_serves_the_metrics_text(exporter: Any) -> None:
    metrics.events_accepted("exported", 2)

    with urllib.request.urlopen(f"http://127.0.0.1:{PORT}/metrics", timeout=10) as response:
        assert response.status == 200
        text = response.read().decode()

    names = {family.name for family in text_string_to_metric_families(text)}
    assert {"clarion_events", "clarion_runs_waiting", "clarion_queue_depth"} <= names
    assert 'clarion_events_total{workflow="exported"}' in text


def test_the_exporter_wants_the_token_when_one_is_set(exporter: Any, settings: Any) -> None:
    settings.METRICS_TOKEN = "worker-token"

    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(f"http://127.0.0.1:{PORT}/metrics", timeout=10)
    assert refused.value.code == 401

    request = urllib.request.Request(
        f"http://127.0.0.1:{PORT}/metrics", headers={"Authorization": "Bearer worker-token"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200


def test_a_taken_port_leaves_the_worker_running_without_an_exporter(exporter: Any) -> None:
    assert exporter_start(port=PORT, address="127.0.0.1") is None


def test_no_port_no_exporter(settings: Any) -> None:
    settings.METRICS_WORKER_PORT = 0
    assert exporter_start() is None
