"""Database connections never cross a fork.

django-q2 forks its workers from the sentinel (at start, after a worker is killed, after a task
timeout, when a worker is recycled); ``multiprocessing`` and a few tests fork too. A forked child
inherits the parent's open sockets. With Django's psycopg pool the parent's idle pooled connection
is *in the pool object the child inherits*, so every child took the same socket: two processes
reading each other's results ("the last operation didn't produce records", rows of another query,
"can't change 'autocommit' now"). Closing that connection in the child would be as bad: it would
send a Terminate message on the parent's socket.

So in every child, right after the fork, the inherited connection wrappers and pools are dropped
without being closed, and the child opens its own connections on first use. psycopg only finishes
a libpq connection in the process that opened it, so the dropped objects never touch the
parent's sessions when they are collected.
"""

from __future__ import annotations

import logging
import os
import select
from datetime import datetime
from typing import Any

from django.db import connection

logger = logging.getLogger(__name__)

_registered = False


def discard_inherited_connections() -> None:
    """Forget every database connection and pool this process inherited (never close them)."""
    from asgiref.local import Local
    from django.db import connections

    connections._connections = Local(connections.thread_critical)  # type: ignore[attr-defined]
    try:
        from django.db.backends.postgresql.base import DatabaseWrapper
    except ImportError:  # psycopg is not installed: SQLite only
        return
    # django-stubs 6.1 does not declare the class-level pool registry Django 5.1 added
    DatabaseWrapper._connection_pools.clear()  # type: ignore[attr-defined]


def register_fork_safety() -> None:
    """Install ``discard_inherited_connections`` as an after-fork hook, once per process."""
    global _registered
    if _registered:
        return
    os.register_at_fork(after_in_child=discard_inherited_connections)
    _registered = True


def check_pooled_connection(conn: Any) -> None:
    """The check psycopg_pool runs on a pooled connection before handing it out; raise if unusable.

    psycopg_pool's own (what ``CONN_HEALTH_CHECKS`` installs) sends an empty query on every
    checkout: a round trip per web request and per worker task, ~8% of a trigger's web CPU. A
    connection the server dropped — restart, failover, ``pg_terminate_backend``, an idle timeout —
    has something waiting on its idle socket (the server's last message, or end-of-file), so the
    socket is looked at first, without blocking, and the round trip is paid only then.
    """
    from psycopg import OperationalError
    from psycopg_pool import ConnectionPool

    if conn.closed or conn.broken:
        raise OperationalError("the pooled connection is closed")
    readable, _, _ = select.select([conn.pgconn.socket], [], [], 0)
    if readable:
        ConnectionPool.check_connection(conn)


def use_socket_first_pool_check(sender: Any, connection: Any, **kwargs: Any) -> None:
    """``connection_created`` receiver: the process's pool checks with ``check_pooled_connection``.

    Django builds the pool itself and always passes its own ``check``, so it is replaced once,
    on the pool's first connection.
    """
    pool = getattr(connection, "pool", None)
    if pool is None:
        return
    from psycopg_pool import ConnectionPool

    if getattr(pool, "_check", None) is ConnectionPool.check_connection:
        pool._check = check_pooled_connection


def update_returning_ids(
    *, table: str, assignments: dict[str, Any], where: str, params: list[Any], order_by: str, limit: int
) -> list[int]:
    """``UPDATE table SET … WHERE id IN (the first ``limit`` rows matching ``where``) RETURNING id``.

    On PostgreSQL the rows are locked with SKIP LOCKED, so concurrent callers (tickers on several
    hosts) each take different rows; SQLite serialises writers. ``where`` is repeated on the outer
    UPDATE so a row another caller changed in between is not taken. Only for fixed SQL fragments
    written in this code base, never for user input.

    On PostgreSQL the batch is picked once: ``id IN (SELECT … LIMIT n FOR UPDATE SKIP LOCKED)``
    lets the planner run the locking subquery again for every row of the outer scan when its
    statistics say few rows match — as they do the moment thousands of rows become due together
    (ANALYZE saw them waiting): a nested loop taking up to n row locks per row, n² in all (a tick
    of 9,000 due digest leaders ran for minutes, holding locks that chunk commits waited on).
    ``ARRAY(subquery)`` is an InitPlan, evaluated once whatever the estimates, and the UPDATE joins
    its ids.
    """
    set_sql = ", ".join(f"{column} = %s" for column in assignments)
    set_params = [_adapt(value) for value in assignments.values()]
    where_params = [_adapt(value) for value in params]
    if connection.vendor == "postgresql":
        quoted = connection.ops.quote_name(table)
        sql = (
            f"UPDATE {quoted} SET {set_sql} FROM unnest(ARRAY("
            f"SELECT id FROM {quoted} WHERE {where} ORDER BY {order_by} LIMIT %s FOR UPDATE SKIP LOCKED"
            f")) AS picked (picked_id) WHERE {quoted}.id = picked.picked_id AND ({where}) RETURNING {quoted}.id"
        )
    else:
        sql = (
            f"UPDATE {table} SET {set_sql} WHERE id IN "
            f"(SELECT id FROM {table} WHERE {where} ORDER BY {order_by} LIMIT %s) AND ({where}) RETURNING id"
        )
    with connection.cursor() as cursor:
        # Nothing due is the common case: answer it with a read, not a write lock (SQLite has one).
        cursor.execute(f"SELECT 1 FROM {table} WHERE {where} LIMIT 1", where_params)
        if cursor.fetchone() is None:
            return []
        cursor.execute(sql, [*set_params, *where_params, limit, *where_params])
        return [int(row[0]) for row in cursor.fetchall()]


def _adapt(value: Any) -> Any:
    if isinstance(value, datetime):
        return connection.ops.adapt_datetimefield_value(value)
    return value
