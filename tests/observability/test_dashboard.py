"""docs/grafana/clarion.json is built on the names /metrics serves."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from apps.observability import metrics
from apps.observability.exposition import render

DASHBOARD = Path(__file__).resolve().parents[2] / "docs" / "grafana" / "clarion.json"
ALERTS = DASHBOARD.with_name("clarion-alerts.yml")
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"), "gauge": ("",)}


def _served_series_names(text: str) -> set[str]:
    names: set[str] = set()
    for family in text_string_to_metric_families(text):
        names.update(family.name + suffix for suffix in SUFFIXES.get(family.type, ("",)))
    return names


@pytest.fixture
def served(tmp_path: Path, settings: Any, monkeypatch: Any) -> set[str]:
    from apps.observability import health

    settings.VAR_DIR = tmp_path
    monkeypatch.setattr(health, "_last_beat", 0.0)
    health.ticker_heartbeat(now=1e9)  # this host's ticker has ticked: its gauge is served
    metrics.events_accepted("dashboard", 1)
    return _served_series_names(render().decode())


@pytest.mark.django_db(databases="__all__")
def test_every_series_the_alert_rules_use_is_served(served: set[str]) -> None:
    import yaml

    rules = [rule for group in yaml.safe_load(ALERTS.read_text())["groups"] for rule in group["rules"]]
    queried = {name for rule in rules for name in re.findall(r"\bclarion_[a-z_]+", rule["expr"])}

    assert len(rules) >= 5
    assert queried <= served, queried - served
    assert "clarion_ticker_heartbeat_age_seconds" in queried


@pytest.mark.django_db(databases="__all__")
def test_every_series_the_dashboard_queries_is_served(served: set[str]) -> None:
    dashboard: dict[str, Any] = json.loads(DASHBOARD.read_text())
    expressions = [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]

    queried = {name for expr in expressions for name in re.findall(r"\bclarion_[a-z_]+", expr)}

    assert len(expressions) >= 12
    assert queried, "no clarion series in the dashboard"
    assert queried <= served, queried - served
    for required in (
        "clarion_events_total",
        "clarion_messages_total",
        "clarion_step_decisions_total",
        "clarion_delivery_seconds_bucket",
        "clarion_provider_circuit_open",
        "clarion_runs_waiting",
        "clarion_runs_due_oldest_seconds",
        "clarion_queue_depth",
        "clarion_websocket_connections",
        "clarion_http_request_duration_seconds_bucket",
    ):
        assert required in queried, required
