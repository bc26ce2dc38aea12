"""Readiness checks shared by ``GET /readyz`` and ``manage.py clarion_health``.

Each check returns ``None`` when it passes or a short reason (the exception's class name, never
its text: the endpoint is unauthenticated and errors may carry host names). Each is bounded: Redis
is asked with a one-second timeout, the database with ``SELECT 1``.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, connections
from django.utils import timezone

logger = logging.getLogger(__name__)

REDIS_TIMEOUT_SECONDS = 1.0
SWEEPER_NAME = "clarion.sweep"
_redis_clients: dict[str, Any] = {}
_redis_lock = threading.Lock()


def redis_client(url: str) -> Any:
    """A client with short timeouts (django-q2's own connection has none), one pool per URL."""
    import redis

    with _redis_lock:
        client = _redis_clients.get(url)
        if client is None:
            client = redis.Redis.from_url(
                url, socket_connect_timeout=REDIS_TIMEOUT_SECONDS, socket_timeout=REDIS_TIMEOUT_SECONDS
            )
            _redis_clients[url] = client
        return client


def _failure(exc: BaseException) -> str:
    return type(exc).__name__


def check_database() -> str | None:
    try:
        with connections[DEFAULT_DB_ALIAS].cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
    except Exception as exc:
        return _failure(exc)
    return None


def broker_redis_url() -> str | None:
    return settings.Q_CLUSTER.get("redis") or None


def check_broker() -> str | None:
    """Redis broker: PING. ORM broker: its table answers (it lives in the database)."""
    try:
        url = broker_redis_url()
        if url:
            redis_client(url).ping()
        else:
            from django_q.models import OrmQ

            OrmQ.objects.using(settings.Q_CLUSTER.get("orm", DEFAULT_DB_ALIAS)).exists()
    except Exception as exc:
        return _failure(exc)
    return None


def _channel_layer_config() -> dict[str, Any]:
    return dict(settings.CHANNEL_LAYERS.get("default", {}))


def check_channel_layer() -> str | None:
    """channels-redis: PING each of its hosts. channels-lite: its database answers."""
    layer = _channel_layer_config()
    try:
        config = layer.get("CONFIG", {})
        if config.get("hosts"):  # channels-redis (or a subclass of its layer)
            for host in config.get("hosts", []):
                address = host.get("address") if isinstance(host, dict) else host
                redis_client(str(address)).ping()
        elif config.get("database"):
            with connections[config["database"]].cursor() as cursor:
                cursor.execute("SELECT 1")
                cursor.fetchone()
    except Exception as exc:
        return _failure(exc)
    return None


_leaf_nodes: set[tuple[str, str]] | None = None
_migrations_applied = False


def _leaves() -> set[tuple[str, str]]:
    """The latest migration of every app, read from disk once per process."""
    global _leaf_nodes
    if _leaf_nodes is None:
        from django.db.migrations.loader import MigrationLoader

        _leaf_nodes = set(MigrationLoader(None, ignore_no_migrations=True).graph.leaf_nodes())
    return _leaf_nodes


def check_migrations() -> str | None:
    """Every app's latest migration is recorded as applied. Once true, it stays true for this process."""
    global _migrations_applied
    if _migrations_applied:
        return None
    try:
        from django.db.migrations.recorder import MigrationRecorder

        applied = MigrationRecorder(connections[DEFAULT_DB_ALIAS]).applied_migrations()
        missing = _leaves() - set(applied)
    except Exception as exc:
        return _failure(exc)
    if missing:
        return f"{len(missing)} unapplied"
    _migrations_applied = True
    return None


READINESS_CHECKS: dict[str, Callable[[], str | None]] = {
    "database": check_database,
    "broker": check_broker,
    "channel_layer": check_channel_layer,
    "migrations": check_migrations,
}


def run_checks(checks: dict[str, Callable[[], str | None]] | None = None) -> dict[str, str | None]:
    """Every check, in order (a failing database does not stop the broker from being asked)."""
    return {name: check() for name, check in (checks or READINESS_CHECKS).items()}


# --- the ticker's heartbeat: a file on this host, touched at most every few seconds ---------------

HEARTBEAT_EVERY_SECONDS = 5.0
_last_beat = 0.0


def ticker_heartbeat_path() -> Path:
    return Path(settings.VAR_DIR) / f"ticker-{socket.gethostname()}.heartbeat"


def ticker_heartbeat(now: float | None = None) -> None:
    """Called by the ticker after every successful tick; writes at most every few seconds."""
    global _last_beat
    now = time.monotonic() if now is None else now
    if now - _last_beat < HEARTBEAT_EVERY_SECONDS:
        return
    _last_beat = now
    path = ticker_heartbeat_path()
    try:
        path.touch()
    except OSError:
        logger.warning("could not write the ticker heartbeat %s", path, exc_info=True)


def ticker_heartbeat_age(now: float | None = None) -> float | None:
    """Seconds since this host's ticker last succeeded (None: never)."""
    try:
        mtime = os.stat(ticker_heartbeat_path()).st_mtime
    except FileNotFoundError:
        return None
    return max(0.0, (time.time() if now is None else now) - mtime)


def check_ticker(max_age: float) -> str | None:
    age = ticker_heartbeat_age()
    if age is None:
        return "no tick recorded on this host"
    if age > max_age:
        return f"last tick {age:.0f} s ago"
    return None


def check_sweeper(max_late_seconds: float) -> str | None:
    """The scheduler fires the minute sweeper: its schedule's next run is not long overdue."""
    try:
        from django_q.models import Schedule

        next_run = Schedule.objects.filter(name=SWEEPER_NAME).values_list("next_run", flat=True).first()
    except Exception as exc:
        return _failure(exc)
    if next_run is None:
        return "no sweeper schedule (migrations not applied?)"
    late = (timezone.now() - next_run).total_seconds()
    if late > max_late_seconds:
        return f"overdue by {late:.0f} s"
    return None
