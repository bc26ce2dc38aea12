""" "Why not?": what a workflow would do for one subscriber now, walked without writing or sending.

How it cannot drift from the engine: it *is* the engine's read-and-decide half. A dry run builds
an unsaved Event and Run in memory (the workflow's published version, the payload given, the
template versions published now — what a trigger now would pin) and hands them to the same
``engine.chunks.load_chunk`` (every step type's ``prepare``: preferences through
``resolve_preferences``, addresses, suppressions, quiet hours, caps) and ``engine.walker.walk``
(control flow, ``if`` conditions, every step type's ``execute``) that ``advance_runs`` calls.
The decisions are the trace entries those functions append to ``ChunkWrites``, read back as they
are. What it never calls is ``chunks.commit_writes``, through which the engine writes (a claimed
chunk's ``commit_chunk`` and a micro-batch's runs born walked alike): messages, inbox rows,
StepRuns, digest joins, run state, counters, and the hand-off to delivery and the task queue
(``delivery_hand_off``, ``enqueue_on_commit``) all live there. So nothing is queued and no
provider is called.

Two ``execute`` paths do write during the walk: a throttle and a full frequency cap count a hit
(``limits.limit_acquire``: a LimitScope/LimitHit row, so the count is exact). The whole walk
therefore runs inside ``transaction.atomic()`` marked for rollback, whatever happens: those rows
are never committed, and ``on_commit`` callbacks registered inside (there are none on this path
today) are discarded with the savepoint. Tests check the row count of every trace and message
table, that nothing is enqueued and that no HTTP request leaves.

Waits: when the walk stops at a wait with an end (a delay, quiet hours, an escalation stage),
the dry run resumes it the way the ticker would, with the clock at the end of the wait, and marks
the later decisions "after the wait". It assumes nothing happens meanwhile: in-app messages stay
unread, emails unopened, no escalation is answered. A digest's bucket is chosen only when a chunk
commits, and the steps after it run once for the whole digest, so the dry run stops there and
lists those steps as not evaluated.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from django.db import transaction
from django.utils import timezone

from apps.events.models import Event
from apps.subscribers.models import Subscriber
from apps.workflows.definitions import program_for
from apps.workflows.engine.chunks import load_chunk
from apps.workflows.engine.walker import walk
from apps.workflows.models import Run, StepRun, Workflow, WorkflowVersion
from apps.workflows.payloads import payload_errors
from apps.workflows.reasons import reason_in_words as trace_reason_in_words
from apps.workflows.steps import ChunkWrites

logger = logging.getLogger(__name__)

# A run that waits more often than this (an escalation with many stages, delays after delays) is
# shown up to here; the rest is listed as not evaluated.
MAX_WAITS = 20

OUTCOMES: dict[str, str] = {
    StepRun.Decision.EXECUTED: "would run",
    StepRun.Decision.SKIPPED: "skipped",
    StepRun.Decision.WAITING: "would wait",
    StepRun.Decision.RESUMED: "resumes",
    StepRun.Decision.FAILED: "would fail",
    StepRun.Decision.HELD: "held for a digest",
    StepRun.Decision.CANCELLED: "cancelled",
}

# The reason in plain words as a prediction, filled from the decision's detail (the condition, the
# time it waits until), for decisions whose step gives none (``detail["message"]`` wins). Codes not
# here read as the trace pages say them (``apps.workflows.reasons``, which covers every code).
DRY_RUN_WORDS: dict[str, str] = {
    "sent": "an in-app message would be put in the inbox",
    "queued": "a message would be queued for sending on {channel}",
    "condition_false": "the condition {condition} is false",
    "condition_error": "the condition {condition} cannot be evaluated: {error}",
    "quiet_hours": "the subscriber's quiet hours: {channel} waits until {until}",
    "delay": "waits until {until}",
    "delay_ended": "the delay ended",
    "delay_timestamp_missing": "no timestamp at {path}: the delay is skipped",
    "delay_timestamp_invalid": "the value at {path} is not a timestamp: the delay is skipped",
    "delay_timestamp_past": "{until} (at {path}) has passed: the delay is skipped",
    "within_allowed_time": "already within {schedule}: no wait",
    "template_not_published": "template {template} has no published version",
    "render_error": "template {template} fails to render: {error}",
    "under_limit": "under the throttle: {count} of {limit} per {window}",
    "throttled": "throttled: {count} of {limit} per {window} already; the run ends here",
    "branch_taken": "branch {branch} taken: {condition} is true",
    "branch_else": "no branch condition is true: the else branch is taken",
    "branch_ended": "the branch ends the run",
    "escalation_wait": "the escalation waits until {until} before {next_channel} (if not {stop_on} by then)",
    "escalation_stopped": "the subscriber engaged ({engagement}): the escalation stops",
    "digest_joined": "would join the digest{key_words}, which closes at {closes_at} (or an open one for the same key)",
    "engine_error": "the engine failed on this run: {error}",
}


class DryRunRefused(Exception):
    """A trigger of this workflow would be refused before any step runs (inactive, unpublished, bad payload)."""

    def __init__(self, message: str, code: str, details: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.details = details or {}


@dataclass(frozen=True)
class DryStep:
    """One decision the engine would take."""

    step_id: str
    step_type: str
    decision: str
    outcome: str  # would run / skipped / would wait / ...
    reason: str
    words: str
    detail: dict[str, Any]
    after_wait: datetime | None  # None: now; else evaluated as if the wait had ended at this time


@dataclass
class DryRun:
    workflow: Workflow
    version: WorkflowVersion
    now: datetime
    steps: list[DryStep] = field(default_factory=list)
    ending: str = ""  # how the walk ends, in plain words
    not_evaluated: list[dict[str, str]] = field(default_factory=list)  # {"id", "type"} of steps not walked


def workflow_dry_run(
    *,
    subscriber: Subscriber,
    workflow: Workflow,
    payload: dict[str, Any] | None = None,
    actor: dict[str, Any] | None = None,
    now: datetime | None = None,
) -> DryRun:
    """Walk ``workflow``'s published version for ``subscriber`` and return the decisions; writes nothing.

    Refused (``DryRunRefused``) as a trigger would be: another environment's workflow, an inactive
    or unpublished one, a payload that breaks the version's schema.
    """
    if workflow.environment_id != subscriber.environment_id:
        raise DryRunRefused("This workflow belongs to another environment.", "workflow_not_found")
    if not workflow.active:
        raise DryRunRefused(f"Workflow '{workflow.key}' is inactive: a trigger would be refused.", "workflow_not_found")
    version = workflow.published_version
    if version is None:
        raise DryRunRefused(
            f"Workflow '{workflow.key}' has no published version: a trigger would be refused.",
            "workflow_not_published",
        )
    payload = payload or {}
    if version.payload_schema:
        errors = payload_errors(schema=version.payload_schema, payload=payload)
        if errors:
            raise DryRunRefused(
                f"The payload does not match the schema of workflow '{workflow.key}': a trigger would be refused.",
                "invalid_payload",
                errors,
            )
    version.workflow = workflow
    now = now or timezone.now()
    result = DryRun(workflow=workflow, version=version, now=now)
    with transaction.atomic():
        try:
            _walk(result, subscriber, payload, actor)
        finally:
            transaction.set_rollback(True)  # a throttle's or cap's counted hit is never kept
    return result


def _walk(result: DryRun, subscriber: Subscriber, payload: dict[str, Any], actor: dict[str, Any] | None) -> None:
    version = result.version
    event = Event(
        environment_id=subscriber.environment_id,
        transaction_id="dry-run",
        workflow=result.workflow,
        workflow_version=version,
        payload=payload,
        actor=actor,
        recipients=[subscriber.subscriber_id],
        template_versions={},  # none pinned: the versions published now, as a trigger now would pin
        created_at=result.now,
    )
    run = Run(
        environment_id=subscriber.environment_id,
        event=event,
        workflow_version=version,
        subscriber=subscriber,
        status=Run.Status.RUNNING,
        step_index=0,
        step_results={},
    )
    writes = ChunkWrites()
    at = result.now
    after_wait: datetime | None = None
    for _ in range(MAX_WAITS + 1):
        seen = len(writes.step_runs)
        run.status = Run.Status.RUNNING
        try:
            data = load_chunk([run], at)
            walk(run, data, writes, at)
        except Exception as exc:  # as ``walk_and_commit``: reported, never a 500
            logger.exception("dry run of workflow %s failed", result.workflow.key)
            result.steps.extend(_steps(writes, seen, after_wait))
            result.steps.append(
                _step(
                    "-",
                    "engine",
                    StepRun.Decision.FAILED,
                    "engine_error",
                    {"error": f"{type(exc).__name__}: {exc}"},
                    after_wait,
                )
            )
            result.ending = "The run would fail here."
            return
        result.steps.extend(_steps(writes, seen, after_wait))
        if run.status != Run.Status.WAITING:
            result.ending = _ending(run)
            return
        if run.resume_at is None:  # a digest: its bucket is chosen when a chunk commits
            _digest_stop(result, run, writes, after_wait)
            return
        at = after_wait = run.resume_at
    result.ending = f"The run would still be waiting after {MAX_WAITS} waits; the rest is not evaluated."
    result.not_evaluated = _remaining(run, run.step_index)


def _steps(writes: ChunkWrites, start: int, after_wait: datetime | None) -> list[DryStep]:
    return [
        _step(entry.step_id, entry.step_type, entry.decision, entry.reason, dict(entry.detail or {}), after_wait)
        for entry in writes.step_runs[start:]
    ]


def _step(
    step_id: str, step_type: str, decision: str, reason: str, detail: dict[str, Any], after_wait: datetime | None
) -> DryStep:
    return DryStep(
        step_id=step_id,
        step_type=step_type,
        decision=decision,
        outcome=OUTCOMES.get(decision, decision),
        reason=reason,
        words=reason_in_words(reason, detail),
        detail=detail,
        after_wait=after_wait,
    )


class _Blank(dict[str, Any]):
    def __missing__(self, key: str) -> str:
        return "?"


def reason_in_words(reason: str, detail: dict[str, Any]) -> str:
    """The step's own ``detail["message"]``, else the reason code's sentence filled from the detail,
    else the trace pages' words for the code."""
    message = detail.get("message")
    if message:
        return str(message)
    words = DRY_RUN_WORDS.get(reason)
    if words is None:
        return trace_reason_in_words(reason, detail)
    return words.format_map(_Blank({k: v for k, v in detail.items() if v is not None}))


def _ending(run: Run) -> str:
    if run.status == Run.Status.COMPLETED:
        return "The run would complete."
    if run.status == Run.Status.FAILED:
        return "The run would fail."
    return f"The run would end {run.status}."


def _digest_stop(result: DryRun, run: Run, writes: ChunkWrites, after_wait: datetime | None) -> None:
    join = writes.digest_joins[-1] if writes.digest_joins else None
    if join is None:  # a member woken by mistake; cannot happen for a fresh run
        result.ending = "The run would wait."
        return
    detail = {
        "key": join.digest_key,
        "key_words": f" for key '{join.digest_key}'" if join.digest_key else "",
        "closes_at": join.closes_at.isoformat(),
    }
    result.steps.append(_step(join.step_id, "digest", StepRun.Decision.WAITING, "digest_joined", detail, after_wait))
    result.ending = (
        "The run would wait in the digest. The steps after it run once for the whole digest when it closes; "
        "they are not evaluated here."
    )
    result.not_evaluated = _remaining(run, run.step_index + 1)


def _remaining(run: Run, start: int) -> list[dict[str, str]]:
    return [
        {"id": str(instruction["step"].get("id", "")), "type": str(instruction["step"].get("type", ""))}
        for instruction in program_for(run.workflow_version)[start:]
        if "step" in instruction and instruction.get("op") != "end"
    ]
