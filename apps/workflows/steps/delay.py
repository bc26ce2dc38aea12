"""``delay``: wait for a duration, until a timestamp in the data, or until a schedule next allows."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from apps.core.durations import parse_duration
from apps.core.schedule import ScheduleError, parse_schedule, parse_timestamp
from apps.workflows.models import Run, StepRun
from apps.workflows.steps.base import (
    ChunkWrites,
    StepType,
    Validation,
    Walk,
    check_duration,
    check_path,
    check_timezone,
    path_value,
    register,
    subscriber_zone,
    trace,
    wait,
)


@register
class DelayStep(StepType):
    types = ("delay",)
    fields = frozenset({"for", "until", "until_next", "timezone"})

    def validate(self, step: dict[str, Any], where: str, check: Validation) -> int:
        errors = check.errors
        modes = [name for name in ("for", "until", "until_next") if name in step]
        if len(modes) != 1:
            errors[where] = "a delay needs exactly one of 'for' (a duration), 'until' (a payload path) or 'until_next'"
        elif modes[0] == "for":
            check_duration(step, "for", where, errors)
        elif modes[0] == "until":
            check_path(step["until"], f"{where}.until", errors)
        else:
            try:
                parse_schedule(step["until_next"])
            except ScheduleError as exc:
                errors[f"{where}.until_next"] = str(exc)
        check_timezone(step, where, errors)
        return 0

    def on_walk_start(self, walk: Walk) -> None:
        trace_ended_delays(walk.run, walk.writes, walk.now)

    def execute(self, walk: Walk, step: dict[str, Any]) -> None:
        delay(walk.run, step, walk.context, walk.writes, walk.now)


def trace_ended_delays(run: Run, writes: ChunkWrites, now: datetime) -> None:
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


def delay(run: Run, step: dict[str, Any], context: dict[str, Any], writes: ChunkWrites, now: datetime) -> None:
    step_id = step["id"]
    if "for" in step:
        until = now + parse_duration(step["for"])
        detail: dict[str, Any] = {"duration": step["for"]}
    elif "until" in step:
        raw = path_value(context, step["until"])
        if raw is None or raw == "":
            run.step_results[step_id] = {"status": "skipped", "reason": "delay_timestamp_missing"}
            trace(writes, run, step, StepRun.Decision.SKIPPED, "delay_timestamp_missing", path=step["until"])
            return
        parsed = parse_timestamp(raw)
        if parsed is None:
            run.step_results[step_id] = {"status": "skipped", "reason": "delay_timestamp_invalid"}
            trace(writes, run, step, StepRun.Decision.SKIPPED, "delay_timestamp_invalid", path=step["until"], value=raw)
            return
        if parsed <= now:
            run.step_results[step_id] = {"status": "skipped", "reason": "delay_timestamp_past"}
            trace(
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
        tz = subscriber_zone(run, step)
        next_allowed = parse_schedule(step["until_next"]).next_allowed(now, tz)
        if next_allowed is None:
            run.step_results[step_id] = {"status": "skipped", "reason": "within_allowed_time"}
            trace(
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
    trace(writes, run, step, StepRun.Decision.WAITING, "delay", until=until.isoformat(), **detail)
    wait(run, until)
