"""/metrics: Prometheus text, access control, scrape-time gauges, request durations by route, and
aggregation across processes (PROMETHEUS_MULTIPROC_DIR)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families

from apps.observability import metrics
from apps.observability.collectors import DatabaseCollector
from apps.observability.exposition import render
from apps.workflows.models import Run
from tests.factories import IntegrationFactory, SubscriberFactory
from tests.workflows.conftest import make_workflow, published_template

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.django_db(databases="__all__")


def _families(text: str) -> dict[str, Any]:
    return {family.name: family for family in text_string_to_metric_families(text)}


def _value(families: dict[str, Any], name: str, sample_name: str | None = None, **labels: str) -> float | None:
    for sample in families[name].samples:
        if sample.name == (sample_name or name) and all(sample.labels.get(k) == v for k, v in labels.items()):
            return float(sample.value)
    return None


def test_metrics_parse_and_carry_every_documented_name(client: Client, tenant: Any) -> None:
    metrics.events_accepted("welcome", 3)
    metrics.messages_finished("email", "sent", "smtp", 2)
    metrics.step_decisions({("email", "sent", ""): 2, ("delay", "waited", ""): 1})
    metrics.delivery_observed("smtp", 0.2)
    client.get("/healthz")

    response = client.get("/metrics")

    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain; version=")
    families = _families(response.content.decode())
    for name in (
        "clarion_events",
        "clarion_messages",
        "clarion_step_decisions",
        "clarion_delivery_seconds",
        "clarion_http_request_duration_seconds",
        "clarion_websocket_connections",
        "clarion_runs_waiting",
        "clarion_runs_pending",
        "clarion_runs_due_oldest_seconds",
        "clarion_queue_depth",
        "clarion_provider_circuit_open",
    ):
        assert name in families, name
    assert _value(families, "clarion_events", "clarion_events_total", workflow="welcome") >= 3
    assert (
        _value(families, "clarion_messages", "clarion_messages_total", channel="email", status="sent", provider="smtp")
        >= 2
    )
    assert (
        _value(
            families,
            "clarion_step_decisions",
            "clarion_step_decisions_total",
            type="delay",
            decision="waited",
            reason="none",
        )
        >= 1
    )
    assert _value(families, "clarion_delivery_seconds", "clarion_delivery_seconds_count", provider="smtp") >= 1
    assert (
        _value(
            families,
            "clarion_http_request_duration_seconds",
            "clarion_http_request_duration_seconds_count",
            route="healthz",
            method="GET",
            status="200",
        )
        >= 1
    )


def test_request_duration_is_labelled_by_route_pattern_not_path(client: Client, tenant: Any) -> None:
    SubscriberFactory(environment=tenant.environment, subscriber_id="alice-1234")
    assert tenant.client.get("/api/v1/subscribers/alice-1234").status_code == 200
    tenant.client.get("/no/such/page/alice-1234")

    text = client.get("/metrics").content.decode()

    assert 'route="api/v1/subscribers/<str:subscriber_id>"' in text
    assert 'route="unmatched"' in text
    assert "alice-1234" not in text


def test_metrics_are_refused_outside_the_allowed_networks(client: Client, db: Any) -> None:
    response = client.get("/metrics", REMOTE_ADDR="203.0.113.9")
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "forbidden"


def test_metrics_with_a_token_need_it(client: Client, db: Any, settings: Any) -> None:
    settings.METRICS_TOKEN = "s3cret-token"
    settings.METRICS_ALLOWED_NETWORKS = ["0.0.0.0/0", "::/0"]

    assert client.get("/metrics", REMOTE_ADDR="203.0.113.9").status_code == 401
    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer wrong").status_code == 401
    response = client.get("/metrics", REMOTE_ADDR="203.0.113.9", HTTP_AUTHORIZATION="Bearer s3cret-token")
    assert response.status_code == 200
    assert "clarion_runs_waiting" in response.content.decode()


def test_metrics_are_answered_for_a_host_not_in_allowed_hosts(client: Client, db: Any) -> None:
    assert client.get("/metrics", HTTP_HOST="10.0.0.12:8000").status_code == 200


@pytest.fixture
def delayed_workflow(tenant: Any) -> Any:
    published_template(tenant.environment, "later-in-app", "in_app", title_en="hi", body_en="hi")
    return make_workflow(
        tenant.environment,
        "later",
        [{"id": "wait", "type": "delay", "for": "10m"}, {"id": "inbox", "type": "in_app", "template": "later-in-app"}],
    )


def _trigger(tenant: Any, capture: Any, count: int) -> None:
    for number in range(count):
        with capture(execute=True):
            response = tenant.client.post(
                "/api/v1/events/trigger", {"workflow": "later", "to": [f"u{number}"]}, format="json"
            )
        assert response.status_code == 202, response.content


def test_scrape_time_gauges_read_the_database(
    tenant: Any, delayed_workflow: Any, django_capture_on_commit_callbacks: Any, empty_task_queue: None
) -> None:
    _trigger(tenant, django_capture_on_commit_callbacks, 3)
    assert Run.objects.filter(status=Run.Status.WAITING).count() == 3
    late = timezone.now() - timedelta(seconds=90)
    Run.objects.filter(pk=Run.objects.order_by("pk").first().pk).update(resume_at=late)
    IntegrationFactory(environment=tenant.environment, circuit_open_until=timezone.now() + timedelta(seconds=30))
    IntegrationFactory(environment=tenant.environment, provider="ses", circuit_open_until=timezone.now() - timedelta(1))
    IntegrationFactory(environment=tenant.environment, provider="postmark")  # closed: absent

    families = _families(render().decode())

    assert _value(families, "clarion_runs_waiting") == 3
    assert _value(families, "clarion_runs_pending") == 0
    assert 89 <= _value(families, "clarion_runs_due_oldest_seconds") < 600
    assert _value(families, "clarion_queue_depth") == 0
    circuits = {s.labels["provider"]: s.value for s in families["clarion_provider_circuit_open"].samples}
    assert circuits == {"smtp": 1.0, "ses": 0.0}


def test_scrape_time_gauges_cost_a_fixed_number_of_queries(
    tenant: Any, delayed_workflow: Any, settings: Any, django_capture_on_commit_callbacks: Any
) -> None:
    def queries_of_one_scrape() -> int:
        with CaptureQueriesContext(connection) as captured:
            list(DatabaseCollector().collect())
        return len(captured.captured_queries)

    empty = queries_of_one_scrape()
    _trigger(tenant, django_capture_on_commit_callbacks, 20)
    assert Run.objects.filter(status=Run.Status.WAITING).count() == 20
    for provider in ("smtp", "ses", "postmark"):
        IntegrationFactory(environment=tenant.environment, provider=provider, circuit_open_until=timezone.now())

    # runs waiting + oldest due (one aggregate), runs pending, open circuits; + the ORM broker's count
    expected = 3 if settings.Q_CLUSTER.get("redis") else 4
    assert empty == queries_of_one_scrape() == expected


def test_a_failing_source_is_reported_not_raised(db: Any, settings: Any) -> None:
    settings.Q_CLUSTER = {**settings.Q_CLUSTER, "redis": "redis://127.0.0.1:8799/0"}
    settings.Q_CLUSTER.pop("orm", None)

    families = _families(render().decode())

    assert "clarion_queue_depth" not in families
    assert _value(families, "clarion_scrape_errors", source="broker") == 1
    assert _value(families, "clarion_runs_waiting") == 0


# --- several processes ------------------------------------------------------------------------------

WORKER = textwrap.dedent(
    """
    import os, sys
    from apps.observability import metrics
    workflow, events, sockets, stay = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "stay"
    metrics.events_accepted(workflow, events)
    metrics.delivery_observed("smtp", 0.3)
    for _ in range(sockets):
        metrics.websocket_opened()
    print("ready", os.getpid(), flush=True)
    if stay:
        sys.stdin.readline()
    """
)


def test_values_of_several_processes_add_up_and_exited_processes_are_folded_away(
    tmp_path: Path, monkeypatch: Any
) -> None:
    env = {"PROMETHEUS_MULTIPROC_DIR": str(tmp_path), "PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)}
    finished = subprocess.run(
        [sys.executable, "-c", WORKER, "welcome", "3", "1", "exit"], env=env, cwd=ROOT, check=True, capture_output=True
    )
    word, finished_pid = finished.stdout.split()
    assert word == b"ready"
    assert (tmp_path / f"counter_{int(finished_pid)}.db").exists()
    staying = subprocess.Popen(
        [sys.executable, "-c", WORKER, "welcome", "4", "2", "stay"],
        env=env,
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    try:
        assert staying.stdout is not None and staying.stdout.readline().split()[0] == b"ready"
        monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))

        for _scrape in range(2):  # folding the exited process's files twice would count it twice
            families = _families(render(include_database=False).decode())

            assert _value(families, "clarion_events", "clarion_events_total", workflow="welcome") == 7  # 3 + 4
            assert _value(families, "clarion_delivery_seconds", "clarion_delivery_seconds_count", provider="smtp") == 2
            assert _value(families, "clarion_websocket_connections") == 2  # the exited process's socket is gone
        leftovers = sorted(path.name for path in tmp_path.glob(f"*_{int(finished_pid)}.db"))
        assert leftovers == []  # folded into the archive files
        assert (tmp_path / "counter_archive.db").exists() and (tmp_path / "histogram_archive.db").exists()
    finally:
        assert staying.stdin is not None
        staying.stdin.close()
        staying.wait(timeout=10)

    families = _families(render(include_database=False).decode())
    assert _value(families, "clarion_events", "clarion_events_total", workflow="welcome") == 7  # counters stay
    assert _value(families, "clarion_delivery_seconds", "clarion_delivery_seconds_sum", provider="smtp") == (
        pytest.approx(0.6)
    )
    assert "clarion_websocket_connections" not in families  # no live process holds a socket
    assert sorted(path.name for path in tmp_path.glob("*.db")) == ["counter_archive.db", "histogram_archive.db"]


def test_the_hot_path_api_imports_no_app() -> None:
    import grimp

    graph = grimp.build_graph("apps", cache_dir=None)
    for module in ("apps.observability.metrics", "apps.observability.logs"):
        imported = graph.find_modules_directly_imported_by(module)
        api = {"apps.observability.metrics", "apps.observability.logs"}
        assert not [name for name in imported if name.startswith("apps.") and name not in api], module


def test_a_websocket_is_counted_down_once_and_only_if_it_was_counted() -> None:
    before = metrics.WEBSOCKETS._value.get()
    accepted, rejected = object.__new__(type("Consumer", (), {})), object.__new__(type("Consumer", (), {}))

    metrics.websocket_opened(accepted)
    metrics.websocket_opened(accepted)
    assert metrics.WEBSOCKETS._value.get() == before + 1
    metrics.websocket_closed(rejected)  # never accepted: nothing to count down
    metrics.websocket_closed(accepted)
    metrics.websocket_closed(accepted)
    assert metrics.WEBSOCKETS._value.get() == before


def test_accepted_events_are_counted_when_their_transaction_commits(
    db: Any, django_capture_on_commit_callbacks: Any
) -> None:
    from prometheus_client import REGISTRY

    def count() -> float:
        return REGISTRY.get_sample_value("clarion_events_total", {"workflow": "on-commit"}) or 0.0

    before = count()
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        metrics.events_committed(1, [("on-commit", "a"), ("on-commit", "b"), ("other", "c")])
    assert count() == before  # not before the commit
    for callback in callbacks:
        callback()
    assert count() == before + 2


def test_a_hook_that_fails_never_fails_the_work(caplog: Any) -> None:
    class Broken:
        channel = "email"

        @property
        def status(self) -> str:
            raise RuntimeError("a bug in the hook's input")

    metrics.messages_settled([Broken(), Broken()])  # does not raise

    assert "observability hook messages_settled failed" in caplog.text
