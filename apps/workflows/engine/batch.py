"""Micro-batches: the common case (events with a few direct recipients) in one task, no hops.

A worker woken for one event claims up to ``EVENT_BATCH_SIZE`` pending events nobody holds
(one ``UPDATE … RETURNING``; SKIP LOCKED on PostgreSQL), so the wake-ups of the events it took
find nothing and return after one cheap query. For the events whose recipients are a short list
of subscriber ids it then, in the same task:

1. creates their runs and marks the events processed (one transaction, a fixed number of
   queries for the whole batch);
2. claims and walks those runs chunk by chunk (``chunks.walk_runs``: claim token, lease and
   heartbeat, one commit per chunk, as for any run) instead of enqueueing ``advance_runs``;
3. delivers the outbound messages those commits wrote, right after them
   (``chunks.delivering_inline``) instead of enqueueing ``deliver_messages``.

Every step leaves the database consistent for the ticker if the worker dies: claimed events
whose lease runs out are handed to another worker (their runs, if created, are skipped by the
unique constraint), created runs that nobody walks are re-driven as stalled pending runs, and
committed messages still ``queued`` are re-driven by ``messages_redrive`` — the message rows are
the outbox. Events with topics, a broadcast or a long recipient list take the chunked path
(``fanout.fan_out_event``), one such event per task.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Sequence
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import Count
from django.utils import timezone

from apps.core.tasks import enqueue
from apps.events.fanout import (
    events_fanout_claim_batch,
    events_fanout_finish,
    events_fanout_release,
    events_pin_templates,
)
from apps.events.models import Event
from apps.subscribers.models import Subscriber
from apps.subscribers.services import subscribers_ensure
from apps.workflows.engine.chunks import delivering_inline, walk_runs
from apps.workflows.engine.fanout import _template_pins, chunk_size, fan_out_event
from apps.workflows.leases import LeaseHeartbeat, lease_seconds
from apps.workflows.models import Run

logger = logging.getLogger(__name__)

PROCESS_TASK = "apps.workflows.tasks.process_event"


def batch_size() -> int:
    return int(settings.CLARION.get("EVENT_BATCH_SIZE", 100))


def small_event_limit() -> int:
    """Events with at most this many direct recipients are batched; longer lists are chunked."""
    return int(settings.CLARION.get("SMALL_EVENT_RECIPIENTS", 50))


def process_event(event_id: int) -> None:
    process_events([event_id])


def process_events(event_ids: Sequence[int]) -> None:
    """Fan out these events (and other pending events nobody holds, up to the batch size), walk the
    runs of the small ones and deliver what they send. Safe to call twice with the same ids."""
    lease = timedelta(seconds=lease_seconds())
    claimed = events_fanout_claim_batch(event_ids=event_ids, lease=lease, limit=max(batch_size(), len(event_ids)))
    if not claimed:
        return
    events = list(
        Event.objects.select_related("workflow_version__workflow", "environment")
        .filter(pk__in=claimed, status=Event.Status.PENDING)
        .order_by("pk")
    )
    _pin_templates(events)
    small = [event for event in events if _is_small(event)]
    large = [event for event in events if not _is_small(event)]
    if len(large) > 1:
        # One long fan-out per task, so that the others' leases do not run out while they wait.
        rest = [event.pk for event in large[1:]]
        events_fanout_release(event_ids=rest)
        for event_id in rest:
            enqueue(PROCESS_TASK, event_id)
        large = large[:1]
    held = [event.pk for event in small]
    heartbeat = LeaseHeartbeat(lambda: events_fanout_renew_many(held, lease), interval=lease_seconds() / 4)
    with heartbeat, delivering_inline():
        for batch in _batches(small):
            _fan_out_small(batch, lease)
    for event in large:
        fan_out_event(event, lease)


def events_fanout_renew_many(event_ids: list[int], lease: timedelta) -> int:
    return Event.objects.filter(pk__in=event_ids, status=Event.Status.PENDING).update(
        fanout_lease_until=timezone.now() + lease
    )


def _is_small(event: Event) -> bool:
    recipients = event.recipients
    return (
        isinstance(recipients, list)
        and len(recipients) <= small_event_limit()
        and all(isinstance(r, dict) and set(r) == {"subscriber_id"} for r in recipients)
    )


def _batches(events: list[Event]) -> list[list[Event]]:
    """Consecutive groups of events with at most one chunk of recipients between them."""
    batches: list[list[Event]] = []
    current: list[Event] = []
    size = 0
    for event in events:
        count = len(event.recipients)
        if current and size + count > chunk_size():
            batches.append(current)
            current, size = [], 0
        current.append(event)
        size += count
    if current:
        batches.append(current)
    return batches


def _pin_templates(events: list[Event]) -> None:
    """Pin the template versions of events claimed for the first time: once per workflow version."""
    groups: dict[tuple[int, int], list[Event]] = defaultdict(list)
    for event in events:
        if not event.template_versions:
            groups[(event.environment_id, event.workflow_version_id)].append(event)
    for group in groups.values():
        pins = _template_pins(group[0])
        if not pins:
            continue
        events_pin_templates(event_ids=[event.pk for event in group], template_versions=pins)
        for event in group:
            event.template_versions = pins


def _fan_out_small(events: list[Event], lease: timedelta) -> None:
    try:
        run_ids = _create_runs(events)
    except Exception:
        # One bad event must not hold back the batch: each gets the single-event path.
        logger.exception("batch fan-out of %d event(s) failed; processing them one by one", len(events))
        failed: Exception | None = None
        for event in events:
            try:
                fan_out_event(event, lease)
            except Exception as exc:
                logger.exception("fan-out of event %s failed", event.pk)
                failed = failed or exc
        if failed is not None:
            raise failed from None
        return
    walk_runs(run_ids)


def _create_runs(events: list[Event]) -> list[int]:
    """One run per recipient of each still-pending event, the events marked processed, in one
    transaction. Returns the ids of the pending runs to walk."""
    subscriber_pks = _subscriber_pks(events)
    with transaction.atomic():
        # Locking the events keeps a concurrent cancellation from slipping between this check and
        # the runs (it waits, then finds the runs and stops them).
        live = set(
            Event.objects.select_for_update()
            .filter(pk__in=[event.pk for event in events], status=Event.Status.PENDING)
            .values_list("pk", flat=True)
        )
        runs = [
            Run(
                environment_id=event.environment_id,
                event_id=event.pk,
                workflow_version_id=event.workflow_version_id,
                subscriber_id=pk,
            )
            for event in events
            if event.pk in live
            for pk in dict.fromkeys(
                subscriber_pks[(event.environment_id, str(r["subscriber_id"]))]
                for r in event.recipients
                if (event.environment_id, str(r["subscriber_id"])) in subscriber_pks
            )
        ]
        Run.objects.bulk_create(runs, ignore_conflicts=True, batch_size=500)
        counts = dict(
            Run.objects.filter(event_id__in=live)
            .values("event_id")
            .annotate(n=Count("pk"))
            .values_list("event_id", "n")
        )
        events_fanout_finish(recipient_counts={pk: counts.get(pk, 0) for pk in live})
        return list(
            Run.objects.filter(event_id__in=live, status=Run.Status.PENDING).order_by("pk").values_list("pk", flat=True)
        )


def _subscriber_pks(events: list[Event]) -> dict[tuple[int, str], int]:
    """(environment, subscriber id) → subscriber pk for every direct recipient; ids nobody has
    created yet get a bare subscriber, like Novu (and like the chunked path)."""
    by_environment: dict[int, list[str]] = defaultdict(list)
    environments = {}
    for event in events:
        environments[event.environment_id] = event.environment
        by_environment[event.environment_id].extend(str(r["subscriber_id"]) for r in event.recipients)
    found: dict[tuple[int, str], int] = {}
    for environment_id, ids in by_environment.items():
        ids = list(dict.fromkeys(ids))
        subscribers_ensure(environment=environments[environment_id], subscriber_ids=ids)
        for pk, subscriber_id in Subscriber.objects.filter(
            environment_id=environment_id, subscriber_id__in=ids
        ).values_list("pk", "subscriber_id"):
            found[(environment_id, subscriber_id)] = pk
    return found
