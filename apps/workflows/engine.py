"""The workflow engine: fan-out of events into runs, and the walk of runs through their steps.

The database is the source of truth. Every function here is safe to call twice with the same
ids: runs are claimed with a lease (a token written by one conditional UPDATE), a chunk's
writes (messages, inbox rows, trace, run state) commit in one transaction, and the unique
constraints (one run per event × subscriber, one message per run × step × channel) make a
duplicate impossible even if two workers ever held the same run.
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import F, Q
from django.utils import timezone

from apps.core.durations import parse_duration
from apps.core.sandbox import SandboxError, evaluate_expression
from apps.core.tasks import enqueue, enqueue_on_commit
from apps.delivery.models import Message
from apps.delivery.selectors import reachable_channels
from apps.events.models import Event
from apps.inbox.models import InboxMessage
from apps.preferences.models import Category
from apps.preferences.selectors import Resolution, resolve_preferences
from apps.subscribers.models import Subscriber, TopicSubscription
from apps.subscribers.services import subscribers_ensure
from apps.templates.models import TemplateVersion
from apps.templates.rendering import RenderedContent, build_render_context, render_version
from apps.templates.selectors import published_versions_for_keys
from apps.workflows.definitions import CHANNEL_STEP_TYPES
from apps.workflows.models import Run, StepRun

logger = logging.getLogger(__name__)

ADVANCE_TASK = "apps.workflows.tasks.advance_runs"
DELIVER_TASK = "apps.delivery.tasks.deliver_messages"


def _chunk_size() -> int:
    return int(settings.CLARION["FANOUT_CHUNK_SIZE"])


# --------------------------------------------------------------------------------------------
# Fan-out
# --------------------------------------------------------------------------------------------


def _recipient_pk_chunks(event: Event) -> Iterator[list[int]]:
    """Subscriber pks for the event, in chunks; big topics are streamed by keyset pagination.

    Subscriber ids nobody has created yet get a bare subscriber, like Novu. Duplicates across
    chunks are harmless: the run's unique constraint absorbs them.
    """
    size = _chunk_size()
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


def process_event(event_id: int) -> None:
    """Create one run per recipient (chunk by chunk) and wake the engine for each chunk."""
    event = Event.objects.select_related("workflow_version", "environment").filter(pk=event_id).first()
    if event is None or event.status != Event.Status.PENDING:
        return
    runs_created = 0
    for pks in _recipient_pk_chunks(event):
        if not pks:
            continue
        with transaction.atomic():
            if Event.objects.filter(pk=event.pk, status=Event.Status.CANCELLED).exists():
                return
            Run.objects.bulk_create(
                [
                    Run(
                        environment_id=event.environment_id,
                        event_id=event.pk,
                        workflow_version_id=event.workflow_version_id,
                        subscriber_id=pk,
                    )
                    for pk in pks
                ],
                ignore_conflicts=True,
                batch_size=500,
            )
        run_ids = list(
            Run.objects.filter(event=event, subscriber_id__in=pks, status=Run.Status.PENDING).values_list(
                "pk", flat=True
            )
        )
        runs_created += len(pks)
        if run_ids:
            enqueue(ADVANCE_TASK, run_ids)
    Event.objects.filter(pk=event.pk, status=Event.Status.PENDING).update(
        status=Event.Status.PROCESSED,
        processed_at=timezone.now(),
        recipient_count=Run.objects.filter(event=event).count(),
    )
    logger.info("event %s fanned out to %d recipients", event.transaction_id, runs_created)


# --------------------------------------------------------------------------------------------
# The walk
# --------------------------------------------------------------------------------------------


@dataclass
class _ChunkWrites:
    """Everything one chunk will write, committed together."""

    step_runs: list[StepRun] = field(default_factory=list)
    messages: list[Message] = field(default_factory=list)
    # (inbox row, index of its Message in ``messages``, run, step id)
    inbox: list[tuple[InboxMessage, int, Run, str]] = field(default_factory=list)


@dataclass
class _ChunkData:
    """What every run in a chunk needs, loaded once per chunk."""

    templates: dict[tuple[int, str], TemplateVersion]
    categories: dict[tuple[int, str], Category | None]
    preferences: dict[tuple[int, str], dict[int, dict[str, Resolution]]]
    # (run id, step id) -> the in-app message that step created, for engagement in conditions
    inbox_state: dict[tuple[int, str], InboxMessage]
    # subscriber pk -> channels the subscriber has an address for
    reachable: dict[int, set[str]]


def claim_runs(run_ids: Sequence[int]) -> tuple[Any, list[Run]]:
    """Atomically take the runs that are ready and not held by a live worker."""
    now = timezone.now()
    token = Run.new_claim_token()
    ready = (
        Q(status=Run.Status.PENDING, lease_until__isnull=True)
        | Q(status=Run.Status.PENDING, lease_until__lt=now)
        | Q(status=Run.Status.WAITING, resume_at__lte=now)
        | Q(status=Run.Status.RUNNING, lease_until__lt=now)
    )
    Run.objects.filter(ready, pk__in=list(run_ids)).update(
        status=Run.Status.RUNNING,
        claim_token=token,
        lease_until=now + timedelta(seconds=settings.CLARION["RUN_LEASE_SECONDS"]),
        attempts=F("attempts") + 1,
    )
    runs = list(
        Run.objects.filter(claim_token=token, status=Run.Status.RUNNING)
        .select_related("subscriber", "event", "workflow_version__workflow")
        .order_by("pk")
    )
    return token, runs


def _load_chunk_data(runs: list[Run]) -> _ChunkData:
    by_env_keys: dict[int, set[str]] = defaultdict(set)
    category_keys: dict[int, set[str]] = defaultdict(set)
    resumed_with_inbox: list[int] = []
    for run in runs:
        version = run.workflow_version
        for step in version.steps[run.step_index :]:
            if step.get("type") in CHANNEL_STEP_TYPES and step.get("template"):
                by_env_keys[run.environment_id].add(step["template"])
        if version.category_key:
            category_keys[run.environment_id].add(version.category_key)
        if any(result.get("channel") == "in_app" for result in run.step_results.values()):
            resumed_with_inbox.append(run.pk)

    templates: dict[tuple[int, str], TemplateVersion] = {}
    for environment_id, keys in by_env_keys.items():
        for key, version in published_versions_for_keys(environment=environment_id, keys=keys).items():
            templates[(environment_id, key)] = version

    categories: dict[tuple[int, str], Category | None] = {}
    for environment_id, keys in category_keys.items():
        found = {c.key: c for c in Category.objects.filter(environment_id=environment_id, key__in=keys)}
        for key in keys:
            categories[(environment_id, key)] = found.get(key)

    preferences: dict[tuple[int, str], dict[int, dict[str, Resolution]]] = {}
    groups: dict[tuple[int, str], set[int]] = defaultdict(set)
    for run in runs:
        groups[(run.environment_id, run.workflow_version.category_key)].add(run.subscriber_id)
    for (environment_id, category_key), subscriber_pks in groups.items():
        preferences[(environment_id, category_key)] = resolve_preferences(
            environment=environment_id,
            subscriber_ids=subscriber_pks,
            category=categories.get((environment_id, category_key)) if category_key else None,
            channels=sorted(set(CHANNEL_STEP_TYPES.values())),
        )

    inbox_state: dict[tuple[int, str], InboxMessage] = {}
    if resumed_with_inbox:
        rows = InboxMessage.objects.filter(message__run_id__in=resumed_with_inbox).annotate(
            run_pk=F("message__run_id"), step_id=F("message__step_id")
        )
        inbox_state = {(m.run_pk, m.step_id): m for m in rows}
    reachable = reachable_channels(subscribers=list({run.subscriber_id: run.subscriber for run in runs}.values()))
    return _ChunkData(
        templates=templates,
        categories=categories,
        preferences=preferences,
        inbox_state=inbox_state,
        reachable=reachable,
    )


def _trace(writes: _ChunkWrites, run: Run, step: dict[str, Any], decision: str, reason: str, **detail: Any) -> None:
    writes.step_runs.append(
        StepRun(run=run, step_id=step["id"], step_type=step["type"], decision=decision, reason=reason, detail=detail)
    )


def _refresh_step_results(run: Run, data: _ChunkData) -> None:
    """Bring engagement on earlier in-app messages into ``steps.<id>`` for conditions."""
    for step_id, result in run.step_results.items():
        message = data.inbox_state.get((run.pk, step_id))
        if message is not None:
            result["seen"] = message.seen_at is not None
            result["read"] = message.read_at is not None
            result["archived"] = message.archived_at is not None


def _walk(run: Run, data: _ChunkData, writes: _ChunkWrites, now: Any) -> None:
    version = run.workflow_version
    steps = version.steps
    event = run.event
    _refresh_step_results(run, data)
    subscriber_context = run.subscriber.as_context()
    context = build_render_context(payload=event.payload, subscriber=subscriber_context, actor=event.actor)

    while run.step_index < len(steps):
        step = steps[run.step_index]
        step_id = step["id"]
        condition = step.get("if")
        if condition:
            try:
                passed = bool(evaluate_expression(condition, {**context, "steps": run.step_results}))
            except SandboxError as exc:
                _trace(
                    writes, run, step, StepRun.Decision.FAILED, "condition_error", condition=condition, error=str(exc)
                )
                run.status = Run.Status.FAILED
                run.completed_at = now
                return
            if not passed:
                _trace(writes, run, step, StepRun.Decision.SKIPPED, "condition_false", condition=condition)
                run.step_results[step_id] = {"status": "skipped", "reason": "condition_false"}
                run.step_index += 1
                continue

        if step["type"] == "delay":
            duration = parse_duration(step["for"])
            until = now + duration
            run.step_results[step_id] = {"status": "waited", "until": until.isoformat()}
            run.step_index += 1
            run.status = Run.Status.WAITING
            run.resume_at = until
            _trace(writes, run, step, StepRun.Decision.WAITING, "delay", until=until.isoformat(), duration=step["for"])
            return

        _channel_step(run, step, context, data, writes)
        run.step_index += 1

    run.status = Run.Status.COMPLETED
    run.resume_at = None
    run.completed_at = now


def _channel_step(
    run: Run, step: dict[str, Any], context: dict[str, Any], data: _ChunkData, writes: _ChunkWrites
) -> None:
    step_id = step["id"]
    channel = CHANNEL_STEP_TYPES[step["type"]]
    category_key = run.workflow_version.category_key
    resolution = data.preferences[(run.environment_id, category_key)][run.subscriber_id][channel]
    if not resolution.allowed:
        run.step_results[step_id] = {"status": "skipped", "reason": "preference"}
        _trace(
            writes,
            run,
            step,
            StepRun.Decision.SKIPPED,
            "preference",
            channel=channel,
            category=category_key or None,
            rule=resolution.reason,
            message=f"{channel} is off for "
            + (f"category {category_key}" if resolution.reason != "subscriber_channel" else "all categories"),
        )
        return

    subscriber = run.subscriber
    if channel not in data.reachable.get(subscriber.pk, ()):
        run.step_results[step_id] = {"status": "skipped", "reason": "no_address", "channel": channel}
        _trace(writes, run, step, StepRun.Decision.SKIPPED, "no_address", channel=channel)
        return

    template_key = step.get("template")
    version = data.templates.get((run.environment_id, template_key)) if template_key else None
    if template_key and version is None:
        run.step_results[step_id] = {"status": "failed", "reason": "template_not_published"}
        _trace(writes, run, step, StepRun.Decision.FAILED, "template_not_published", template=template_key)
        return
    rendered: RenderedContent | None = None
    if version is not None:
        try:
            rendered = render_version(
                version=version, locale=subscriber.locale, context={**context, "step": {"id": step_id}}
            )
        except SandboxError as exc:
            run.step_results[step_id] = {"status": "failed", "reason": "render_error"}
            _trace(writes, run, step, StepRun.Decision.FAILED, "render_error", template=template_key, error=str(exc))
            return

    event = run.event
    is_in_app = channel == "in_app"
    workflow_key = run.workflow_version.workflow.key
    message_data: dict[str, Any] = {"transaction_id": event.transaction_id, "workflow": workflow_key}
    if rendered is not None and rendered.action_url:
        message_data["action_url"] = rendered.action_url
    if rendered is not None and getattr(rendered, "text", ""):
        message_data["text"] = rendered.text  # type: ignore[attr-defined]
    if channel == "webhook":
        message_data["payload"] = event.payload
    message = Message(
        environment_id=run.environment_id,
        run=run,
        step_id=step_id,
        channel=channel,
        subscriber=subscriber,
        template_version=version,
        locale=rendered.locale if rendered else "",
        recipient=CHANNEL_ADDRESS.get(channel, lambda s: "")(subscriber) or subscriber.subscriber_id,
        subject=(rendered.subject if channel == "email" else rendered.title) if rendered else "",
        body=rendered.body if rendered else "",
        data=message_data,
        status=Message.Status.SENT if is_in_app else Message.Status.QUEUED,
        provider="inbox" if is_in_app else "",
        sent_at=timezone.now() if is_in_app else None,
    )
    writes.messages.append(message)
    result: dict[str, Any] = {"status": "sent" if is_in_app else "queued", "channel": channel}
    if is_in_app and rendered is not None:
        inbox = InboxMessage(
            environment_id=run.environment_id,
            subscriber=subscriber,
            workflow_key=run.workflow_version.workflow.key,
            category_key=category_key,
            title=rendered.title,
            body=rendered.body,
            action_url=rendered.action_url,
            avatar=_actor_avatar(event.actor),
            data={"transaction_id": event.transaction_id, "payload": event.payload},
        )
        writes.inbox.append((inbox, len(writes.messages) - 1, run, step_id))
        result.update({"read": False, "seen": False, "archived": False})
    run.step_results[step_id] = result
    _trace(
        writes,
        run,
        step,
        StepRun.Decision.EXECUTED,
        "sent" if is_in_app else "queued",
        channel=channel,
        template=template_key,
        template_version=version.number if version else None,
        locale=rendered.locale if rendered else None,
    )


CHANNEL_ADDRESS = {"email": lambda s: s.email, "sms": lambda s: s.phone}


def _actor_avatar(actor: Any) -> str:
    return actor.get("avatar", "") if isinstance(actor, dict) else ""


def advance_runs(run_ids: Sequence[int]) -> None:
    """Walk the given runs as far as they can go now. Safe to call twice."""
    for start in range(0, len(run_ids), _chunk_size()):
        _advance_chunk(run_ids[start : start + _chunk_size()])


def _advance_chunk(run_ids: Sequence[int]) -> None:
    token, runs = claim_runs(run_ids)
    if not runs:
        return
    now = timezone.now()
    data = _load_chunk_data(runs)
    writes = _ChunkWrites()
    for run in runs:
        try:
            _walk(run, data, writes, now)
        except Exception as exc:  # a bug for one run must not block the chunk
            logger.exception("run %s failed", run.pk)
            run.status = Run.Status.FAILED
            run.completed_at = now
            writes.step_runs.append(
                StepRun(
                    run=run,
                    step_id="-",
                    step_type="engine",
                    decision=StepRun.Decision.FAILED,
                    reason="engine_error",
                    detail={"error": f"{type(exc).__name__}: {exc}"},
                )
            )
    _commit_chunk(token, runs, writes)


def _commit_chunk(token: Any, runs: list[Run], writes: _ChunkWrites) -> None:
    with transaction.atomic():
        # Only write for runs this worker still holds (a lease may have expired meanwhile).
        still_held = set(
            Run.objects.select_for_update()
            .filter(pk__in=[r.pk for r in runs], claim_token=token)
            .values_list("pk", flat=True)
        )
        if len(still_held) != len(runs):
            logger.warning("lost the claim on %d run(s); skipping their writes", len(runs) - len(still_held))
        held_runs = [r for r in runs if r.pk in still_held]
        messages = [m for m in writes.messages if m.run_id in still_held]
        Message.objects.bulk_create(messages, batch_size=500)
        inbox_rows: list[InboxMessage] = []
        for inbox, message_index, run, _step_id in writes.inbox:
            if run.pk not in still_held:
                continue
            inbox.message = writes.messages[message_index]
            inbox_rows.append(inbox)
        InboxMessage.objects.bulk_create(inbox_rows, batch_size=500)
        StepRun.objects.bulk_create([s for s in writes.step_runs if s.run_id in still_held], batch_size=1000)
        _save_runs(held_runs)
        email_ids = [m.pk for m in messages if m.channel != "in_app"]
        if inbox_rows:
            from apps.inbox.realtime import publish_messages_created

            transaction.on_commit(lambda: publish_messages_created(inbox_rows))
        if email_ids:
            enqueue_on_commit(DELIVER_TASK, email_ids)


def _save_runs(runs: list[Run]) -> None:
    """Write the runs' new state with one UPDATE per distinct state.

    Runs of one chunk usually went through the same steps and stopped at the same place with the
    same results (ids of what they created live in Message rows, not here), so a chunk of 500
    runs is typically one statement instead of a 500-row ``bulk_update``.
    """
    now = timezone.now()
    groups: dict[tuple[Any, ...], list[int]] = defaultdict(list)
    states: dict[tuple[Any, ...], dict[str, Any]] = {}
    for run in runs:
        status = Run.Status.PENDING if run.status == Run.Status.RUNNING else run.status
        key = (status, run.step_index, run.resume_at, run.completed_at, json.dumps(run.step_results, sort_keys=True))
        groups[key].append(run.pk)
        states[key] = {
            "status": status,
            "step_index": run.step_index,
            "resume_at": run.resume_at,
            "completed_at": run.completed_at,
            "step_results": run.step_results,
        }
    for key, pks in groups.items():
        Run.objects.filter(pk__in=pks).update(claim_token=None, lease_until=None, updated_at=now, **states[key])


# --------------------------------------------------------------------------------------------
# Cancellation and the sweeper
# --------------------------------------------------------------------------------------------


@transaction.atomic
def event_cancel_runs(*, event: Event) -> int:
    """Stop every run of the event that has not finished. Returns how many were cancelled."""
    now = timezone.now()
    Event.objects.filter(pk=event.pk, status=Event.Status.PENDING).update(status=Event.Status.CANCELLED)
    runs = list(
        Run.objects.select_for_update().filter(
            event=event, status__in=[Run.Status.PENDING, Run.Status.WAITING, Run.Status.RUNNING]
        )
    )
    for run in runs:
        run.status = Run.Status.CANCELLED
        run.resume_at = None
        run.claim_token = None
        run.lease_until = None
        run.completed_at = now
    Run.objects.bulk_update(runs, ["status", "resume_at", "claim_token", "lease_until", "completed_at"])
    StepRun.objects.bulk_create(
        [
            StepRun(
                run=run,
                step_id=_next_step_id(run),
                step_type="cancel",
                decision=StepRun.Decision.CANCELLED,
                reason="cancelled_by_api",
            )
            for run in runs
        ]
    )
    if runs and event.status != Event.Status.CANCELLED:
        Event.objects.filter(pk=event.pk).update(status=Event.Status.CANCELLED)
    return len(runs)


def _next_step_id(run: Run) -> str:
    steps = run.workflow_version.steps if run.workflow_version_id else []
    return steps[run.step_index]["id"] if run.step_index < len(steps) else "-"


def sweep() -> dict[str, int]:
    """Re-drive whatever should be moving and is not: due delays, lost tasks, dead workers."""
    now = timezone.now()
    stall = now - timedelta(seconds=settings.CLARION["STALL_SECONDS"])
    counts = {"events": 0, "runs": 0, "messages": 0}

    for event_id in Event.objects.filter(status=Event.Status.PENDING, created_at__lt=stall).values_list(
        "pk", flat=True
    )[:1000]:
        enqueue("apps.workflows.tasks.process_event", event_id)
        counts["events"] += 1

    due = Run.objects.filter(
        Q(status=Run.Status.WAITING, resume_at__lte=now)
        | Q(status=Run.Status.PENDING, updated_at__lt=stall)
        | Q(status=Run.Status.RUNNING, lease_until__lt=now)
    ).order_by("pk")
    after = 0
    while True:
        ids = list(due.filter(pk__gt=after).values_list("pk", flat=True)[: _chunk_size()])
        if not ids:
            break
        enqueue(ADVANCE_TASK, ids)
        counts["runs"] += len(ids)
        after = ids[-1]

    from apps.delivery.services import messages_requeue_stalled

    message_ids = messages_requeue_stalled(stalled_before=stall)
    for start in range(0, len(message_ids), _chunk_size()):
        enqueue(DELIVER_TASK, message_ids[start : start + _chunk_size()])
    counts["messages"] = len(message_ids)
    if any(counts.values()):
        logger.info("sweep re-drove %s", counts)
    return counts
