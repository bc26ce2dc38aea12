"""``core.db.update_returning_ids``: the claim every ticker, worker and sweeper uses to take a
batch of rows once (events to fan out, due runs, messages to re-drive).

On PostgreSQL the batch must be picked once whatever the planner's statistics say: with
``id IN (SELECT … LIMIT n FOR UPDATE SKIP LOCKED)`` and statistics taken while no row matched, the
planner re-ran the locking subquery for every row of the outer scan (n² row locks; minutes for
9,000 due digest leaders)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from apps.core.db import update_returning_ids
from apps.core.models import DeferredTask

pytestmark = pytest.mark.django_db

TABLE = DeferredTask._meta.db_table


def _take(limit: int, now: object) -> list[int]:
    return update_returning_ids(
        table=TABLE,
        assignments={"attempts": 1},
        where="attempts = %s AND next_try_at <= %s",
        params=[0, now],
        order_by="next_try_at, id",
        limit=limit,
    )


def _tasks(count: int, due: bool) -> list[DeferredTask]:
    now = timezone.now()
    at = now - timedelta(minutes=1) if due else now + timedelta(days=1)
    return DeferredTask.objects.bulk_create(
        DeferredTask(func="apps.x", next_try_at=at + timedelta(microseconds=i)) for i in range(count)
    )


def test_takes_the_first_rows_in_order_once_and_leaves_the_rest():
    tasks = _tasks(7, due=True)
    later = _tasks(2, due=False)
    now = timezone.now()

    first = _take(3, now)
    assert sorted(first) == [t.pk for t in tasks[:3]]
    second = _take(10, now)
    assert sorted(second) == [t.pk for t in tasks[3:]]
    assert _take(10, now) == []
    assert set(DeferredTask.objects.filter(attempts=0).values_list("pk", flat=True)) == {t.pk for t in later}


@pytest.mark.skipif("connection.vendor != 'postgresql'", reason="PostgreSQL's planner")
def test_the_batch_is_locked_once_even_with_statistics_from_before_the_rows_came_due():
    tasks = _tasks(3000, due=False)
    with connection.cursor() as cursor:
        cursor.execute(f"ANALYZE {TABLE}")  # nothing matches: the planner expects ~0 due rows
    DeferredTask.objects.filter(pk__in=[t.pk for t in tasks]).update(next_try_at=timezone.now() - timedelta(minutes=1))
    now = timezone.now()

    with transaction.atomic(), CaptureQueriesContext(connection) as captured:
        _take(500, now)
        transaction.set_rollback(True)
    update = next(q["sql"] for q in captured.captured_queries if q["sql"].startswith("UPDATE"))
    with connection.cursor() as cursor:
        cursor.execute(f"EXPLAIN (FORMAT JSON) {update}")
        plan = cursor.fetchone()[0][0]["Plan"]
    lock_rows = list(_nodes(plan, "LockRows"))
    assert len(lock_rows) == 1
    assert lock_rows[0][1] == "InitPlan"  # evaluated once, not per row of the outer scan

    taken = _take(500, now)
    assert len(taken) == 500
    assert DeferredTask.objects.filter(attempts=1).count() == 500


def _nodes(plan: dict, node_type: str, relation: str | None = None):
    if plan.get("Node Type") == node_type:
        yield plan, relation
    for child in plan.get("Plans", []):
        yield from _nodes(child, node_type, child.get("Parent Relationship") if relation is None else relation)
