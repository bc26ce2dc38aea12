"""Sliding-window counters for throttles and frequency caps, exact under concurrency.

Each counter has a lock row (LimitScope). Acquiring locks it, counts the hits inside the window,
and adds one hit if there is room — all in one short transaction, so two workers can never both
take the last slot. A hit is keyed by what it counts (a run and step): asking again for the same
thing (a task that ran twice, a chunk re-driven after a crash) finds its hit and answers "allowed"
without counting it twice.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from django.db import IntegrityError, transaction

from apps.workflows.models import LimitHit, LimitScope


@dataclass(frozen=True)
class LimitResult:
    allowed: bool
    count: int  # hits in the window, this one included when allowed
    limit: int


def _scope(environment_id: int, key: str) -> LimitScope:
    scope = LimitScope.objects.filter(environment_id=environment_id, key=key).first()
    if scope is not None:
        return scope
    try:
        with transaction.atomic():
            return LimitScope.objects.create(environment_id=environment_id, key=key)
    except IntegrityError:  # created meanwhile by another worker
        return LimitScope.objects.get(environment_id=environment_id, key=key)


def limit_acquire(
    *, environment_id: int, key: str, limit: int, window: timedelta, hit_key: str, now: datetime
) -> LimitResult:
    """Count one hit for ``hit_key`` under ``key`` if fewer than ``limit`` happened in ``window``."""
    scope = _scope(environment_id, key)
    with transaction.atomic():
        LimitScope.objects.select_for_update().filter(pk=scope.pk).values_list("pk", flat=True).get()
        hits = LimitHit.objects.filter(scope=scope, created_at__gt=now - window)
        if LimitHit.objects.filter(scope=scope, hit_key=hit_key).exists():
            return LimitResult(allowed=True, count=hits.count(), limit=limit)
        count = hits.count()
        if count >= limit:
            return LimitResult(allowed=False, count=count, limit=limit)
        LimitHit.objects.create(scope=scope, hit_key=hit_key, created_at=now)
        return LimitResult(allowed=True, count=count + 1, limit=limit)


def limit_hits_prune(*, older_than: datetime) -> int:
    deleted, _ = LimitHit.objects.filter(created_at__lt=older_than).delete()
    return deleted
