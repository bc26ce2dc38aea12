"""Every process has its own database connection, and a dead one is never handed out.

django-q2 forks its workers from the sentinel after the sentinel used (and pooled) a connection;
these tests fork the same way, from a process whose pool holds an idle connection.
"""

from __future__ import annotations

import multiprocessing
from typing import Any

import psycopg
import pytest
from django.conf import settings
from django.db import connection

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(not settings.USING_POSTGRES, reason="connection sharing across fork is a PostgreSQL matter"),
]


def _backend_pid() -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        return int(cursor.fetchone()[0])


def _report_backend_pid(queue: Any) -> None:
    try:
        queue.put(("ok", _backend_pid()))
    except Exception as exc:  # reported to the parent, which fails the test with it
        queue.put(("error", f"{type(exc).__name__}: {exc}"))


def _fork_and_ask() -> int:
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_report_backend_pid, args=(queue,))
    child.start()
    child.join(30)
    status, value = queue.get(timeout=5)
    assert status == "ok", value
    return int(value)


def _terminate(backend_pid: int) -> None:
    params = connection.get_connection_params()
    params.pop("pool", None)
    params.pop("cursor_factory", None)
    params.pop("context", None)
    with psycopg.connect(**params, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", [backend_pid])


def _terminate_all_others() -> list[int]:
    """Terminate every other session on the test database (the pool's idle connections)."""
    params = connection.get_connection_params()
    for key in ("pool", "cursor_factory", "context"):
        params.pop(key, None)
    with psycopg.connect(**params, autocommit=True) as admin:
        rows = admin.execute(
            "SELECT pid, pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        ).fetchall()
    return [int(row[0]) for row in rows]


def _wait_until_gone(backend_pid: int) -> None:
    params = connection.get_connection_params()
    for key in ("pool", "cursor_factory", "context"):
        params.pop(key, None)
    with psycopg.connect(**params, autocommit=True) as admin:
        for _ in range(500):
            row = admin.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = %s", [backend_pid]).fetchone()
            if row is not None and row[0] == 0:
                return
            admin.execute("SELECT pg_sleep(0.01)")
    raise AssertionError(f"backend {backend_pid} still running")


def test_forked_children_open_their_own_connections_and_leave_the_parents_alone() -> None:
    parent = _backend_pid()
    connection.close()  # as django-q2 does before it forks: back into this process's pool

    children = {_fork_and_ask() for _ in range(3)}

    assert parent not in children
    assert len(children) == 3  # no two children shared one either
    # The children's exits sent nothing on the parent's socket: its session is still alive.
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = %s", [parent])
        assert cursor.fetchone()[0] == 1


def test_a_connection_the_server_dropped_is_discarded_not_reused() -> None:
    dead = _backend_pid()
    connection.close()  # idle in the pool, as between two tasks of a worker
    _terminate(dead)

    fresh = _backend_pid()  # would raise "terminating connection due to administrator command"

    assert fresh != dead


def test_a_pooled_connection_is_checked_by_its_socket_and_pinged_only_when_the_server_spoke(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from psycopg_pool import ConnectionPool

    from apps.core.db import check_pooled_connection

    # A fresh pool: connections earlier tests returned may hold what those tests left unread
    # (a notice, a late cancel), which this check rightly pings for.
    connection.close()
    connection.close_pool()  # type: ignore[attr-defined]
    _backend_pid()
    assert connection.pool._check is check_pooled_connection  # type: ignore[attr-defined]
    pings: list[object] = []
    real_ping = ConnectionPool.check_connection
    monkeypatch.setattr(
        ConnectionPool, "check_connection", staticmethod(lambda conn: (pings.append(conn), real_ping(conn)))
    )

    for _ in range(5):  # idle, healthy: taken from the pool without a round trip
        connection.close()
        _backend_pid()
    assert pings == []

    # Every idle connection of the pool dropped by the server: each one the pool then offers is
    # pinged (its socket has the server's goodbye), fails, and is replaced.
    connection.close()
    dead = _terminate_all_others()
    assert dead
    for pid in dead:
        _wait_until_gone(pid)  # each backend wrote its goodbye on its idle socket, then exited
    assert _backend_pid() not in dead
    assert 1 <= len(pings) <= len(dead)
