"""The fan-out lease on an event: which worker is creating its runs, and until when.

Written only here (the events app owns the Event table). A worker claims the event before it fans
it out and renews the lease per chunk; if the worker dies, the lease runs out and the ticker hands
the event to another worker, which resumes the fan-out (runs already created are skipped by their
unique constraint).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from django.db.models import Q
from django.utils import timezone

from apps.core.db import update_returning_ids
from apps.events.models import Event


def event_fanout_claim(*, event: Event, lease: timedelta, template_versions: dict[str, int] | None = None) -> bool:
    """Take the event's fan-out if nobody holds it. The first claim also pins its template versions."""
    now = timezone.now()
    updates: dict[str, Any] = {"fanout_lease_until": now + lease}
    if template_versions and not event.template_versions:
        updates["template_versions"] = template_versions
    claimed = (
        Event.objects.filter(pk=event.pk, status=Event.Status.PENDING)
        .filter(Q(fanout_lease_until__isnull=True) | Q(fanout_lease_until__lt=now))
        .update(**updates)
    )
    if claimed and "template_versions" in updates:
        event.template_versions = updates["template_versions"]
    return bool(claimed)


def events_fanout_claim_batch(*, event_ids: Sequence[int], lease: timedelta, limit: int) -> list[int]:
    """Take the fan-out of the given events and of other pending events nobody holds, up to ``limit``.

    One ``UPDATE … RETURNING`` (rows locked with SKIP LOCKED on PostgreSQL): concurrent workers
    take disjoint events, and an event's later wake-up finds it held or processed and returns at
    once. The oldest pending events are taken first (the status index gives them in order, so a
    deep backlog is not sorted per claim); the given ones among them or, behind a backlog, by a
    later wake-up — every accepted event has one.
    """
    now = timezone.now()
    limit = max(limit, len(event_ids))
    return update_returning_ids(
        table=Event._meta.db_table,
        assignments={"fanout_lease_until": now + lease},
        where="status = %s AND (fanout_lease_until IS NULL OR fanout_lease_until < %s)",
        params=[Event.Status.PENDING, now],
        order_by="created_at, id",
        limit=limit,
    )


def events_fanout_release(*, event_ids: Sequence[int]) -> None:
    """Give back the fan-out of claimed events this worker will not start (another task takes them)."""
    Event.objects.filter(pk__in=list(event_ids), status=Event.Status.PENDING).update(fanout_lease_until=None)


def events_pin_templates(*, event_ids: Sequence[int], template_versions: dict[str, int]) -> None:
    """Fix the template versions of events that have none yet (the first claim of each)."""
    if template_versions and event_ids:
        Event.objects.filter(pk__in=list(event_ids), status=Event.Status.PENDING, template_versions={}).update(
            template_versions=template_versions
        )


def events_fanout_finish(*, recipient_counts: dict[int, int]) -> None:
    """Mark many events processed (every recipient has a run): one UPDATE per distinct count."""
    by_count: dict[int, list[int]] = defaultdict(list)
    for event_id, count in recipient_counts.items():
        by_count[count].append(event_id)
    now = timezone.now()
    for count, ids in by_count.items():
        Event.objects.filter(pk__in=ids, status=Event.Status.PENDING).update(
            status=Event.Status.PROCESSED, processed_at=now, recipient_count=count, fanout_lease_until=None
        )


def event_fanout_renew(*, event: Event, lease: timedelta) -> None:
    Event.objects.filter(pk=event.pk, status=Event.Status.PENDING).update(fanout_lease_until=timezone.now() + lease)


def event_fanout_finish(*, event: Event, recipient_count: int) -> bool:
    """Mark the event processed (every recipient has a run). False if it was cancelled meanwhile."""
    return bool(
        Event.objects.filter(pk=event.pk, status=Event.Status.PENDING).update(
            status=Event.Status.PROCESSED,
            processed_at=timezone.now(),
            recipient_count=recipient_count,
            fanout_lease_until=None,
        )
    )


def events_take_orphaned(*, now: datetime, limit: int = 1000) -> list[int]:
    """Events whose fan-out lease ran out (their worker died): released, returned to be enqueued again.

    Each is returned by one caller only, however many tickers run at once.
    """
    return update_returning_ids(
        table=Event._meta.db_table,
        assignments={"fanout_lease_until": None},
        where="status = %s AND fanout_lease_until IS NOT NULL AND fanout_lease_until < %s",
        params=[Event.Status.PENDING, now],
        order_by="fanout_lease_until",
        limit=limit,
    )


def events_take_unstarted(*, now: datetime, stalled_before: datetime, limit: int = 1000) -> list[int]:
    """Pending events nobody claimed since ``stalled_before`` (their wake-up was lost): stamped and
    returned to be enqueued again, each at most once per period, by one caller."""
    return update_returning_ids(
        table=Event._meta.db_table,
        assignments={"redriven_at": now},
        where="status = %s AND fanout_lease_until IS NULL AND COALESCE(redriven_at, created_at) < %s",
        params=[Event.Status.PENDING, stalled_before],
        order_by="id",
        limit=limit,
    )
