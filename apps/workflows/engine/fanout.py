"""Fan-out: one run per recipient of an event, created chunk by chunk under a lease on the event."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import timedelta

from django.conf import settings
from django.db import transaction

from apps.core.bulk import rows_insert_keyed
from apps.core.tasks import enqueue
from apps.events.fanout import event_fanout_finish, event_fanout_renew
from apps.events.models import Event
from apps.subscribers.models import Subscriber, TopicSubscription
from apps.subscribers.services import subscribers_ensure
from apps.templates.selectors import published_versions_for_keys
from apps.workflows.definitions import template_keys
from apps.workflows.models import Run

logger = logging.getLogger(__name__)

ADVANCE_TASK = "apps.workflows.tasks.advance_runs"


def chunk_size() -> int:
    return int(settings.CLARION["FANOUT_CHUNK_SIZE"])


def _recipient_pk_chunks(event: Event) -> Iterator[list[int]]:
    """Subscriber pks for the event, in chunks; big topics are streamed by keyset pagination.

    Subscriber ids nobody has created yet get a bare subscriber, like Novu. Duplicates across
    chunks are harmless: the run's unique constraint absorbs them.
    """
    size = chunk_size()
    direct_ids = [r["subscriber_id"] for r in event.recipients if "subscriber_id" in r]
    for start in range(0, len(direct_ids), size):
        batch = direct_ids[start : start + size]
        subscribers_ensure(environment=event.environment, subscriber_ids=batch)
        yield list(
            Subscriber.objects.filter(environment_id=event.environment_id, subscriber_id__in=batch).values_list(
                "pk", flat=True
            )
        )
    actor_id = event.actor.get("subscriber_id") if isinstance(event.actor, dict) else None
    topic_keys = [r["topic"] for r in event.recipients if "topic" in r]
    for topic_key in topic_keys:
        after = 0
        while True:
            rows = TopicSubscription.objects.filter(
                topic__environment_id=event.environment_id, topic__key=topic_key, subscriber_id__gt=after
            )
            if actor_id:
                # Like Novu, the actor of a topic trigger does not notify themselves.
                rows = rows.exclude(subscriber__subscriber_id=actor_id)
            pks = list(rows.order_by("subscriber_id").values_list("subscriber_id", flat=True)[:size])
            if not pks:
                break
            yield pks
            after = pks[-1]
    if any(r.get("broadcast") for r in event.recipients):
        # Every subscriber of the environment, streamed like a topic (the actor excluded too).
        after = 0
        while True:
            subscribers = Subscriber.objects.filter(environment_id=event.environment_id, pk__gt=after)
            if actor_id:
                subscribers = subscribers.exclude(subscriber_id=actor_id)
            pks = list(subscribers.order_by("pk").values_list("pk", flat=True)[:size])
            if not pks:
                break
            yield pks
            after = pks[-1]


def fan_out_event(event: Event, lease: timedelta) -> None:
    """Create one run per recipient of an event this worker has claimed, chunk by chunk, and wake
    the engine for each chunk (the path of topics and long recipient lists).

    The worker holds a lease on the event while it fans out (renewed per chunk); if it dies, the
    ticker hands the event to another worker, which resumes where the runs stop.
    """
    runs_created = 0
    for pks in _recipient_pk_chunks(event):
        if not pks:
            continue
        run_ids = _runs_create(event, pks)
        if run_ids is None:  # cancelled
            return
        runs_created += len(pks)
        if run_ids:
            enqueue(ADVANCE_TASK, run_ids)
        event_fanout_renew(event=event, lease=lease)
    event_fanout_finish(event=event, recipient_count=Run.objects.filter(event=event).count())
    logger.info("event %s fanned out to %d recipients", event.transaction_id, runs_created)


def _runs_create(event: Event, pks: list[int]) -> list[int] | None:
    """A pending run for each of these subscribers that has none yet for the event; returns the
    ids of the chunk's pending runs (``None``: the event was cancelled, nothing written).

    PostgreSQL: one ``INSERT … SELECT … FROM unnest(…) ON CONFLICT DO NOTHING RETURNING id``
    that inserts only while the event is not cancelled — the event row read ``FOR SHARE``, so a
    cancellation either waits for these runs and stops them, or commits first and nothing is
    inserted — with no model instance and no SQL compiled per row. When it returns a run for every
    pk (the usual case) that is the chunk; otherwise (a resumed fan-out found runs it had created,
    or the event was cancelled) the chunk's pending runs are read back, as on other databases.
    """
    fixed = {
        "environment_id": event.environment_id,
        "event_id": event.pk,
        "workflow_version_id": event.workflow_version_id,
    }
    created = rows_insert_keyed(
        Run,
        fixed,
        column="subscriber_id",
        keys=pks,
        ignore_conflicts=True,
        where=(
            f"EXISTS (SELECT 1 FROM {Event._meta.db_table} WHERE id = %s AND status <> %s FOR SHARE)",
            [event.pk, Event.Status.CANCELLED],
        ),
    )
    if created is not None and len(created) == len(pks):
        return created
    with transaction.atomic():
        if Event.objects.filter(pk=event.pk, status=Event.Status.CANCELLED).exists():
            return None
        if created is None:
            Run.objects.bulk_create(
                [Run(subscriber_id=pk, **fixed) for pk in pks], ignore_conflicts=True, batch_size=500
            )
    return list(
        Run.objects.filter(event=event, subscriber_id__in=pks, status=Run.Status.PENDING).values_list("pk", flat=True)
    )


def _template_pins(event: Event) -> dict[str, int]:
    """The published version of every template the workflow uses, fixed for all of the event's runs."""
    if event.template_versions or event.workflow_version.workflow.use_latest_templates:
        return {}
    keys = template_keys(event.workflow_version.steps)
    if not keys:
        return {}
    published = published_versions_for_keys(environment=event.environment_id, keys=keys)
    return {key: version.pk for key, version in published.items()}
