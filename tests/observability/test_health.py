"""/healthz, /readyz and manage.py clarion_health."""

from __future__ import annotations

import json
import os
import time
from datetime import timedelta
from typing import Any

import pytest
from django.core.management import call_command
from django.db import connection
from django.db.migrations.recorder import MigrationRecorder
from django.test import Client
from django.utils import timezone
from django_q.models import Schedule

from apps.observability import health

# channels-lite keeps its rows in a database of its own on the embedded default: readyz asks it too.
pytestmark = pytest.mark.django_db(databases="__all__")

CLOSED_PORT_REDIS = "redis://127.0.0.1:8799/0"  # helper 7's port range; nothing listens there


def test_healthz_answers_without_touching_anything(client: Client, django_assert_num_queries: Any) -> None:
    with django_assert_num_queries(0):
        response = client.get("/healthz", HTTP_HOST="10.1.2.3:8000")  # a probe by pod IP: not in ALLOWED_HOSTS

    assert response.status_code == 200
    assert response.json() == {"status": "ok"}
    assert "Set-Cookie" not in response.headers
    assert response["Cache-Control"].startswith("max-age=0")


def test_healthz_is_not_redirected_to_https_nor_throttled(client: Client, settings: Any) -> None:
    settings.SECURE_SSL_REDIRECT = True
    for _ in range(50):
        assert client.get("/healthz").status_code == 200


def test_readyz_names_every_check_when_all_pass(client: Client, migrations_applied: None) -> None:
    response = client.get("/readyz", HTTP_HOST="10.1.2.3")

    assert response.status_code == 200, response.content
    assert response.json() == {
        "status": "ok",
        "checks": {"database": "ok", "broker": "ok", "channel_layer": "ok", "migrations": "ok"},
    }


def test_readyz_is_503_naming_the_broker_when_redis_is_unreachable(
    client: Client, migrations_applied: None, settings: Any
) -> None:
    settings.Q_CLUSTER = {**settings.Q_CLUSTER, "redis": CLOSED_PORT_REDIS}
    settings.Q_CLUSTER.pop("orm", None)

    response = client.get("/readyz")

    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "unavailable"
    assert body["failing"] == ["broker"]
    assert body["checks"]["broker"] == "ConnectionError"
    assert body["checks"]["database"] == "ok"
    assert "127.0.0.1" not in response.content.decode()  # the reason names the failure, not the host


def test_readyz_is_503_naming_the_channel_layer_when_its_redis_is_unreachable(
    client: Client, migrations_applied: None, settings: Any
) -> None:
    settings.CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {"hosts": [{"address": CLOSED_PORT_REDIS}]},
        }
    }

    response = client.get("/readyz")

    assert response.status_code == 503
    assert response.json()["failing"] == ["channel_layer"]


def test_readyz_is_503_naming_migrations_until_they_are_applied(client: Client, migrations_applied: None) -> None:
    MigrationRecorder(connection).migration_qs.filter(app="workflows").order_by("-name")[:1].get().delete()

    response = client.get("/readyz")

    assert response.status_code == 503
    assert response.json()["failing"] == ["migrations"]
    assert response.json()["checks"]["migrations"] == "1 unapplied"


def test_readyz_costs_a_fixed_number_of_queries_once_migrations_passed(
    client: Client, migrations_applied: None, django_assert_max_num_queries: Any
) -> None:
    assert client.get("/readyz").status_code == 200
    with django_assert_max_num_queries(3):  # SELECT 1, the ORM broker's table, channels-lite's SELECT 1
        assert client.get("/readyz").status_code == 200


def test_readyz_is_served_to_a_host_not_in_allowed_hosts_and_over_plain_http(
    client: Client, migrations_applied: None, settings: Any
) -> None:
    settings.SECURE_SSL_REDIRECT = True
    assert client.get("/readyz", HTTP_HOST="10.9.8.7:8000").status_code == 200


@pytest.mark.services
def test_readyz_on_postgresql_and_redis(client: Client, migrations_applied: None, settings: Any) -> None:
    assert settings.Q_CLUSTER.get("redis")
    response = client.get("/readyz")
    assert response.status_code == 200, response.content


# --- manage.py clarion_health ---------------------------------------------------------------------


@pytest.fixture
def var_dir(tmp_path: Any, settings: Any) -> Any:
    settings.VAR_DIR = tmp_path
    return tmp_path


@pytest.fixture
def sweeper_scheduled(db: Any) -> Schedule:
    return Schedule.objects.create(
        name=health.SWEEPER_NAME,
        func="apps.workflows.tasks.sweep",
        schedule_type=Schedule.MINUTES,
        minutes=1,
        next_run=timezone.now(),
    )


def _health(capsys: Any, *args: str) -> tuple[int, dict[str, Any]]:
    try:
        call_command("clarion_health", "--json", *args)
        code = 0
    except SystemExit as exit_:
        code = int(exit_.code or 0)
    return code, json.loads(capsys.readouterr().out)


def test_clarion_health_passes_with_a_fresh_ticker_and_a_scheduled_sweeper(
    capsys: Any, migrations_applied: None, var_dir: Any, sweeper_scheduled: Schedule, monkeypatch: Any
) -> None:
    monkeypatch.setattr(health, "_last_beat", 0.0)
    health.ticker_heartbeat(now=1e9)

    code, result = _health(capsys)

    assert code == 0, result
    assert result["failing"] == []
    assert set(result["checks"]) == {"database", "broker", "channel_layer", "migrations", "ticker", "sweeper"}


def test_clarion_health_fails_on_a_stale_ticker(
    capsys: Any, migrations_applied: None, var_dir: Any, sweeper_scheduled: Schedule, monkeypatch: Any
) -> None:
    monkeypatch.setattr(health, "_last_beat", 0.0)
    health.ticker_heartbeat(now=1e9)
    stale = time.time() - 120
    os.utime(health.ticker_heartbeat_path(), (stale, stale))

    code, result = _health(capsys)
    assert code == 1
    assert result["failing"] == ["ticker"]
    assert result["checks"]["ticker"].startswith("last tick 12")

    code, result = _health(capsys, "--ticker-max-age", "300")
    assert code == 0, result
    code, result = _health(capsys, "--no-ticker")
    assert code == 0 and "ticker" not in result["checks"]


def test_clarion_health_fails_without_any_tick_and_when_the_sweeper_is_overdue(
    capsys: Any, migrations_applied: None, var_dir: Any, sweeper_scheduled: Schedule
) -> None:
    Schedule.objects.filter(pk=sweeper_scheduled.pk).update(next_run=timezone.now() - timedelta(minutes=10))

    code, result = _health(capsys)

    assert code == 1
    assert result["failing"] == ["ticker", "sweeper"]
    assert result["checks"]["ticker"] == "no tick recorded on this host"


def test_clarion_health_fails_naming_the_broker(
    capsys: Any, migrations_applied: None, var_dir: Any, sweeper_scheduled: Schedule, settings: Any
) -> None:
    settings.Q_CLUSTER = {**settings.Q_CLUSTER, "redis": CLOSED_PORT_REDIS}
    settings.Q_CLUSTER.pop("orm", None)

    code, result = _health(capsys, "--no-ticker")

    assert code == 1
    assert result["failing"] == ["broker"]


def test_the_ticker_heartbeat_writes_at_most_every_few_seconds(var_dir: Any, monkeypatch: Any) -> None:
    monkeypatch.setattr(health, "_last_beat", 0.0)
    health.ticker_heartbeat(now=1000.0)
    path = health.ticker_heartbeat_path()
    os.utime(path, (1, 1))

    health.ticker_heartbeat(now=1000.0 + health.HEARTBEAT_EVERY_SECONDS - 0.1)
    assert path.stat().st_mtime == 1
    health.ticker_heartbeat(now=1000.0 + health.HEARTBEAT_EVERY_SECONDS)
    assert path.stat().st_mtime > 1


def test_a_failing_readyz_logs_one_warning_a_minute_and_no_request_error(
    client: Client, migrations_applied: None, settings: Any, caplog: Any, monkeypatch: Any
) -> None:
    from apps.observability import views

    monkeypatch.setattr(views, "_last_failure_log", 0.0)
    settings.Q_CLUSTER = {**settings.Q_CLUSTER, "redis": CLOSED_PORT_REDIS}
    settings.Q_CLUSTER.pop("orm", None)

    for _ in range(3):
        assert client.get("/readyz").status_code == 503

    warnings = [r for r in caplog.records if r.name == "apps.observability.views"]
    assert [r.getMessage() for r in warnings] == ["not ready: broker (ConnectionError)"]
    assert not [r for r in caplog.records if r.name == "django.request"]
