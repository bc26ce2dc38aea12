"""``digest``: events of a workflow for one subscriber (and key) collected into one bucket, and the
workflow goes on once, for all of them, when the bucket closes (see ``apps.workflows.digests``)."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from apps.core.durations import parse_duration
from apps.core.schedule import ScheduleError, parse_schedule
from apps.workflows import accounting, digests
from apps.workflows.digests import DigestJoin
from apps.workflows.models import Run, StepRun, WorkflowVersion
from apps.workflows.steps.base import (
    ChunkData,
    ChunkPlan,
    ChunkWrites,
    StepType,
    Validation,
    Walk,
    check_duration,
    check_int,
    check_path,
    check_timezone,
    event_item,
    path_value,
    reached_at,
    register,
    subscriber_zone,
    trace,
    wait,
)

MAX_DIGEST_EVENTS = 10_000
STRAGGLER_RECHECK = timedelta(seconds=1)


@register
class DigestStep(StepType):
    types = ("digest",)
    fields = frozenset({"window", "schedule", "key", "lookback", "max_events", "timezone"})
    commit_order = 10

    def validate(self, step: dict[str, Any], where: str, check: Validation) -> int:
        errors = check.errors
        modes = [name for name in ("window", "schedule") if name in step]
        if len(modes) != 1:
            errors[where] = "a digest needs exactly one of 'window' (a duration) or 'schedule' (e.g. 'daily 09:00')"
        elif modes[0] == "window":
            check_duration(step, "window", where, errors)
        else:
            try:
                parse_schedule(step["schedule"], forbid_window=True)
            except ScheduleError as exc:
                errors[f"{where}.schedule"] = str(exc)
        if "key" in step:
            check_path(step["key"], f"{where}.key", errors)
        if "lookback" in step:
            check_duration(step, "lookback", where, errors)
        if "max_events" in step:
            check_int(step["max_events"], f"{where}.max_events", errors, low=2, high=MAX_DIGEST_EVENTS)
        check_timezone(step, where, errors)
        return 0

    def prepare(self, plan: ChunkPlan, data: ChunkData, now: datetime) -> None:
        """Close the buckets whose leaders are here (unless events of their window are still on the
        way) and load the events of every digest a run of the chunk sends or carries.

        A leader's state names no bucket (so that a chunk of leaders shares one state and is saved
        with one UPDATE): its bucket is the one it leads (``DigestBucket.leader_run``), one query
        for the chunk. States written before carry ``bucket`` and are read as they are.
        """
        leading: set[int] = set()  # leaders about to send: their bucket closes now
        carrying: set[int] = set()  # runs that sent a digest earlier and go on with it
        known: dict[tuple[int, str], int] = {}
        for run in plan.runs:
            for step_id, result in run.step_results.items():
                if result.get("type") != "digest":
                    continue
                if result.get("in_progress") and result.get("role") == digests.ROLE_LEADER:
                    leading.add(run.pk)
                elif result.get("status") == "sent":
                    carrying.add(run.pk)
                else:
                    continue
                if result.get("bucket"):
                    known[(run.pk, step_id)] = result["bucket"]
        if not leading and not carrying:
            return
        buckets = digest_buckets(data)
        buckets.update(digests.digests_led_by(run_pks=(leading | carrying) - {run for run, _ in known}))
        buckets.update(known)
        leader_bucket = {run_pk: bucket_pk for (run_pk, _), bucket_pk in buckets.items() if run_pk in leading}
        carried_buckets = {bucket_pk for (run_pk, _), bucket_pk in buckets.items() if run_pk in carrying}
        held_open = digests.digests_awaiting_stragglers(leader_bucket=leader_bucket, now=now)
        data.digest_postponed = {run_pk for run_pk, bucket_pk in leader_bucket.items() if bucket_pk in held_open}
        leader_bucket = {run_pk: bucket_pk for run_pk, bucket_pk in leader_bucket.items() if bucket_pk not in held_open}
        data.digest_events = digests.digests_close_for_leaders(leader_bucket=leader_bucket, now=now)
        if carried_buckets - set(data.digest_events):
            data.digest_events.update(
                digests.digest_events(bucket_pks=sorted(carried_buckets - set(data.digest_events)))
            )

    def on_walk_start(self, walk: Walk) -> None:
        carried = digest_context(walk.run, walk.data)
        if carried is not None:
            walk.context["digest"] = carried

    def execute(self, walk: Walk, step: dict[str, Any]) -> None:
        if digest(walk.run, step, walk.context, walk.data, walk.writes, walk.now):
            walk.context["digest"] = digest_context(walk.run, walk.data)

    def stops_walk(self, run: Run, step: dict[str, Any]) -> bool:
        # A run that joins now waits in its bucket (as its leader, a member, or passed through under
        # a look-back and woken by a new task): the walk never goes past the step.
        return not (run.step_results.get(step["id"]) or {}).get("in_progress")

    def commit(self, writes: ChunkWrites, held_runs: set[int], now: datetime) -> list[int]:
        wake: list[int] = []
        joins = [j for j in writes.digest_joins if j.run.pk in held_runs]
        if joins:
            wake.extend(apply_digest_joins(joins, writes, now))
        sent = {bucket: leader for bucket, leader in writes.digests_sent.items() if leader in held_runs}
        if sent:
            members = digests.digest_members_complete(sent=sent, now=now)
            count_merged_members(members, writes, now)
        return wake


def count_merged_members(members: list[digests.MergedMembers], writes: ChunkWrites, now: datetime) -> None:
    """Count the runs a sent digest completed as finished (their baseline messages after the digest
    step were merged into it), from the versions the chunk holds; a member pinned to another
    version of the workflow (republished while the bucket was open) costs one query for those."""
    missing = {m.workflow_version_id for m in members} - set(writes.versions)
    if missing:
        writes.versions.update(WorkflowVersion.objects.select_related("workflow").in_bulk(missing))
    for group in members:
        run = Run(
            environment_id=group.environment_id,
            workflow_version=writes.versions[group.workflow_version_id],
            step_index=group.step_index,
            step_results=group.step_results,
            status=Run.Status.COMPLETED,
        )
        accounting.count_finished(writes.tally, run, now, ended_by="digest_merged", times=group.runs)


def digest_buckets(data: ChunkData) -> dict[tuple[int, str], int]:
    """(run pk, digest step id) → the bucket that run leads, for the runs of this chunk that send or
    carry a digest (filled by ``DigestStep.prepare``; kept with the chunk's other loads)."""
    buckets: dict[tuple[int, str], int] = vars(data).setdefault("digest_buckets", {})
    return buckets


def digest_context(run: Run, data: ChunkData) -> dict[str, Any] | None:
    """The most recent digest this run carried, as templates see it (``digest.events``…)."""
    latest: dict[str, Any] | None = None
    buckets = digest_buckets(data)
    for step_id, result in run.step_results.items():
        if result.get("type") != "digest" or result.get("status") != "sent":
            continue
        bucket = result.get("bucket") or buckets.get((run.pk, step_id))
        # passed straight through (look-back): a digest of one, itself
        events = data.digest_events.get(bucket, []) if bucket else [event_item(run)]
        latest = {"count": len(events), "key": result.get("key", ""), "events": events}
    return latest


def digest(
    run: Run, step: dict[str, Any], context: dict[str, Any], data: ChunkData, writes: ChunkWrites, now: datetime
) -> bool:
    """Join the digest, or (as its leader, once it closed) carry it on. True when it carries it on."""
    step_id = step["id"]
    result = run.step_results.get(step_id) or {}
    role = result.get("role")
    if result.get("in_progress") and role == digests.ROLE_LEADER:
        if run.pk in data.digest_postponed:
            wait(run, now + STRAGGLER_RECHECK)
        bucket = result.get("bucket") or digest_buckets(data).get((run.pk, step_id))
        if bucket is None:
            raise RuntimeError(f"digest leader run {run.pk} leads no bucket of step {step_id!r}")
        events = data.digest_events.get(bucket, [])
        # No bucket pk in the state: leaders that sent digests of the same size share one state.
        run.step_results[step_id] = {
            "type": "digest",
            "status": "sent",
            "key": result.get("key", ""),
            "count": len(events),
        }
        writes.digests_sent[bucket] = run.pk
        trace(
            writes,
            run,
            step,
            StepRun.Decision.EXECUTED,
            "digest_sent",
            bucket=bucket,
            key=result.get("key", ""),
            count=len(events),
        )
        return True
    if result.get("in_progress") and role == digests.ROLE_PASSTHROUGH:
        run.step_results[step_id] = {"type": "digest", "status": "sent", "key": result.get("key", ""), "count": 1}
        trace(writes, run, step, StepRun.Decision.EXECUTED, "digest_lookback_passthrough", key=result.get("key", ""))
        return True
    if result.get("in_progress"):  # a member woken by mistake: it waits for its leader
        wait(run, None)

    key_value = path_value(context, step["key"]) if step.get("key") else ""
    digest_key = "" if key_value is None else str(key_value)
    if "window" in step:
        closes_at = reached_at(run, now) + parse_duration(step["window"])
    else:
        closes_at = parse_schedule(step["schedule"]).next_start(reached_at(run, now), subscriber_zone(run, step))
    writes.digest_joins.append(
        DigestJoin(
            run=run,
            step_id=step_id,
            scope=digests.workflow_scope(workflow_id=run.workflow_version.workflow_id, step_id=step_id, key=digest_key),
            digest_key=digest_key,
            closes_at=closes_at,
            lookback=parse_duration(step["lookback"]) if step.get("lookback") else None,
            max_events=step.get("max_events"),
            reached_at=reached_at(run, now),
        )
    )
    # The bucket is chosen when the chunk commits (_apply_digest_joins); until then it waits.
    run.step_results[step_id] = {"type": "digest", "in_progress": True, "key": digest_key}
    wait(run, None)
    return False  # unreachable


def apply_digest_joins(joins: list[DigestJoin], writes: ChunkWrites, now: datetime) -> list[int]:
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
            trace(writes, run, step, StepRun.Decision.EXECUTED, "digest_lookback_quiet", key=join.digest_key)
            continue
        if result.role == digests.ROLE_LEADER:
            # The bucket records its leader (DigestBucket.leader_run): the state names none, so the
            # leaders of a chunk share one state with its members' and are saved together.
            run.resume_at = result.closes_at
            if result.due_now:
                wake.append(run.pk)
        else:
            run.resume_at = None
        trace(
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
