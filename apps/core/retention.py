"""Retention: delete what each environment no longer keeps, in bounded batches, on a schedule.

Each environment says how long it keeps finished rows (``Environment.retention_*_days``, read
through ``apps.tenancy.retention``). Every few minutes the django-q2 schedule ``clarion.prune``
(installed by a migration, like the sweeper) calls :func:`prune_scheduled`, which runs each app's
pruner for each environment within a time budget. ``manage.py clarion_prune`` does the same by
hand, or counts what would go (``--dry-run``).

Each app prunes only its own tables, in its own ``retention.py``. This module knows them only by
dotted path (core imports no other app), in the order that keeps foreign keys valid: the rows that
point at others go first (inbox rows let go of their messages, messages of their runs, runs of
their events). A pruner never touches live work — runs that are pending, running or waiting, open
or closing digests, messages that are not settled — and takes its rows in batches of at most
``batch_size`` per statement, each batch in a short transaction that skips rows another
transaction holds (``FOR UPDATE SKIP LOCKED`` on PostgreSQL), so the engine never waits for it.
What a tick leaves undone (budget spent) the next one continues.

Analytics rollups (issue #16) are kept: they are not listed below. An app that rolls raw rows up
must do so before they are pruned: list its function in ``ROLLUP_HOOKS``; each is called with
the environment's policy and the run before any pruner of that environment, and may raise to
hold the environment's pruning back until its rollups have caught up.
"""

from __future__ import annotations

import logging
import random
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.core.exceptions import EmptyResultSet
from django.db import DatabaseError, connection, models, transaction
from django.utils import timezone
from django.utils.module_loading import import_string

logger = logging.getLogger(__name__)

SCHEDULE_NAME = "clarion.prune"
SCHEDULE_MINUTES = 5
DEFAULT_BATCH_SIZE = 1000
DEFAULT_BUDGET_SECONDS = 20.0

# Where the environments' policies come from (tenancy imports core, not the other way round).
POLICY_SOURCE = "apps.tenancy.retention.retention_policies"
# Called before any pruner of an environment: rollups of rows about to be pruned (issue #16).
ROLLUP_HOOKS: list[str] = ["apps.analytics.services.counters_fold_before_prune"]
# Children before parents: each one deletes only rows nothing that runs after it still needs.
PRUNERS: list[str] = [
    "apps.inbox.retention.prune",  # archived/deleted inbox rows; detaches rows from prunable messages
    "apps.delivery.retention.prune",  # attempts, callbacks, settled messages (then their runs can go)
    "apps.workflows.retention.prune",  # closed digests, finished runs without messages, their step runs
    "apps.events.retention.prune",  # finished events without runs, old idempotency records
]


@dataclass(frozen=True)
class RetentionPolicy:
    """How long one environment keeps finished rows, in days (0: forever)."""

    environment_id: int
    environment_slug: str
    trace_days: int = 90
    messages_days: int = 90
    delivery_days: int = 30
    inbox_days: int = 180

    @staticmethod
    def cutoff(days: int, now: datetime) -> datetime | None:
        """Rows older than this go; None when the period is 0 (kept forever)."""
        return now - timedelta(days=days) if days > 0 else None


@dataclass
class PruneRun:
    """One pass: its clock, its limits, and what it deleted (or, dry, would delete)."""

    now: datetime = field(default_factory=timezone.now)
    batch_size: int = DEFAULT_BATCH_SIZE
    budget_seconds: float = DEFAULT_BUDGET_SECONDS
    dry_run: bool = False
    started: float = field(default_factory=time.monotonic)
    # "<environment slug>:<app_label.Model>" -> rows deleted (dry run: rows that would be deleted)
    counts: Counter[str] = field(default_factory=Counter)
    # one entry per DELETE/UPDATE statement: (table, rows it changed)
    statements: list[tuple[str, int]] = field(default_factory=list)
    environment: str = ""
    finished: bool = True  # False when the budget ran out before everything due was pruned
    failed: list[str] = field(default_factory=list)  # environments whose pruning raised a database error

    def out_of_time(self) -> bool:
        if time.monotonic() - self.started >= self.budget_seconds:
            self.finished = False
            return True
        return False

    def count(self, model: type[models.Model], rows: int) -> None:
        if rows:
            self.counts[f"{self.environment}:{model._meta.label}"] += rows

    def totals(self) -> dict[str, int]:
        """Rows per model over every environment."""
        result: Counter[str] = Counter()
        for key, rows in self.counts.items():
            result[key.split(":", 1)[1]] += rows
        return dict(sorted(result.items()))


def _limited_pk_sql(queryset: models.QuerySet[Any], limit: int) -> tuple[str, tuple[Any, ...]] | None:
    """``SELECT pk … LIMIT n`` of ``queryset``; None when it can match nothing (e.g. ``.none()``)."""
    inner = queryset.order_by().values("pk")[:limit]
    try:
        sql, params = inner.query.sql_with_params()
    except EmptyResultSet:
        return None
    return sql, params


def _execute(run: PruneRun, model: type[models.Model], sql: str, params: Iterable[Any]) -> int:
    with connection.cursor() as cursor:
        cursor.execute(sql, list(params))
        rows = max(cursor.rowcount, 0)
    run.statements.append((model._meta.db_table, rows))
    return rows


def delete_all(run: PruneRun, queryset: models.QuerySet[Any]) -> int:
    """Delete every row of ``queryset``, at most ``batch_size`` rows per statement.

    For the children of a batch already taken (their number is bounded by the batch): it does not
    stop at the time budget, so the parents can go in the same transaction. No signals, no
    Python-side cascades: the caller deletes children first.
    """
    model = queryset.model
    table = connection.ops.quote_name(model._meta.db_table)
    pk = connection.ops.quote_name(model._meta.pk.column)
    total = 0
    while True:
        limited = _limited_pk_sql(queryset, run.batch_size)
        if limited is None:
            break
        inner, params = limited
        rows = _execute(run, model, f"DELETE FROM {table} WHERE {pk} IN ({inner})", params)
        total += rows
        if rows < run.batch_size:
            break
    run.count(model, total)
    return total


def delete_ids(run: PruneRun, model: type[models.Model], ids: list[Any]) -> int:
    """Delete these rows (at most one batch of them) in one statement."""
    table = connection.ops.quote_name(model._meta.db_table)
    pk = connection.ops.quote_name(str(model._meta.pk.column))
    placeholders = ", ".join(["%s"] * len(ids))
    rows = _execute(run, model, f"DELETE FROM {table} WHERE {pk} IN ({placeholders})", ids)
    run.count(model, rows)
    return rows


def clear_all(run: PruneRun, queryset: models.QuerySet[Any], column: str, *, within_budget: bool = False) -> int:
    """Set ``column`` to NULL on every row of ``queryset`` that has it set, ``batch_size`` rows per
    statement; ``within_budget``: stop once the time budget is spent (outside a batch's transaction)."""
    model = queryset.model
    table = connection.ops.quote_name(model._meta.db_table)
    pk = connection.ops.quote_name(model._meta.pk.column)
    quoted = connection.ops.quote_name(model._meta.get_field(column).column)
    queryset = queryset.filter(**{f"{column}__isnull": False})
    total = 0
    while True:
        limited = _limited_pk_sql(queryset, run.batch_size)
        if limited is None:
            break
        inner, params = limited
        rows = _execute(run, model, f"UPDATE {table} SET {quoted} = NULL WHERE {pk} IN ({inner})", params)
        total += rows
        if rows < run.batch_size or (within_budget and run.out_of_time()):
            break
    return total


def take_batch(run: PruneRun, queryset: models.QuerySet[Any]) -> list[Any]:
    """Lock and return up to ``batch_size`` primary keys of ``queryset``, skipping locked rows.

    Call inside ``transaction.atomic()``; on SQLite (no row locks) it is a plain SELECT.
    """
    if connection.features.has_select_for_update_skip_locked:
        queryset = queryset.select_for_update(skip_locked=True, of=("self",))
    return list(queryset.order_by("pk").values_list("pk", flat=True)[: run.batch_size])


def old_rows_bound(model: type[models.Model], field: str, cutoff: datetime) -> Any | None:
    """The first primary key whose ``field`` is not older than ``cutoff`` (None: every row is).

    Rows are numbered in the order they were written, so the rows old enough to prune sit below
    it: filtering candidates on ``pk < bound`` keeps each batch's scan within the old end of the
    primary-key index instead of the whole table, also on a table with no index on ``field``.
    The walk to the bound reads the old rows once and stops at the first young one.
    """
    return (
        model._default_manager.filter(**{f"{field}__gte": cutoff}).order_by("pk").values_list("pk", flat=True).first()
    )


def prune_batches(
    run: PruneRun,
    candidates: models.QuerySet[Any],
    delete_children: Callable[[list[Any]], object] | None = None,
    *,
    written_before: tuple[str, datetime] | None = None,
) -> int:
    """Delete ``candidates`` batch by batch (each its own short transaction) until none are left
    or the budget is spent; ``delete_children(ids)`` runs first in each batch's transaction.

    ``written_before=(field, cutoff)``: every candidate was written before ``cutoff`` (``field``
    is its creation time), which bounds the scan (``old_rows_bound``); rows written in the same
    instant as the bound may wait for the next tick. Dry: counts the candidates, deletes nothing.
    """
    model = candidates.model
    if written_before is not None:
        bound = old_rows_bound(model, *written_before)
        if bound is not None:
            candidates = candidates.filter(pk__lt=bound)
    if run.dry_run:
        run.count(model, candidates.count())
        return 0
    total = 0
    while not run.out_of_time():
        with transaction.atomic():
            ids = take_batch(run, candidates)
            if not ids:
                break
            if delete_children is not None:
                delete_children(ids)
            total += delete_ids(run, model, ids)
        if len(ids) < run.batch_size:
            break
    return total


def _policies(environments: list[str] | None) -> list[RetentionPolicy]:
    source: Callable[..., list[RetentionPolicy]] = import_string(POLICY_SOURCE)
    return source(slugs=environments)


def prune(
    *,
    environments: list[str] | None = None,
    dry_run: bool = False,
    batch_size: int = DEFAULT_BATCH_SIZE,
    budget_seconds: float = DEFAULT_BUDGET_SECONDS,
    now: datetime | None = None,
) -> PruneRun:
    """One pass over the environments (all, or those slugs), pruners in ``PRUNERS`` order."""
    run = PruneRun(now=now or timezone.now(), batch_size=batch_size, budget_seconds=budget_seconds, dry_run=dry_run)
    policies = _policies(environments)
    # A tick that runs out of budget should not always starve the same environments.
    random.shuffle(policies)
    hooks = [import_string(path) for path in ROLLUP_HOOKS]
    pruners = [import_string(path) for path in PRUNERS]
    for policy in policies:
        run.environment = policy.environment_slug
        try:
            for hook in hooks:
                hook(policy, run)
        except Exception:
            logger.exception("retention: a rollup hook failed; environment %s not pruned", policy.environment_slug)
            continue
        for pruner in pruners:
            if run.out_of_time():
                return run
            try:
                pruner(policy, run)
            except DatabaseError:
                # One environment's failure (a lost connection, a constraint) must not stop the
                # others; the next tick tries it again.
                logger.exception("retention: %s failed for environment %s", pruner.__module__, policy.environment_slug)
                run.failed.append(policy.environment_slug)
                break
    return run


def prune_scheduled() -> dict[str, int]:
    """The ``clarion.prune`` schedule's task. Quiet when there was nothing to delete."""
    run = prune()
    totals = run.totals()
    if totals:
        logger.info(
            "retention pruned %s in %d statement(s)%s",
            ", ".join(f"{rows} {label}" for label, rows in totals.items()),
            len(run.statements),
            "" if run.finished else " (budget spent; the next tick continues)",
        )
    return totals
