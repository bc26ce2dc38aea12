"""Chunks of runs: claimed under a lease, walked with data loaded once, committed in one transaction.

Safe to run twice with the same ids: runs are claimed by one conditional UPDATE that writes this
worker's token and a lease (renewed by a heartbeat while the chunk is worked); everything the
chunk writes — messages, inbox rows, trace, digest entries, run state — commits in one
transaction, and only for the runs the worker still holds.
"""

from __future__ import annotations

import json
import logging
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import datetime, timedelta
from typing import Any, TypeVar, cast

from django.conf import settings
from django.db import OperationalError, transaction
from django.db.models import F, Q
from django.utils import timezone

from apps.analytics.counters import Tally
from apps.core.bulk import in_array, rows_insert
from apps.core.tasks import enqueue, enqueue_on_commit
from apps.delivery.services import DELIVER_TASK, messages_deliver
from apps.delivery.services.rows import messages_insert
from apps.events.models import Event
from apps.inbox.services import inbox_messages_create
from apps.observability.logs import bind_chunk_log_context
from apps.observability.metrics import step_decisions_of
from apps.templates.models import TemplateVersion
from apps.templates.selectors import pinned_versions, published_versions_for_keys
from apps.workflows import accounting
from apps.workflows.definitions import program_for
from apps.workflows.engine.fanout import ADVANCE_TASK, chunk_size
from apps.workflows.engine.walker import walk
from apps.workflows.leases import LeaseHeartbeat, lease_seconds
from apps.workflows.models import Run, StepRun, WorkflowVersion
from apps.workflows.steps import ChunkData, ChunkPlan, ChunkWrites, all_step_types, known_step_types, step_type
from apps.workflows.steps.base import TraceEntry, steps_ahead

logger = logging.getLogger(__name__)

T = TypeVar("T")


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
    Run.objects.filter(in_array("pk", run_ids), ready).update(
        status=Run.Status.RUNNING,
        claim_token=token,
        lease_until=now + timedelta(seconds=lease_seconds()),
        attempts=F("attempts") + 1,
    )
    # Read back by the chunk's ids too: claim_token has no index, and the pk index keeps this read
    # cheap whatever the planner's statistics say.
    runs = list(
        Run.objects.filter(in_array("pk", run_ids), claim_token=token, status=Run.Status.RUNNING)
        .select_related("subscriber")
        .order_by("pk")
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


def remaining_steps(run: Run) -> Iterator[dict[str, Any]]:
    """The steps the run may still reach in this walk (none behind a digest it joins now)."""
    return steps_ahead(run, program_for(run.workflow_version))


def load_chunk(runs: list[Run], now: datetime) -> ChunkData:
    """Everything the chunk's runs need, in a fixed number of queries: the template versions their
    steps ahead render (pinned or published), then each step type's own part."""
    plan = ChunkPlan(runs=runs, ahead={run.pk: list(remaining_steps(run)) for run in runs})
    by_env_keys: dict[int, set[str]] = defaultdict(set)
    pinned_ids: set[int] = set()
    known = known_step_types()
    for run in runs:
        pins = run.event.template_versions or {}
        for step in plan.ahead[run.pk]:
            if step.get("type") not in known:
                continue
            for key in step_type(step["type"]).template_keys(step):
                if key in pins:
                    pinned_ids.add(pins[key])
                else:
                    by_env_keys[run.environment_id].add(key)
    templates: dict[tuple[int, str], TemplateVersion] = {}
    for environment_id, keys in by_env_keys.items():
        for key, template_version in published_versions_for_keys(environment=environment_id, keys=keys).items():
            templates[(environment_id, key)] = template_version
    data = ChunkData(templates=templates, pinned=pinned_versions(pks=pinned_ids))
    for kind in all_step_types():
        kind.prepare(plan, data, now)
    return data


def advance_runs(run_ids: Sequence[int]) -> None:
    """Walk the given runs as far as they can go now, then deliver what they sent. Safe to call twice."""
    with delivering_inline():
        walk_runs(run_ids)


def walk_runs(run_ids: Sequence[int]) -> None:
    """Walk the given runs chunk by chunk (each claimed, walked and committed on its own)."""
    for start in range(0, len(run_ids), chunk_size()):
        _advance_chunk(run_ids[start : start + chunk_size()])


# Outbound messages the chunks committed in this task, for the same worker to deliver right after
# the commits instead of through a task hop (see ``delivery_hand_off``).
_inline_outbound: ContextVar[list[int] | None] = ContextVar("inline_outbound", default=None)


def inline_delivery_limit() -> int:
    return int(settings.CLARION.get("INLINE_DELIVERY_MAX", 200))


def delivery_hand_off(message_ids: list[int]) -> None:
    """Hand a chunk's outbound messages to delivery; called inside the chunk's transaction.

    Inside ``delivering_inline()`` (and up to ``INLINE_DELIVERY_MAX`` per task) the ids are kept
    for this worker to deliver as soon as its work is committed: no task hop. The message rows,
    committed ``queued`` with the chunk, are the outbox: a worker that dies before delivering them
    leaves them queued, and the ticker's ``messages_redrive`` hands them out again after
    ``STALL_SECONDS``. Elsewhere (or past the limit) a deliver task is enqueued on commit.
    An id kept from a commit attempt that rolled back (a lock conflict retried) names no queued
    message: delivery claims only queued rows, so it is skipped.
    """
    kept = _inline_outbound.get()
    if kept is not None and len(kept) + len(message_ids) <= inline_delivery_limit():
        kept.extend(message_ids)
    else:
        enqueue_on_commit(DELIVER_TASK, message_ids)


@contextmanager
def delivering_inline() -> Iterator[list[int]]:
    """Collect the outbound messages committed inside the block and deliver them when it ends.

    If the block fails, what was already committed goes to a deliver task instead (the failure
    may be the database's; the task waits in the broker, or as a deferred task, until it is back).
    """
    if _inline_outbound.get() is not None:  # nested: the outer block delivers
        yield cast(list[int], _inline_outbound.get())
        return
    kept: list[int] = []
    token = _inline_outbound.set(kept)
    try:
        yield kept
    except BaseException:
        if kept:
            enqueue(DELIVER_TASK, sorted(set(kept)))
        raise
    finally:
        _inline_outbound.reset(token)
    if kept:
        messages_deliver(message_ids=kept)


def _advance_chunk(run_ids: Sequence[int]) -> None:
    token, runs = claim_runs(run_ids)
    if not runs:
        return
    with LeaseHeartbeat(lambda: runs_renew_lease(token=token), interval=lease_seconds() / 4):
        walk_and_commit(token, runs)


def runs_renew_lease(*, token: Any) -> int:
    """Push out the lease of the runs this worker holds under ``token``. Returns how many it still holds."""
    return Run.objects.filter(claim_token=token, status=Run.Status.RUNNING).update(
        lease_until=timezone.now() + timedelta(seconds=lease_seconds())
    )


def walk_and_commit(token: Any, runs: list[Run]) -> None:
    now = timezone.now()
    writes = walk_chunk(runs, now)
    commit_retrying(lambda: commit_chunk(token, runs, writes, now), writes)


def walk_chunk(runs: list[Run], now: datetime) -> ChunkWrites:
    """Load what the runs need and walk each as far as it goes now; returns what the chunk will write."""
    bind_chunk_log_context(runs)  # every line logged for this chunk carries its transaction id(s)
    data = load_chunk(runs, now)
    writes = ChunkWrites()
    # Runs walked for the first time: counted as recipients when the chunk commits.
    writes.started = {run.pk for run in runs if run.step_index == 0 and not run.step_results}
    for run in runs:
        try:
            walk(run, data, writes, now)
        except Exception as exc:  # a bug for one run must not block the chunk
            logger.exception("run %s failed", run.pk)
            run.status = Run.Status.FAILED
            run.completed_at = now
            writes.step_runs.append(
                TraceEntry(
                    run,
                    "-",
                    "engine",
                    StepRun.Decision.FAILED,
                    "engine_error",
                    {"error": f"{type(exc).__name__}: {exc}"},
                )
            )
    return writes


def commit_retrying(commit: Callable[[], T], writes: ChunkWrites) -> T:
    """Call ``commit`` (one transaction writing ``writes``), again up to twice if it hits a lock
    conflict; an attempt that rolled back leaves no trace entry or message key behind for the next."""
    walked_trace = len(writes.step_runs)  # the commit hooks add entries of their own (digest joins)
    for attempt in range(3):
        try:
            result = commit()
            step_decisions_of(writes.step_runs)  # clarion_step_decisions_total, counted in memory
            return result
        except OperationalError:  # a deadlock or lock timeout between concurrent chunks: try again
            if attempt == 2:
                raise
            logger.warning("chunk commit hit a lock conflict; retrying", exc_info=True)
            for message in writes.messages:
                message.pk = None
            del writes.step_runs[walked_trace:]
            time.sleep(0.05 * (attempt + 1))
    raise AssertionError("unreachable")


def commit_chunk(token: Any, runs: list[Run], writes: ChunkWrites, now: datetime) -> None:
    with transaction.atomic():
        # Only write for runs this worker still holds (a lease may have expired meanwhile).
        still_held = set(
            Run.objects.select_for_update()
            .filter(in_array("pk", [r.pk for r in runs]), claim_token=token)
            .values_list("pk", flat=True)
        )
        if len(still_held) != len(runs):
            logger.warning("lost the claim on %d run(s); skipping their writes", len(runs) - len(still_held))
        held_runs = [r for r in runs if r.pk in still_held]
        commit_writes(held_runs, runs, writes, now)
        save_runs(held_runs)


def commit_writes(held_runs: list[Run], runs: list[Run], writes: ChunkWrites, now: datetime) -> None:
    """Inside the caller's transaction, everything the walk of ``held_runs`` decided except the runs'
    own state: the step types' commit hooks (digest joins, held messages — they may still change a
    run's state), messages, inbox rows, trace, analytics counts; then the outbound messages are
    handed to delivery and the runs to wake are enqueued on commit. ``runs``: the whole chunk
    (what finished runs are counted against)."""
    writes.tally = Tally()  # a new one per attempt: a rolled-back attempt's counts are dropped with it
    writes.versions = {run.workflow_version_id: run.workflow_version for run in runs}
    still_held = {run.pk for run in held_runs}
    wake: list[int] = []
    for kind in sorted(all_step_types(), key=lambda kind: kind.commit_order):
        wake.extend(kind.commit(writes, still_held, now))
    messages = [m for m in writes.messages if m.run_id in still_held]
    messages_insert(messages=messages)
    inbox_messages_create(
        items=[
            (item, writes.messages[message_index])
            for item, message_index, run, _step_id in writes.inbox
            if run.pk in still_held
        ]
    )
    _insert_trace(writes.step_runs, still_held, now)
    _count(held_runs, messages, writes, now)
    outbound_ids = [m.pk for m in messages if m.channel != "in_app" and m.pk is not None]
    if outbound_ids:
        delivery_hand_off(outbound_ids)
    if wake:
        enqueue_on_commit(ADVANCE_TASK, sorted(set(wake)))


FINISHED = (Run.Status.COMPLETED, Run.Status.CANCELLED, Run.Status.FAILED)


def _count(held_runs: list[Run], messages: list[Any], writes: ChunkWrites, now: datetime) -> None:
    """The chunk's analytics counts, one INSERT in its transaction (docs/analytics.md): recipients
    (runs walked for the first time), every finished run's baseline messages and what became of
    each (``accounting``), and the segments of the SMS bodies created. From memory only."""
    tally = writes.tally
    for run in held_runs:
        if run.pk in writes.started:
            accounting.count_recipient(tally, run, now)
        if run.status in FINISHED:
            accounting.count_finished(tally, run, now)
    for message in messages:
        if message.channel == "sms":
            data = message.data or {}
            dims = accounting.Dims(
                message.environment_id,
                now,
                str(data.get("workflow", "")),
                str(data.get("category", "")),
                "sms",
                str(data.get("template", "")),
            )
            accounting.count_sms_body(tally, dims, message.body)
    tally.write()


def _insert_trace(entries: list[TraceEntry | StepRun], held: set[int], now: datetime) -> None:
    """The chunk's decisions as StepRun rows, in the order they were taken: one insert, no model instances."""
    rows = []
    for entry in entries:
        if isinstance(entry, StepRun):  # a step type that builds its StepRun itself
            entry = TraceEntry(entry.run, entry.step_id, entry.step_type, entry.decision, entry.reason, entry.detail)
        if entry.run.pk in held:
            rows.append(
                {
                    "run_id": entry.run.pk,
                    "step_id": entry.step_id,
                    "step_type": entry.step_type,
                    "decision": entry.decision,
                    "reason": entry.reason,
                    "detail": entry.detail,
                    "created_at": now,
                }
            )
    rows_insert(StepRun, rows, returning=False)


def stored_status(run: Run) -> str:
    """The status a walked run is written with: one still running (never started a wait or an
    end) goes back to pending, for the ticker to re-drive."""
    return Run.Status.PENDING if run.status == Run.Status.RUNNING else str(run.status)


def run_state(run: Run) -> tuple[Any, ...]:
    """What of a walked run is written (and what tells two runs' states apart)."""
    return (
        stored_status(run),
        run.step_index,
        run.resume_at,
        run.completed_at,
        json.dumps(run.step_results, sort_keys=True),
    )


def save_runs(runs: list[Run]) -> None:
    """Write the runs' new state with one UPDATE per distinct state.

    Runs of one chunk usually went through the same steps and stopped at the same place with the
    same results (ids of what they created live in Message rows, not here), so a chunk of 500
    runs is typically one statement instead of a 500-row ``bulk_update``.
    """
    now = timezone.now()
    groups: dict[tuple[Any, ...], list[int]] = defaultdict(list)
    states: dict[tuple[Any, ...], dict[str, Any]] = {}
    for run in runs:
        key = run_state(run)
        groups[key].append(run.pk)
        states[key] = {
            "status": key[0],
            "step_index": run.step_index,
            "resume_at": run.resume_at,
            "completed_at": run.completed_at,
            "step_results": run.step_results,
        }
    for key, pks in groups.items():
        Run.objects.filter(in_array("pk", pks)).update(
            claim_token=None, lease_until=None, updated_at=now, **states[key]
        )
