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
import time
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import OperationalError, transaction
from django.db.models import F, Q
from django.utils import timezone
from django.utils.html import escape, strip_tags

from apps.core.durations import parse_duration
from apps.core.sandbox import SandboxError, evaluate_expression
from apps.core.schedule import parse_schedule, parse_timestamp, zone
from apps.core.tasks import enqueue, enqueue_on_commit
from apps.delivery.models import Message
from apps.delivery.selectors import reachable_channels
from apps.events.fanout import event_fanout_claim, event_fanout_finish, event_fanout_renew
from apps.events.models import Event
from apps.inbox.models import InboxMessage
from apps.preferences.links import email_links
from apps.preferences.models import Category, QuietHours
from apps.preferences.selectors import Resolution, category_frequencies, frequency_schedule, resolve_preferences
from apps.subscribers.models import Subscriber, TopicSubscription
from apps.subscribers.services import subscribers_ensure
from apps.templates.models import TemplateVersion
from apps.templates.rendering import RenderedContent, build_render_context, render_version
from apps.templates.selectors import pinned_versions, published_versions_for_keys
from apps.workflows import digests
from apps.workflows.definitions import CHANNEL_STEP_TYPES, program_for, template_keys
from apps.workflows.digests import DigestJoin
from apps.workflows.leases import LeaseHeartbeat
from apps.workflows.limits import limit_acquire, limit_hits_prune
from apps.workflows.models import DigestBucket, FrequencyCap, Run, StepRun, WorkflowVersion

logger = logging.getLogger(__name__)

ADVANCE_TASK = "apps.workflows.tasks.advance_runs"
DELIVER_TASK = "apps.delivery.tasks.deliver_messages"
LIMIT_HIT_RETENTION_DAYS = 400
DIGEST_STRAGGLER_RECHECK = timedelta(seconds=1)


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
    """Create one run per recipient (chunk by chunk) and wake the engine for each chunk.

    The worker holds a lease on the event while it fans out (renewed per chunk); if it dies, the
    ticker hands the event to another worker, which resumes where the runs stop.
    """
    event = Event.objects.select_related("workflow_version__workflow", "environment").filter(pk=event_id).first()
    if event is None or event.status != Event.Status.PENDING:
        return
    lease = timedelta(seconds=lease_seconds())
    if not event_fanout_claim(event=event, lease=lease, template_versions=_template_pins(event)):
        return  # another worker is fanning it out
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
        event_fanout_renew(event=event, lease=lease)
    event_fanout_finish(event=event, recipient_count=Run.objects.filter(event=event).count())
    logger.info("event %s fanned out to %d recipients", event.transaction_id, runs_created)


def _template_pins(event: Event) -> dict[str, int]:
    """The published version of every template the workflow uses, fixed for all of the event's runs."""
    if event.template_versions or event.workflow_version.workflow.use_latest_templates:
        return {}
    keys = template_keys(event.workflow_version.steps)
    if not keys:
        return {}
    published = published_versions_for_keys(environment=event.environment_id, keys=keys)
    return {key: version.pk for key, version in published.items()}


def lease_seconds() -> int:
    return int(settings.CLARION["RUN_LEASE_SECONDS"])


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
    digest_joins: list[DigestJoin] = field(default_factory=list)
    # runs that carried a digest out: bucket pk → leader run pk (its members complete now)
    digests_sent: dict[int, int] = field(default_factory=dict)
    # messages held back by a frequency cap, for the category's next digest
    held: list[_Held] = field(default_factory=list)


@dataclass
class _Held:
    run: Run
    step_id: str
    channel: str
    category_key: str
    closes_at: datetime
    content: dict[str, Any]


@dataclass
class _ChunkData:
    """What every run in a chunk needs, loaded once per chunk."""

    templates: dict[tuple[int, str], TemplateVersion]
    # TemplateVersion pk -> version, for the versions the runs' events pinned at fan-out
    pinned: dict[int, TemplateVersion]
    categories: dict[tuple[int, str], Category | None]
    preferences: dict[tuple[int, str, int], dict[int, dict[str, Resolution]]]
    # (run id, step id) -> the in-app message that step created, for engagement in conditions
    inbox_state: dict[tuple[int, str], InboxMessage]
    # subscriber pk -> channels the subscriber has an address for
    reachable: dict[int, set[str]]
    quiet_hours: dict[int, QuietHours] = field(default_factory=dict)
    # (environment, category key) -> subscriber pk -> "instant" | "daily" | "weekly"
    frequencies: dict[tuple[int, str], dict[int, str]] = field(default_factory=dict)
    caps: dict[int, list[FrequencyCap]] = field(default_factory=dict)
    # (run id, step id) -> engagement levels reached on that step's other-channel messages
    engagement: dict[tuple[int, str], set[str]] = field(default_factory=dict)
    # (run id, step id, channel) -> the delivery status of a message sent earlier in the run
    delivery: dict[tuple[int, str, str], str] = field(default_factory=dict)
    # bucket pk -> its events (digests being sent or carried by runs in this chunk)
    digest_events: dict[int, list[dict[str, Any]]] = field(default_factory=dict)
    # leader runs whose bucket stays open a moment longer: events of its window are still on the way
    digest_postponed: set[int] = field(default_factory=set)


class _Stop(Exception):
    """The run cannot go further now (it waits, ended or failed); its state is already set."""


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
        lease_until=now + timedelta(seconds=lease_seconds()),
        attempts=F("attempts") + 1,
    )
    runs = list(
        Run.objects.filter(claim_token=token, status=Run.Status.RUNNING).select_related("subscriber").order_by("pk")
    )
    # The runs of a chunk mostly share one event and one version: load each once and share the
    # instance, instead of decoding the same payload and steps JSON for every run.
    if runs:
        events = Event.objects.in_bulk({run.event_id for run in runs})
        versions = WorkflowVersion.objects.select_related("workflow").in_bulk({run.workflow_version_id for run in runs})
        for run in runs:
            run.event = events[run.event_id]
            run.workflow_version = versions[run.workflow_version_id]
    return token, runs


def _remaining_steps(run: Run) -> Iterator[dict[str, Any]]:
    for instruction in program_for(run.workflow_version)[run.step_index :]:
        if "step" in instruction:
            yield instruction["step"]


def _load_chunk_data(runs: list[Run], now: datetime) -> _ChunkData:
    by_env_keys: dict[int, set[str]] = defaultdict(set)
    category_keys: dict[int, set[str]] = defaultdict(set)
    resumed: list[int] = []
    leader_bucket: dict[int, int] = {}
    carried_buckets: set[int] = set()
    pinned_ids: set[int] = set()
    for run in runs:
        version = run.workflow_version
        pins = run.event.template_versions or {}
        for step in _remaining_steps(run):
            keys: list[str] = []
            if step.get("type") in CHANNEL_STEP_TYPES and step.get("template"):
                keys = [step["template"]]
            elif step.get("type") == "escalate":
                keys = [stage["template"] for stage in step["channels"]]
            for key in keys:
                if key in pins:
                    pinned_ids.add(pins[key])
                else:
                    by_env_keys[run.environment_id].add(key)
        if version.category_key:
            category_keys[run.environment_id].add(version.category_key)
        if run.step_results:
            resumed.append(run.pk)
        for result in run.step_results.values():
            if result.get("role") == digests.ROLE_LEADER and result.get("in_progress") and result.get("bucket"):
                leader_bucket[run.pk] = result["bucket"]
            elif result.get("type") == "digest" and result.get("bucket"):
                carried_buckets.add(result["bucket"])

    pinned = pinned_versions(pks=pinned_ids)
    templates: dict[tuple[int, str], TemplateVersion] = {}
    for environment_id, keys in by_env_keys.items():
        for key, template_version in published_versions_for_keys(environment=environment_id, keys=keys).items():
            templates[(environment_id, key)] = template_version

    categories: dict[tuple[int, str], Category | None] = {}
    for environment_id, keys in category_keys.items():
        found = {c.key: c for c in Category.objects.filter(environment_id=environment_id, key__in=keys)}
        for key in keys:
            categories[(environment_id, key)] = found.get(key)

    # Preferences depend on the category and on the workflow's own channel defaults.
    preferences: dict[tuple[int, str, int], dict[int, dict[str, Resolution]]] = {}
    groups: dict[tuple[int, str, int], set[int]] = defaultdict(set)
    by_category: dict[tuple[int, str], set[int]] = defaultdict(set)
    for run in runs:
        category_key = run.workflow_version.category_key
        groups[(run.environment_id, category_key, run.workflow_version.workflow_id)].add(run.subscriber_id)
        by_category[(run.environment_id, category_key)].add(run.subscriber_id)
    for (environment_id, category_key, workflow_id), subscriber_pks in groups.items():
        preferences[(environment_id, category_key, workflow_id)] = resolve_preferences(
            environment=environment_id,
            subscriber_ids=subscriber_pks,
            category=categories.get((environment_id, category_key)) if category_key else None,
            channels=sorted(set(CHANNEL_STEP_TYPES.values())),
            workflow=workflow_id,
        )
    frequencies: dict[tuple[int, str], dict[int, str]] = {
        (environment_id, category_key): category_frequencies(
            environment=environment_id,
            subscriber_ids=subscriber_pks,
            category=categories.get((environment_id, category_key)) if category_key else None,
        )
        for (environment_id, category_key), subscriber_pks in by_category.items()
    }

    inbox_state: dict[tuple[int, str], InboxMessage] = {}
    engagement: dict[tuple[int, str], set[str]] = defaultdict(set)
    delivery: dict[tuple[int, str, str], str] = {}
    if resumed:
        rows = InboxMessage.objects.filter(message__run_id__in=resumed).annotate(
            run_pk=F("message__run_id"), step_id=F("message__step_id")
        )
        for inbox in rows:
            inbox_state[(inbox.run_pk, inbox.step_id)] = inbox
            engagement[(inbox.run_pk, inbox.step_id)].update(_inbox_engagement(inbox))
        for run_pk, step_id, channel, status, opened_at, clicked_at in (
            Message.objects.filter(run_id__in=resumed)
            .exclude(channel="in_app")
            .values_list("run_id", "step_id", "channel", "status", "opened_at", "clicked_at")
        ):
            delivery[(run_pk, step_id, channel)] = status
            levels = set(ENGAGED_MESSAGE_STATUSES.get(status, ()))
            if opened_at is not None:
                levels.update({"seen", "read"})
            if clicked_at is not None:
                levels.update({"seen", "read", "clicked"})
            engagement[(run_pk, step_id)].update(levels)

    subscriber_pks = list({run.subscriber_id for run in runs})
    quiet_hours = {q.subscriber_id: q for q in QuietHours.objects.filter(subscriber_id__in=subscriber_pks)}
    caps: dict[int, list[FrequencyCap]] = defaultdict(list)
    for cap in FrequencyCap.objects.filter(
        environment_id__in={run.environment_id for run in runs}, active=True
    ).select_related("category"):
        caps[cap.environment_id].append(cap)

    held_open = digests.digests_awaiting_stragglers(leader_bucket=leader_bucket, now=now)
    digest_postponed = {run_pk for run_pk, bucket_pk in leader_bucket.items() if bucket_pk in held_open}
    leader_bucket = {run_pk: bucket_pk for run_pk, bucket_pk in leader_bucket.items() if bucket_pk not in held_open}
    digest_events = digests.digests_close_for_leaders(leader_bucket=leader_bucket, now=now)
    if carried_buckets - set(digest_events):
        digest_events.update(digests.digest_events(bucket_pks=sorted(carried_buckets - set(digest_events))))
    return _ChunkData(
        templates=templates,
        pinned=pinned,
        categories=categories,
        preferences=preferences,
        inbox_state=inbox_state,
        reachable=reachable_channels(subscribers=list({run.subscriber_id: run.subscriber for run in runs}.values())),
        quiet_hours=quiet_hours,
        frequencies=frequencies,
        caps=caps,
        engagement=engagement,
        delivery=delivery,
        digest_events=digest_events,
        digest_postponed=digest_postponed,
    )


# Delivery statuses that count as engagement, and the levels they reach.
ENGAGED_MESSAGE_STATUSES: dict[str, set[str]] = {
    "read": {"seen", "read"},
    "opened": {"seen", "read"},
    "clicked": {"seen", "read", "clicked"},
}


def _inbox_engagement(inbox: InboxMessage) -> set[str]:
    levels: set[str] = set()
    if inbox.seen_at is not None:
        levels.add("seen")
    if inbox.read_at is not None:
        levels.update({"seen", "read"})
    actions = getattr(inbox, "actions", None) or []
    if any(isinstance(a, dict) and a.get("completed_at") for a in actions):
        levels.update({"seen", "read", "clicked"})
    return levels


def _trace(writes: _ChunkWrites, run: Run, step: dict[str, Any], decision: str, reason: str, **detail: Any) -> None:
    writes.step_runs.append(
        StepRun(run=run, step_id=step["id"], step_type=step["type"], decision=decision, reason=reason, detail=detail)
    )


def _refresh_step_results(run: Run, data: _ChunkData) -> None:
    """Bring what happened since into ``steps.<id>`` for conditions: engagement on in-app messages,
    and the delivery status of others (``steps.email.status == "bounced"``)."""
    for step_id, result in run.step_results.items():
        channel = result.get("channel")
        if channel and channel != "in_app" and (run.pk, step_id, channel) in data.delivery:
            result["status"] = data.delivery[(run.pk, step_id, channel)]
        message = data.inbox_state.get((run.pk, step_id))
        if message is not None:
            result["seen"] = message.seen_at is not None
            result["read"] = message.read_at is not None
            result["archived"] = message.archived_at is not None


def _trace_ended_delays(run: Run, writes: _ChunkWrites, now: datetime) -> None:
    """A delay's trace ends with when it really ended: ``resumed``, with how late that was."""
    for step_id, result in run.step_results.items():
        if result.get("status") != "waited" or "resumed_at" in result:
            continue
        result["resumed_at"] = now.isoformat()
        until = parse_timestamp(result.get("until"))
        late = round((now - until).total_seconds(), 3) if until else None
        writes.step_runs.append(
            StepRun(
                run=run,
                step_id=step_id,
                step_type="delay",
                decision=StepRun.Decision.RESUMED,
                reason="delay_ended",
                detail={"until": result.get("until"), "resumed_at": now.isoformat(), "late_seconds": late},
            )
        )


def _wait(run: Run, until: datetime | None) -> None:
    run.status = Run.Status.WAITING
    run.resume_at = until
    raise _Stop


def _end(run: Run, now: datetime, status: str = Run.Status.COMPLETED) -> None:
    run.status = status
    run.resume_at = None
    run.completed_at = now
    raise _Stop


def _subscriber_zone(run: Run, step: dict[str, Any]) -> Any:
    return zone(run.subscriber.timezone, default=step.get("timezone") or "UTC")


def _path_value(context: dict[str, Any], path: str) -> Any:
    value: Any = context
    for part in path.split("."):
        if isinstance(value, dict):
            value = value.get(part)
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            return None
    return value


def _digest_context(run: Run, data: _ChunkData) -> dict[str, Any] | None:
    """The most recent digest this run carried, as templates see it (``digest.events``…)."""
    latest: dict[str, Any] | None = None
    for result in run.step_results.values():
        if result.get("type") != "digest" or result.get("status") != "sent":
            continue
        # passed straight through (look-back): a digest of one, itself
        events = data.digest_events.get(result["bucket"], []) if result.get("bucket") else [_event_item(run)]
        latest = {"count": len(events), "key": result.get("key", ""), "events": events}
    return latest


def _event_item(run: Run) -> dict[str, Any]:
    return {
        "transaction_id": run.event.transaction_id,
        "payload": run.event.payload,
        "actor": run.event.actor or {},
        "created_at": run.event.created_at.isoformat(),
    }


def _walk(run: Run, data: _ChunkData, writes: _ChunkWrites, now: datetime) -> None:
    try:
        _walk_program(run, data, writes, now)
    except _Stop:
        return


def _walk_program(run: Run, data: _ChunkData, writes: _ChunkWrites, now: datetime) -> None:
    program = program_for(run.workflow_version)
    event = run.event
    _refresh_step_results(run, data)
    _trace_ended_delays(run, writes, now)
    context = build_render_context(payload=event.payload, subscriber=run.subscriber.as_context(), actor=event.actor)
    digest = _digest_context(run, data)
    if digest is not None:
        context["digest"] = digest

    while run.step_index < len(program):
        instruction = program[run.step_index]
        op = instruction["op"]
        if op == "jump":
            run.step_index = instruction["to"]
            continue
        step = instruction["step"]
        if op == "end":
            _trace(writes, run, step, StepRun.Decision.EXECUTED, "branch_ended")
            _end(run, now)
        step_id = step["id"]
        in_progress = bool(run.step_results.get(step_id, {}).get("in_progress"))
        condition = step.get("if")
        if condition and not in_progress:
            try:
                passed = bool(evaluate_expression(condition, {**context, "steps": run.step_results}))
            except SandboxError as exc:
                _trace(
                    writes, run, step, StepRun.Decision.FAILED, "condition_error", condition=condition, error=str(exc)
                )
                _end(run, now, Run.Status.FAILED)
            if not passed:
                _trace(writes, run, step, StepRun.Decision.SKIPPED, "condition_false", condition=condition)
                run.step_results[step_id] = {"status": "skipped", "reason": "condition_false"}
                run.step_index = _after(instruction, run.step_index, program)
                continue

        step_type = step["type"]
        if op == "branch":
            run.step_index = _branch(run, instruction, context, writes, now)
            continue
        if step_type == "delay":
            _delay(run, step, context, writes, now)
        elif step_type == "digest":
            if _digest(run, step, context, data, writes, now):
                context["digest"] = _digest_context(run, data)
        elif step_type == "throttle":
            _throttle(run, step, context, writes, now)
        elif step_type == "escalate":
            _escalate(run, step, context, data, writes, now)
        elif step_type == "exit":
            run.step_results[step_id] = {"status": "exited"}
            _trace(writes, run, step, StepRun.Decision.EXECUTED, "exit", message=step.get("reason", ""))
            _end(run, now)
        else:
            _channel_step(
                run,
                step,
                context,
                data,
                writes,
                now,
                channel=CHANNEL_STEP_TYPES[step_type],
                template_key=step.get("template"),
            )
        run.step_index += 1

    run.status = Run.Status.COMPLETED
    run.resume_at = None
    run.completed_at = now


def _after(instruction: dict[str, Any], index: int, program: list[dict[str, Any]]) -> int:
    """The instruction after this one; a whole branch is skipped when its own condition is false."""
    return int(instruction["after"]) if instruction["op"] == "branch" else index + 1


def _branch(run: Run, instruction: dict[str, Any], context: dict[str, Any], writes: _ChunkWrites, now: datetime) -> int:
    step = instruction["step"]
    scope = {**context, "steps": run.step_results}
    for index, branch in enumerate(step["branches"]):
        try:
            taken = bool(evaluate_expression(branch["if"], scope))
        except SandboxError as exc:
            _trace(
                writes,
                run,
                step,
                StepRun.Decision.FAILED,
                "condition_error",
                branch=index,
                condition=branch["if"],
                error=str(exc),
            )
            _end(run, now, Run.Status.FAILED)
        if taken:
            run.step_results[step["id"]] = {"status": "taken", "branch": index, "name": branch.get("name", "")}
            _trace(
                writes,
                run,
                step,
                StepRun.Decision.EXECUTED,
                "branch_taken",
                branch=index,
                name=branch.get("name", ""),
                condition=branch["if"],
                ends=bool(branch.get("end")),
            )
            return int(instruction["targets"][index])
    run.step_results[step["id"]] = {"status": "taken", "branch": "else"}
    _trace(writes, run, step, StepRun.Decision.EXECUTED, "branch_else", branches=len(step["branches"]))
    return int(instruction["else"])


def _delay(run: Run, step: dict[str, Any], context: dict[str, Any], writes: _ChunkWrites, now: datetime) -> None:
    step_id = step["id"]
    if "for" in step:
        until = now + parse_duration(step["for"])
        detail: dict[str, Any] = {"duration": step["for"]}
    elif "until" in step:
        raw = _path_value(context, step["until"])
        if raw is None or raw == "":
            run.step_results[step_id] = {"status": "skipped", "reason": "delay_timestamp_missing"}
            _trace(writes, run, step, StepRun.Decision.SKIPPED, "delay_timestamp_missing", path=step["until"])
            return
        parsed = parse_timestamp(raw)
        if parsed is None:
            run.step_results[step_id] = {"status": "skipped", "reason": "delay_timestamp_invalid"}
            _trace(
                writes, run, step, StepRun.Decision.SKIPPED, "delay_timestamp_invalid", path=step["until"], value=raw
            )
            return
        if parsed <= now:
            run.step_results[step_id] = {"status": "skipped", "reason": "delay_timestamp_past"}
            _trace(
                writes,
                run,
                step,
                StepRun.Decision.SKIPPED,
                "delay_timestamp_past",
                path=step["until"],
                until=parsed.isoformat(),
            )
            return
        until = parsed
        detail = {"path": step["until"]}
    else:
        tz = _subscriber_zone(run, step)
        next_allowed = parse_schedule(step["until_next"]).next_allowed(now, tz)
        if next_allowed is None:
            run.step_results[step_id] = {"status": "skipped", "reason": "within_allowed_time"}
            _trace(
                writes,
                run,
                step,
                StepRun.Decision.SKIPPED,
                "within_allowed_time",
                schedule=step["until_next"],
                timezone=str(tz),
            )
            return
        until = next_allowed
        detail = {"schedule": step["until_next"], "timezone": str(tz)}
    run.step_results[step_id] = {"status": "waited", "until": until.isoformat()}
    run.step_index += 1
    _trace(writes, run, step, StepRun.Decision.WAITING, "delay", until=until.isoformat(), **detail)
    _wait(run, until)


def _digest(
    run: Run, step: dict[str, Any], context: dict[str, Any], data: _ChunkData, writes: _ChunkWrites, now: datetime
) -> bool:
    """Join the digest, or (as its leader, once it closed) carry it on. True when it carries it on."""
    step_id = step["id"]
    result = run.step_results.get(step_id) or {}
    role = result.get("role")
    if result.get("in_progress") and role == digests.ROLE_LEADER:
        if run.pk in data.digest_postponed:
            _wait(run, now + DIGEST_STRAGGLER_RECHECK)
        events = data.digest_events.get(result["bucket"], [])
        run.step_results[step_id] = {
            "type": "digest",
            "status": "sent",
            "bucket": result["bucket"],
            "key": result.get("key", ""),
            "count": len(events),
        }
        writes.digests_sent[result["bucket"]] = run.pk
        _trace(
            writes,
            run,
            step,
            StepRun.Decision.EXECUTED,
            "digest_sent",
            bucket=result["bucket"],
            key=result.get("key", ""),
            count=len(events),
        )
        return True
    if result.get("in_progress") and role == digests.ROLE_PASSTHROUGH:
        run.step_results[step_id] = {"type": "digest", "status": "sent", "key": result.get("key", ""), "count": 1}
        _trace(writes, run, step, StepRun.Decision.EXECUTED, "digest_lookback_passthrough", key=result.get("key", ""))
        return True
    if result.get("in_progress"):  # a member woken by mistake: it waits for its leader
        _wait(run, None)

    key_value = _path_value(context, step["key"]) if step.get("key") else ""
    digest_key = "" if key_value is None else str(key_value)
    if "window" in step:
        closes_at = _reached_at(run, now) + parse_duration(step["window"])
    else:
        closes_at = parse_schedule(step["schedule"]).next_start(_reached_at(run, now), _subscriber_zone(run, step))
    writes.digest_joins.append(
        DigestJoin(
            run=run,
            step_id=step_id,
            scope=digests.workflow_scope(workflow_id=run.workflow_version.workflow_id, step_id=step_id, key=digest_key),
            digest_key=digest_key,
            closes_at=closes_at,
            lookback=parse_duration(step["lookback"]) if step.get("lookback") else None,
            max_events=step.get("max_events"),
            reached_at=_reached_at(run, now),
        )
    )
    # The bucket is chosen when the chunk commits (_apply_digest_joins); until then it waits.
    run.step_results[step_id] = {"type": "digest", "in_progress": True, "key": digest_key}
    _wait(run, None)
    return False  # unreachable


def _reached_at(run: Run, now: datetime) -> datetime:
    """When the run was due to reach its current step: its trigger time, or the end of the wait it
    just resumed from. Digest windows are measured from here, not from when a (possibly
    backlogged) worker got to it, so events sent together land in one digest."""
    candidates = [moment for moment in (run.event.created_at, run.resume_at) if moment is not None and moment <= now]
    return max(candidates, default=now)


def _throttle(run: Run, step: dict[str, Any], context: dict[str, Any], writes: _ChunkWrites, now: datetime) -> None:
    step_id = step["id"]
    key_value = _path_value(context, step["key"]) if step.get("key") else ""
    key = "" if key_value is None else str(key_value)
    result = limit_acquire(
        environment_id=run.environment_id,
        key=f"throttle:{run.workflow_version.workflow_id}:{step_id}:{run.subscriber_id}:{key}",
        limit=int(step["limit"]),
        window=parse_duration(step["window"]),
        hit_key=f"run:{run.pk}",
        now=now,
    )
    detail = {"limit": result.limit, "window": step["window"], "count": result.count, "key": key}
    if result.allowed:
        run.step_results[step_id] = {"status": "passed", **detail}
        _trace(writes, run, step, StepRun.Decision.EXECUTED, "under_limit", **detail)
        return
    run.step_results[step_id] = {"status": "throttled", **detail}
    _trace(writes, run, step, StepRun.Decision.SKIPPED, "throttled", **detail)
    _end(run, now)


def _escalate(
    run: Run, step: dict[str, Any], context: dict[str, Any], data: _ChunkData, writes: _ChunkWrites, now: datetime
) -> None:
    step_id = step["id"]
    stages = step["channels"]
    stop_on = step.get("stop_on", "read")
    state = run.step_results.get(step_id) or {}
    if not state.get("in_progress"):
        state = {"in_progress": True, "started_at": now.isoformat(), "stage": 0, "channels": {}}
        run.step_results[step_id] = state
    started_at = parse_timestamp(state["started_at"]) or now
    engaged = data.engagement.get((run.pk, step_id), set())
    if state["stage"] > 0 and stop_on in engaged:
        run.step_results[step_id] = {**state, "in_progress": False, "status": "stopped", "engagement": stop_on}
        _trace(
            writes,
            run,
            step,
            StepRun.Decision.EXECUTED,
            "escalation_stopped",
            engagement=stop_on,
            after_channels=list(state["channels"]),
        )
        return
    while state["stage"] < len(stages):
        stage = stages[state["stage"]]
        due = started_at + (parse_duration(stage["after"]) if stage.get("after") else timedelta(0))
        if due > now:
            _trace(
                writes,
                run,
                step,
                StepRun.Decision.WAITING,
                "escalation_wait",
                next_channel=stage["channel"],
                until=due.isoformat(),
                stop_on=stop_on,
            )
            _wait(run, due)
        outcome = _channel_step(
            run,
            step,
            context,
            data,
            writes,
            now,
            channel=stage["channel"],
            template_key=stage["template"],
            record=False,
        )
        state["channels"][stage["channel"]] = outcome
        state["stage"] += 1
    run.step_results[step_id] = {**state, "in_progress": False, "status": "completed"}


def _quiet_until(run: Run, channel: str, data: _ChunkData, now: datetime) -> datetime | None:
    quiet = data.quiet_hours.get(run.subscriber_id)
    if quiet is None:
        return None
    channels = quiet.channels or [c for c in CHANNEL_STEP_TYPES.values() if c != "in_app"]
    if channel not in channels:
        return None
    days = ",".join(quiet.days) if quiet.days else "daily"
    schedule = parse_schedule(f"{days} {quiet.start:%H:%M}-{quiet.end:%H:%M}")
    window = schedule.current_window(now, zone(quiet.timezone or run.subscriber.timezone))
    return window[1] if window else None


def _cap_for(run: Run, channel: str, category: Category | None, data: _ChunkData) -> FrequencyCap | None:
    """The most specific active cap for this channel (the category's own, else the channel's)."""
    best = None
    for cap in data.caps.get(run.environment_id, ()):
        if cap.channel != channel:
            continue
        if cap.category_id is not None and category is not None and cap.category_id == category.pk:
            return cap
        if cap.category_id is None:
            best = cap
    return best


PREFERENCE_MESSAGES = {
    "unsubscribed": "the subscriber unsubscribed from everything non-critical",
    "subscriber_channel": "{channel} is off for all categories",
    "workflow_default": "{channel} is off by default for this workflow",
    "category_default": "{channel} is off by default for category {category}",
}


def _hold_reason(
    run: Run, channel: str, category: Category | None, data: _ChunkData, step_id: str, now: datetime
) -> dict[str, Any] | None:
    """Why a non-critical message goes to the category digest instead of out now, if it does.

    The subscriber's own choice of a daily or weekly digest for the category comes first (every
    channel but in-app, which is the inbox itself); otherwise a frequency cap that is full.
    """
    category_key = category.key if category else ""
    frequency = data.frequencies.get((run.environment_id, category_key), {}).get(run.subscriber_id, "instant")
    schedule = None if channel == "in_app" else frequency_schedule(frequency, category)
    if schedule is not None:
        return {"reason": "frequency_preference", "schedule": schedule, "frequency": frequency}
    cap = _cap_for(run, channel, category, data)
    if cap is None:
        return None
    limit = limit_acquire(
        environment_id=run.environment_id,
        key=f"cap:{channel}:{cap.category_id or '*'}:{run.subscriber_id}",
        limit=cap.limit,
        window=parse_duration(cap.window),
        hit_key=f"run:{run.pk}:{step_id}:{channel}",
        now=now,
    )
    if limit.allowed:
        return None
    return {
        "reason": "frequency_cap",
        "schedule": category.digest_schedule if category else "daily 09:00",
        "cap": f"{cap.limit} per {cap.window}",
        "count": limit.count,
    }


def _channel_step(
    run: Run,
    step: dict[str, Any],
    context: dict[str, Any],
    data: _ChunkData,
    writes: _ChunkWrites,
    now: datetime,
    *,
    channel: str,
    template_key: str | None,
    record: bool = True,
) -> str:
    """Send (or skip, hold, or wait for quiet hours to end) one channel; returns the outcome.

    ``record`` False (escalation stages): the outcome goes to the caller's state instead of
    ``steps.<id>``.
    """
    step_id = step["id"]
    category_key = run.workflow_version.category_key
    category = data.categories.get((run.environment_id, category_key)) if category_key else None
    critical = bool(category and category.critical)

    def skip(reason: str, **detail: Any) -> str:
        if record:
            run.step_results[step_id] = {"status": "skipped", "reason": reason, "channel": channel}
        _trace(writes, run, step, StepRun.Decision.SKIPPED, reason, channel=channel, **detail)
        return reason

    preferences = data.preferences[(run.environment_id, category_key, run.workflow_version.workflow_id)]
    resolution = preferences[run.subscriber_id][channel]
    if not resolution.allowed:
        return skip(
            "preference",
            category=category_key or None,
            rule=resolution.reason,
            message=PREFERENCE_MESSAGES.get(resolution.reason, "{channel} is off for category {category}").format(
                channel=channel, category=category_key or "-"
            ),
        )
    subscriber = run.subscriber
    if channel not in data.reachable.get(subscriber.pk, ()):
        return skip("no_address", message=f"the subscriber has no {channel} address")

    if not critical:
        quiet_end = _quiet_until(run, channel, data, now)
        if quiet_end is not None:
            if record:
                run.step_results[step_id] = {"status": "waiting", "reason": "quiet_hours", "in_progress": True}
            _trace(
                writes, run, step, StepRun.Decision.WAITING, "quiet_hours", channel=channel, until=quiet_end.isoformat()
            )
            _wait(run, quiet_end)

    version, template_policy = _template_for(run, template_key, data)
    if template_key and version is None:
        if record:
            run.step_results[step_id] = {"status": "failed", "reason": "template_not_published"}
        _trace(writes, run, step, StepRun.Decision.FAILED, "template_not_published", template=template_key)
        return "template_not_published"
    links = (
        email_links(subscriber=subscriber, category_key=category_key or None, critical=critical)
        if channel == "email"
        else {}
    )
    rendered: RenderedContent | None = None
    if version is not None:
        step_context = {**context, "step": {"id": step_id}}
        for name in ("preferences_url", "unsubscribe_url"):
            if links.get(name):
                step_context[name] = links[name]
        try:
            rendered = render_version(version=version, locale=subscriber.locale, context=step_context)
        except SandboxError as exc:
            if record:
                run.step_results[step_id] = {"status": "failed", "reason": "render_error"}
            _trace(writes, run, step, StepRun.Decision.FAILED, "render_error", template=template_key, error=str(exc))
            return "render_error"

    event = run.event
    workflow_key = run.workflow_version.workflow.key
    subject = (rendered.subject if channel == "email" else rendered.title) if rendered else ""
    body = rendered.body if rendered else ""

    hold = None if critical else _hold_reason(run, channel, category, data, step_id, now)
    if hold is not None:
        schedule_spec = hold.pop("schedule")
        reason = hold.pop("reason")
        closes_at = parse_schedule(schedule_spec).next_start(now, zone(subscriber.timezone))
        writes.held.append(
            _Held(
                run=run,
                step_id=step_id,
                channel=channel,
                category_key=category_key,
                closes_at=closes_at,
                content={
                    "workflow": workflow_key,
                    "channel": channel,
                    "subject": subject,
                    "body": body,
                    "action_url": rendered.action_url if rendered else "",
                    "template": template_key,
                    "template_version": version.number if version else None,
                    "locale": rendered.locale if rendered else "",
                },
            )
        )
        if record:
            run.step_results[step_id] = {"status": "held", "reason": reason, "channel": channel}
        why = f"over the {channel} cap" if reason == "frequency_cap" else f"a {hold['frequency']} digest was chosen"
        _trace(
            writes,
            run,
            step,
            StepRun.Decision.HELD,
            reason,
            channel=channel,
            category=category_key or None,
            **hold,
            digest_at=closes_at.isoformat(),
            message=f"{why}; held for the next {category_key or 'general'} digest",
        )
        return "held"

    is_in_app = channel == "in_app"
    message_data: dict[str, Any] = {"transaction_id": event.transaction_id, "workflow": workflow_key}
    if rendered is not None and rendered.action_url:
        message_data["action_url"] = rendered.action_url
    if rendered is not None and getattr(rendered, "text", ""):
        message_data["text"] = rendered.text  # type: ignore[attr-defined]
    if channel == "webhook":
        message_data["payload"] = event.payload
    if links.get("headers"):
        message_data["headers"] = links["headers"]
    message = Message(
        environment_id=run.environment_id,
        run=run,
        step_id=step_id,
        channel=channel,
        subscriber=subscriber,
        template_version=version,
        locale=rendered.locale if rendered else "",
        recipient=CHANNEL_ADDRESS.get(channel, lambda s: "")(subscriber) or subscriber.subscriber_id,
        subject=subject,
        body=body,
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
            workflow_key=workflow_key,
            category_key=category_key,
            title=rendered.title,
            body=rendered.body,
            action_url=rendered.action_url,
            avatar=_actor_avatar(event.actor),
            data={"transaction_id": event.transaction_id, "payload": event.payload},
            actions=[
                {"id": f"{action.get('kind') or 'action'}-{index}", **action, "completed_at": None}
                for index, action in enumerate(getattr(rendered, "actions", []) or [])
            ],
        )
        writes.inbox.append((inbox, len(writes.messages) - 1, run, step_id))
        result.update({"read": False, "seen": False, "archived": False})
    if record:
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
        template_policy=template_policy,
        locale=rendered.locale if rendered else None,
    )
    return str(result["status"])


def _template_for(run: Run, template_key: str | None, data: _ChunkData) -> tuple[TemplateVersion | None, str]:
    """The version a run renders: the one its event pinned at fan-out, else the one published now."""
    if not template_key:
        return None, ""
    pinned_pk = (run.event.template_versions or {}).get(template_key)
    if pinned_pk is not None and pinned_pk in data.pinned:
        return data.pinned[pinned_pk], "pinned"
    return data.templates.get((run.environment_id, template_key)), "latest"


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
    with LeaseHeartbeat(lambda: runs_renew_lease(token=token), interval=lease_seconds() / 4):
        _walk_and_commit(token, runs)


def runs_renew_lease(*, token: Any) -> int:
    """Push out the lease of the runs this worker holds under ``token``. Returns how many it still holds."""
    return Run.objects.filter(claim_token=token, status=Run.Status.RUNNING).update(
        lease_until=timezone.now() + timedelta(seconds=lease_seconds())
    )


def _walk_and_commit(token: Any, runs: list[Run]) -> None:
    now = timezone.now()
    data = _load_chunk_data(runs, now)
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
    for attempt in range(3):
        try:
            _commit_chunk(token, runs, writes, now)
            return
        except OperationalError:  # a deadlock or lock timeout between concurrent chunks: try again
            if attempt == 2:
                raise
            logger.warning("chunk commit hit a lock conflict; retrying", exc_info=True)
            for obj in [*writes.messages, *writes.step_runs, *(row for row, *_ in writes.inbox)]:
                obj.pk = None
                obj._state.adding = True
            time.sleep(0.05 * (attempt + 1))


def _commit_chunk(token: Any, runs: list[Run], writes: _ChunkWrites, now: datetime) -> None:
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
        wake: list[int] = []
        joins = [j for j in writes.digest_joins if j.run.pk in still_held]
        if joins:
            wake.extend(_apply_digest_joins(joins, writes, now))
        sent = {bucket: leader for bucket, leader in writes.digests_sent.items() if leader in still_held}
        if sent:
            digests.digest_members_complete(sent=sent, now=now)
        held = [h for h in writes.held if h.run.pk in still_held]
        if held:
            _hold_for_category_digest(held, now)
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
        outbound_ids = [m.pk for m in messages if m.channel != "in_app"]
        if inbox_rows:
            from apps.inbox.realtime import publish_messages_created

            transaction.on_commit(lambda: publish_messages_created(inbox_rows))
        if outbound_ids:
            enqueue_on_commit(DELIVER_TASK, outbound_ids)
        if wake:
            enqueue_on_commit(ADVANCE_TASK, sorted(set(wake)))


def _apply_digest_joins(joins: list[DigestJoin], writes: _ChunkWrites, now: datetime) -> list[int]:
    """Place the chunk's digest joins in their buckets and set each run's state. Returns runs to wake."""
    results, woken = digests.digests_join(joins=joins, now=now)
    wake = list(woken)
    for join in joins:
        run = join.run
        result = results[run.pk]
        state = run.step_results[join.step_id]
        state["role"] = result.role
        step = {"id": join.step_id, "type": "digest"}
        if result.role == digests.ROLE_PASSTHROUGH:
            run.resume_at = now
            wake.append(run.pk)
            _trace(writes, run, step, StepRun.Decision.EXECUTED, "digest_lookback_quiet", key=join.digest_key)
            continue
        if result.role == digests.ROLE_LEADER:
            state["bucket"] = result.bucket_id
            run.resume_at = result.closes_at
            if result.due_now:
                wake.append(run.pk)
        else:
            run.resume_at = None
        _trace(
            writes,
            run,
            step,
            StepRun.Decision.WAITING,
            "digest_joined",
            key=join.digest_key,
            role=result.role,
            bucket=result.bucket_id,
            closes_at=result.closes_at.isoformat() if result.closes_at else None,
        )
    return wake


def _hold_for_category_digest(held: list[_Held], now: datetime) -> None:
    """Held messages join their subscriber's next digest of the category: a fixed number of
    queries for the whole chunk (see ``digests.digests_hold``)."""
    digests.digests_hold(
        held=[
            digests.HeldMessage(
                environment_id=item.run.environment_id,
                subscriber_id=item.run.subscriber_id,
                run_id=item.run.pk,
                step_id=item.step_id,
                category_key=item.category_key,
                channel=item.channel,
                closes_at=item.closes_at,
                content=item.content,
            )
            for item in held
        ],
        now=now,
    )


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


def event_cancel_runs(*, event: Event) -> int:
    """Stop every run of the event that has not finished. Returns how many were cancelled."""
    return events_cancel_runs(events=[event], reason="cancelled_by_api")


def events_cancel_runs(*, events: Sequence[Event], reason: str) -> int:
    """Stop the unfinished runs of these events, wherever they wait (delay, digest, escalation).

    A run waiting in a digest leaves its bucket; if it was the bucket's leader, the next run in
    the bucket takes over, so the other events are still sent.
    """
    now = timezone.now()
    event_pks = [event.pk for event in events]
    wake: list[int] = []
    with transaction.atomic():
        Event.objects.filter(pk__in=event_pks, status=Event.Status.PENDING).update(status=Event.Status.CANCELLED)
        runs = list(
            Run.objects.select_for_update()
            .filter(event_id__in=event_pks, status__in=[Run.Status.PENDING, Run.Status.WAITING, Run.Status.RUNNING])
            .select_related("workflow_version")
            .order_by("pk")
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
                    reason=reason,
                )
                for run in runs
            ]
        )
        if runs:
            wake = digests.digests_release_cancelled(run_pks=[run.pk for run in runs], now=now)
            Event.objects.filter(pk__in={run.event_id for run in runs}).exclude(status=Event.Status.CANCELLED).update(
                status=Event.Status.CANCELLED
            )
        if wake:
            enqueue_on_commit(ADVANCE_TASK, wake)
    return len(runs)


def _next_step_id(run: Run) -> str:
    if not run.workflow_version_id:
        return "-"
    program = program_for(run.workflow_version)
    if run.step_index < len(program) and "step" in program[run.step_index]:
        return str(program[run.step_index]["step"]["id"])
    return "-"


# --------------------------------------------------------------------------------------------
# Category digests (messages held back by a frequency cap)
# --------------------------------------------------------------------------------------------


def category_digests_send(*, bucket_pks: Sequence[int]) -> int:
    """Send each due category digest once: one message with everything held in it."""
    sent = 0
    for bucket_pk in bucket_pks:
        with transaction.atomic():
            claimed = DigestBucket.objects.filter(
                pk=bucket_pk, status__in=digests.ACTIVE, workflow__isnull=True
            ).update(status=DigestBucket.Status.SENT, closed_at=timezone.now())
            if not claimed:
                continue
            bucket = DigestBucket.objects.select_related("subscriber").get(pk=bucket_pk)
            events = digests.digest_events(bucket_pks=[bucket_pk]).get(bucket_pk, [])
            if not events:
                DigestBucket.objects.filter(pk=bucket_pk).update(status=DigestBucket.Status.EMPTY)
                continue
            _send_category_digest(bucket, events)
            sent += 1
    return sent


def _send_category_digest(bucket: DigestBucket, events: list[dict[str, Any]]) -> None:
    subscriber = bucket.subscriber
    category = Category.objects.filter(environment_id=bucket.environment_id, key=bucket.category_key).first()
    template_key = (category.digest_templates or {}).get(bucket.channel) if category else None
    digest = {"count": len(events), "key": bucket.category_key, "events": events}
    subject, body, version, locale, action_url = "", "", None, "", ""
    if template_key:
        version = published_versions_for_keys(environment=bucket.environment_id, keys={template_key}).get(template_key)
    if version is not None:
        context = build_render_context(payload={}, subscriber=subscriber.as_context(), actor=None)
        context["digest"] = digest
        rendered = render_version(version=version, locale=subscriber.locale, context=context)
        subject = rendered.subject if bucket.channel == "email" else rendered.title
        body, locale, action_url = rendered.body, rendered.locale, rendered.action_url
    else:
        subject, body = _plain_digest(bucket, events)
    is_in_app = bucket.channel == "in_app"
    message = Message.objects.create(
        environment_id=bucket.environment_id,
        channel=bucket.channel,
        subscriber=subscriber,
        step_id=f"digest:{bucket.category_key or 'general'}",
        template_version=version,
        locale=locale,
        recipient=CHANNEL_ADDRESS.get(bucket.channel, lambda s: "")(subscriber) or subscriber.subscriber_id,
        subject=subject,
        body=body,
        data={"digest_bucket": bucket.pk, "category": bucket.category_key, "count": len(events)},
        status=Message.Status.SENT if is_in_app else Message.Status.QUEUED,
        provider="inbox" if is_in_app else "",
        sent_at=timezone.now() if is_in_app else None,
    )
    if is_in_app:
        inbox = InboxMessage.objects.create(
            environment_id=bucket.environment_id,
            subscriber=subscriber,
            message=message,
            category_key=bucket.category_key,
            title=subject,
            body=body,
            action_url=action_url,
            data={"digest_bucket": bucket.pk, "count": len(events)},
        )
        from apps.inbox.realtime import publish_messages_created

        transaction.on_commit(lambda: publish_messages_created([inbox]))
    else:
        enqueue_on_commit(DELIVER_TASK, [message.pk])


def _plain_digest(bucket: DigestBucket, events: list[dict[str, Any]]) -> tuple[str, str]:
    """A digest without a template of its own: a count and the held messages, one after another."""
    subject = f"{len(events)} new notification{'s' if len(events) != 1 else ''}"
    if bucket.channel == "email":
        items = "".join(
            f"<li><strong>{escape(e.get('subject', ''))}</strong><div>{e.get('body', '')}</div></li>" for e in events
        )
        return subject, f"<h1>{escape(subject)}</h1><ul>{items}</ul>"
    lines = [e.get("subject") or strip_tags(e.get("body", ""))[:140] for e in events]
    return subject, "\n".join(f"- {line}" for line in lines)


# --------------------------------------------------------------------------------------------
# The sweeper
# --------------------------------------------------------------------------------------------


def sweep() -> dict[str, int]:
    """Re-drive whatever should be moving and is not: lost tasks, and (as every tick does) due
    delays, retries and dead workers' work, for deployments that run no ticker."""
    from apps.workflows.ticker import tick

    now = timezone.now()
    stall = now - timedelta(seconds=settings.CLARION["STALL_SECONDS"])
    ticked = tick(now=now)
    counts = {
        "events": ticked["events_orphaned"],
        "runs": ticked["runs_due"] + ticked["runs_orphaned"],
        "messages": ticked["messages"],
        "digests": 0,
    }

    # A fan-out nobody ever claimed: its task was lost (a crash between commit and enqueue).
    for event_id in Event.objects.filter(
        status=Event.Status.PENDING, fanout_lease_until__isnull=True, created_at__lt=stall
    ).values_list("pk", flat=True)[:1000]:
        enqueue("apps.workflows.tasks.process_event", event_id)
        counts["events"] += 1

    stalled = Run.objects.filter(status=Run.Status.PENDING, updated_at__lt=stall).order_by("pk")
    after = 0
    while True:
        ids = list(stalled.filter(pk__gt=after).values_list("pk", flat=True)[: _chunk_size()])
        if not ids:
            break
        enqueue(ADVANCE_TASK, ids)
        counts["runs"] += len(ids)
        after = ids[-1]

    digests.digests_expire_leaderless(now=now)
    category_due = list(
        DigestBucket.objects.filter(status__in=digests.ACTIVE, workflow__isnull=True, closes_at__lte=now).values_list(
            "pk", flat=True
        )[:1000]
    )
    counts["digests"] = category_digests_send(bucket_pks=category_due)
    limit_hits_prune(older_than=now - timedelta(days=LIMIT_HIT_RETENTION_DAYS))

    from apps.delivery.services import messages_requeue_stalled

    message_ids = messages_requeue_stalled(stalled_before=stall)
    for start in range(0, len(message_ids), _chunk_size()):
        enqueue(DELIVER_TASK, message_ids[start : start + _chunk_size()])
    counts["messages"] += len(message_ids)
    if any(counts.values()):
        logger.info("sweep re-drove %s", counts)
    return counts
