"""Analytics writes: folding the counted deltas into the rollups (docs/analytics.md).

Counting itself is ``apps.analytics.counters`` (every app calls it in its own transactions). The
fold moves ``Counter`` rows into ``Rollup`` sums: in one transaction it takes a batch of deltas
(deleting them), sums them by bucket, dimensions and metric and adds the sums to the rollup rows
(``INSERT … ON CONFLICT DO UPDATE SET value = rollup.value + excluded.value``), to the hour's row
and to the UTC day's (``DAY_PREFIX``). A crash in the
middle rolls the whole batch back; two folders at once take disjoint batches (``FOR UPDATE SKIP
LOCKED`` on PostgreSQL; SQLite serialises writers), and add to the rollup rows in one order
(no deadlock). Readers sum rollups and unfolded deltas in one statement, so a fold never changes
an answer.
"""

from __future__ import annotations

import logging
import time
from collections import Counter as Sums
from typing import Any

from django.db import connection, transaction

from apps.analytics.models import Counter, Rollup

logger = logging.getLogger(__name__)

FOLD_BATCH = 5000  # deltas per transaction
FOLD_EVERY_SECONDS = 5.0  # how often the worker's ticker folds
_last_fold = 0.0
_DIMS = "environment_id, bucket, workflow_key, category_key, channel, template_key, metric"
_DAY_GROUP = "1, 2, 3, 4, 5, 6, 7"
# Rollup rows whose metric starts with this hold a whole UTC day's sum (bucket: the day's start),
# written by the same fold as the hourly ones: a query over whole days reads 24 times fewer rows.
DAY_PREFIX = "day|"


def counters_fold(*, limit: int = FOLD_BATCH, batches: int = 20) -> int:
    """Fold up to ``batches`` batches of ``limit`` deltas (each batch one transaction); returns how
    many deltas were folded. Safe to run on many hosts at once, and to kill at any point."""
    folded = 0
    for _ in range(batches):
        taken = _fold_batch(limit)
        folded += taken
        if taken < limit:
            break
    return folded


def _fold_batch(limit: int) -> int:
    quote = connection.ops.quote_name
    counters, rollups = quote(Counter._meta.db_table), quote(Rollup._meta.db_table)
    upsert = (
        f"INSERT INTO {rollups} ({_DIMS}, value) {{rows}} "
        f"ON CONFLICT ({_DIMS}) DO UPDATE SET value = {rollups}.value + excluded.value"
    )
    if connection.vendor == "postgresql":
        # One statement: take, sum and add, atomically; rollup rows locked in key order.
        sql = (
            f"WITH taken AS (DELETE FROM {counters} WHERE id IN "
            f"(SELECT id FROM {counters} ORDER BY id LIMIT %s FOR UPDATE SKIP LOCKED) "
            f"RETURNING {_DIMS}, value), "
            f"added AS ("
            + upsert.format(
                rows=f"SELECT {_DIMS}, sum(value) FROM taken GROUP BY {_DIMS} HAVING sum(value) <> 0 ORDER BY {_DIMS}"
            )
            + " RETURNING 1), "
            "added_days AS ("
            + upsert.format(
                rows=f"SELECT environment_id, date_trunc('day', bucket, 'UTC'), workflow_key, category_key, "
                f"channel, template_key, %s::text || metric, sum(value) FROM taken GROUP BY {_DAY_GROUP} "
                f"HAVING sum(value) <> 0 ORDER BY {_DAY_GROUP}"
            )
            + " RETURNING 1) SELECT count(*) FROM taken"
        )
        with connection.cursor() as cursor:
            cursor.execute(sql, [limit, DAY_PREFIX])
            row = cursor.fetchone()
        return int(row[0]) if row else 0
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(
            f"DELETE FROM {counters} WHERE id IN (SELECT id FROM {counters} ORDER BY id LIMIT %s) "
            f"RETURNING {_DIMS}, value",
            [limit],
        )
        taken = cursor.fetchall()
        sums: Sums[tuple[Any, ...]] = Sums()
        for environment_id, bucket, workflow, category, channel, template, metric, value in taken:
            sums[(environment_id, bucket, workflow, category, channel, template, metric)] += value
            day = f"{str(bucket)[:10]} 00:00:00"  # SQLite keeps datetimes as text: the day's start
            sums[(environment_id, day, workflow, category, channel, template, f"{DAY_PREFIX}{metric}")] += value
        rows = [(*key, value) for key, value in sorted(sums.items(), key=lambda kv: str(kv[0])) if value]
        for start in range(0, len(rows), 100):
            part = rows[start : start + 100]
            values = ", ".join(["(%s, %s, %s, %s, %s, %s, %s, %s)"] * len(part))
            cursor.execute(upsert.format(rows=f"VALUES {values}"), [v for row in part for v in row])
        return len(taken)


def counters_fold_if_due(*, every: float = FOLD_EVERY_SECONDS) -> int:
    """Fold if ``every`` seconds passed since this process last did (the worker's ticker calls it
    each second). Folders on many hosts at once are safe; this only keeps the idle cost low."""
    global _last_fold
    if time.monotonic() - _last_fold < every:
        return 0
    _last_fold = time.monotonic()
    return counters_fold()


def counters_fold_before_prune(policy: Any, run: Any) -> None:
    """``apps.core.retention.ROLLUP_HOOKS``: fold every delta before an environment is pruned.

    Counts are written when things happen, so pruning never loses one; folding first keeps the
    delta table small. A dry run folds nothing."""
    if getattr(run, "dry_run", False) or getattr(run, "analytics_folded", False):
        return
    counters_fold(batches=1000)  # every environment's deltas: once per pruning pass
    run.analytics_folded = True
