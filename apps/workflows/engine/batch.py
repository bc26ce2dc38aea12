"""Micro-batches: the common case (events with a few direct recipients) in one task, no hops.

A worker woken for one event claims up to ``EVENT_BATCH_SIZE`` pending events nobody holds
(one ``UPDATE … RETURNING``; SKIP LOCKED on PostgreSQL), so the wake-ups of the events it took
find nothing and return after one cheap query. For the events whose recipients are a short list
of subscriber ids its runs are **born walked**, in the same task:

1. the runs are built in memory, with the subscriber, event and workflow version the batch already
   loaded, and given primary keys reserved ahead (``core.bulk.pks_reserve``: the table's sequence
   on PostgreSQL, its AUTOINCREMENT counter on SQLite), since the walk writes them into messages;
2. they are walked as any chunk (``chunks.walk_chunk``: load once, walk each);
3. ONE transaction writes everything (``_commit_born``): the events are locked ``FOR UPDATE``
   and only those still pending and still held under this task's fan-out lease count; their runs
   are inserted in the state the walk left them in (``ON CONFLICT DO NOTHING`` — a run some earlier
   attempt created is skipped, and only the inserted runs' messages, inbox rows, trace, digest
   joins… are written, by the same commit hooks as any chunk's, ``chunks.commit_writes``); the
   events are marked processed;
4. the outbound messages of that commit are delivered right after it
   (``chunks.delivering_inline``) instead of enqueueing ``deliver_messages``.

No run is claimed, read back or updated on this path: a run exists only once its walk is
committed. If the worker dies before the commit nothing is written (the reserved keys are a gap)
and the events, still pending, are handed out again when their lease runs out; a cancellation
either commits first (the events are no longer pending: nothing is written) or waits for the
commit on the event rows and then stops the runs it finds. Committed outbound messages still
``queued`` are re-driven by ``messages_redrive`` — the message rows are the outbox. Events with
topics, a broadcast or a long recipient list take the chunked path (``fanout.fan_out_event``),
one such event per task; so does each event of a batch whose walk or commit failed.
"""

from __future__ import annotations

import logging
from collections import Counter, defaultdict
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from apps.core.bulk import in_array, pks_reserve, rows_insert_new
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
from apps.workflows.engine.chunks import (
    commit_retrying,
    commit_writes,
    delivering_inline,
    run_state,
    save_runs,
    stored_status,
    walk_chunk,
    walk_runs,
)
from apps.workflows.engine.fanout import _template_pins, chunk_size, fan_out_event
from apps.workflows.leases import LeaseHeartbeat, lease_seconds
from apps.workflows.models import Run
from apps.workflows.steps import ChunkWrites

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
    leases = HeldLeases(small)
    heartbeat = LeaseHeartbeat(lambda: leases.renew(lease), interval=lease_seconds() / 4)
    with heartbeat, delivering_inline():
        for batch in _batches(small):
            _fan_out_small(batch, lease, leases)
    for event in large:
        fan_out_event(event, lease)


class HeldLeases:
    """The fan-out leases this task wrote on its small events: the claim's expiry and each renewal's.

    An event whose ``fanout_lease_until`` is one of them is still this task's: had the lease run
    out and another worker claimed the event, that worker's claim would have written its own.
    Renewals touch only such events, so a late heartbeat never takes an event back from a new owner.
    """

    def __init__(self, events: list[Event]) -> None:
        self._event_ids = [event.pk for event in events]
        self._ours: set[datetime] = {event.fanout_lease_until for event in events if event.fanout_lease_until}

    def holds(self, lease_until: datetime | None) -> bool:
        return lease_until is not None and lease_until in self._ours

    def renew(self, lease: timedelta) -> int:
        """Push the leases out (the heartbeat's thread); returns how many events this task still holds."""
        until = timezone.now() + lease
        ours = list(self._ours)
        # Known before it is written: a commit reading the event right after this UPDATE sees one of ours.
        self._ours.add(until)
        return Event.objects.filter(
            pk__in=self._event_ids, status=Event.Status.PENDING, fanout_lease_until__in=ours
        ).update(fanout_lease_until=until)


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


def _fan_out_small(events: list[Event], lease: timedelta, leases: HeldLeases) -> None:
    try:
        left_pending = _runs_born_walked(events, leases)
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
    if left_pending:
        walk_runs(left_pending)


def _runs_born_walked(events: list[Event], leases: HeldLeases) -> list[int]:
    """Build, walk and write the runs of these events (one per distinct recipient), marking the
    events processed, in one transaction. Returns the ids of pending runs an earlier attempt had
    created for them (rare: a fan-out that fell back to the chunked path and died), to walk next."""
    runs = _runs_in_memory(events, _subscribers(events))
    for run, pk in zip(runs, pks_reserve(Run, len(runs)), strict=True):
        run.pk = pk
    now = timezone.now()
    writes = walk_chunk(runs, now) if runs else ChunkWrites()
    return commit_retrying(lambda: _commit_born(events, runs, writes, now, leases), writes)


def _runs_in_memory(events: list[Event], subscribers: dict[tuple[int, str], Subscriber]) -> list[Run]:
    """The runs, unsaved, as a claim would have handed them to the walk (running, first attempt),
    sharing the batch's event, version and subscriber instances."""
    runs = []
    for event in events:
        recipients: dict[int, Subscriber] = {}
        for recipient in event.recipients:
            subscriber = subscribers.get((event.environment_id, str(recipient["subscriber_id"])))
            if subscriber is not None:
                recipients.setdefault(subscriber.pk, subscriber)
        for subscriber in recipients.values():
            runs.append(
                Run(
                    environment_id=event.environment_id,
                    event=event,
                    workflow_version=event.workflow_version,
                    subscriber=subscriber,
                    status=Run.Status.RUNNING,
                    attempts=1,
                )
            )
    return runs


def _commit_born(
    events: list[Event], runs: list[Run], writes: ChunkWrites, now: datetime, leases: HeldLeases
) -> list[int]:
    with transaction.atomic():
        # Locked, so that a cancellation either committed first (not pending any more: nothing is
        # written) or waits for this commit and then stops the runs it finds; held, so that a
        # worker that lost its lease leaves the events to their new owner.
        live = {
            pk
            for pk, lease_until in Event.objects.select_for_update()
            .filter(pk__in=[event.pk for event in events], status=Event.Status.PENDING)
            .values_list("pk", "fanout_lease_until")
            if leases.holds(lease_until)
        }
        if len(live) != len(events):
            logger.info("%d event(s) of the batch were cancelled or taken meanwhile", len(events) - len(live))
        candidates = [run for run in runs if run.event_id in live]
        inserted = rows_insert_new(Run, [_run_row(run) for run in candidates])
        born = [run for run in candidates if run.pk in inserted]
        written = {run.pk: run_state(run) for run in born}
        commit_writes(born, runs, writes, now)
        # The commit hooks may have moved a run on (a digest join sets its role and wake-up time).
        save_runs([run for run in born if run_state(run) != written[run.pk]])
        left_pending: list[int] = []
        if len(born) == len(candidates):
            counts = Counter(run.event_id for run in candidates)
        else:  # some runs existed already: they count, and those still pending are walked next
            counts = Counter(Run.objects.filter(event_id__in=live).values_list("event_id", flat=True))
            left_pending = list(
                Run.objects.filter(event_id__in=live, status=Run.Status.PENDING)
                .exclude(pk__in=inserted)
                .order_by("pk")
                .values_list("pk", flat=True)
            )
        events_fanout_finish(recipient_counts={pk: counts.get(pk, 0) for pk in live})
    return left_pending


def _run_row(run: Run) -> dict[str, Any]:
    """A walked run as it is inserted (``core.bulk.rows_insert_new``): its final state, unclaimed."""
    return {
        "id": run.pk,
        "environment_id": run.environment_id,
        "event_id": run.event_id,
        "workflow_version_id": run.workflow_version_id,
        "subscriber_id": run.subscriber_id,
        "status": stored_status(run),
        "step_index": run.step_index,
        "resume_at": run.resume_at,
        "step_results": run.step_results,
        "attempts": run.attempts,
        "completed_at": run.completed_at,
    }


def _subscribers(events: list[Event]) -> dict[tuple[int, str], Subscriber]:
    """(environment, subscriber id) → subscriber for every direct recipient, one query per
    environment; ids nobody has created yet get a bare subscriber, like Novu (and like the
    chunked path)."""
    by_environment: dict[int, list[str]] = defaultdict(list)
    environments = {}
    for event in events:
        environments[event.environment_id] = event.environment
        by_environment[event.environment_id].extend(str(r["subscriber_id"]) for r in event.recipients)
    found: dict[tuple[int, str], Subscriber] = {}
    for environment_id, ids in by_environment.items():
        ids = list(dict.fromkeys(ids))
        known = {
            s.subscriber_id: s
            for s in Subscriber.objects.filter(environment_id=environment_id).filter(in_array("subscriber_id", ids))
        }
        missing = [sid for sid in ids if sid not in known]
        if missing:
            subscribers_ensure(environment=environments[environment_id], subscriber_ids=missing)
            known.update(
                (s.subscriber_id, s)
                for s in Subscriber.objects.filter(environment_id=environment_id).filter(
                    in_array("subscriber_id", missing)
                )
            )
        for subscriber_id, subscriber in known.items():
            found[(environment_id, subscriber_id)] = subscriber
    return found
