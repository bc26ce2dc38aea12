"""Baselines shared by the benchmarks: the cheapest way to write the same rows.

``copy_rows(database_url, table, columns, rows)``: psycopg ``COPY … FROM STDIN`` of the given rows
in one transaction, the fastest way PostgreSQL takes rows from a client. The fan-out benchmark
(``bench/fanout.py``) copies exactly the rows its design writes per recipient (the "≥ 0.6× COPY"
row); the caller builds the rows before timing, so only the COPY itself is timed.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from typing import Any


def copy_rows(
    database_url: str,
    table: str,
    columns: Sequence[str],
    rows: Iterable[Sequence[Any]],
    *,
    connection: Any = None,
) -> dict[str, float]:
    """COPY ``rows`` into ``table`` (``columns`` in order) and commit; ``{"rows", "seconds", "rows_per_s"}``.

    Pass an open psycopg ``connection`` to reuse it (it is committed, not closed), else one is
    opened from ``database_url`` (a ``postgres://`` URL: COPY is PostgreSQL's).
    """
    import psycopg
    from psycopg import sql

    statement = sql.SQL("COPY {} ({}) FROM STDIN").format(
        sql.Identifier(table), sql.SQL(", ").join(sql.Identifier(c) for c in columns)
    )
    own = connection is None
    conn = connection or psycopg.connect(database_url, connect_timeout=10)
    try:
        count = 0
        started = time.perf_counter()
        with conn.cursor() as cursor, cursor.copy(statement) as copy:
            for row in rows:
                copy.write_row(row)
                count += 1
        conn.commit()
        seconds = time.perf_counter() - started
    finally:
        if own:
            conn.close()
    return {"rows": count, "seconds": round(seconds, 4), "rows_per_s": round(count / seconds, 1) if seconds else 0.0}
