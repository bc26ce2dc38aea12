"""``throttle``: at most ``limit`` runs per subscriber (and key) within a sliding ``window``."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from apps.core.durations import parse_duration
from apps.workflows.limits import limit_acquire
from apps.workflows.models import Run, StepRun
from apps.workflows.steps.base import (
    ChunkWrites,
    StepType,
    Validation,
    Walk,
    check_duration,
    check_int,
    check_path,
    end,
    path_value,
    register,
    trace,
)


@register
class ThrottleStep(StepType):
    types = ("throttle",)
    fields = frozenset({"limit", "window", "key"})

    def validate(self, step: dict[str, Any], where: str, check: Validation) -> int:
        check_int(step.get("limit"), f"{where}.limit", check.errors, low=1, high=1_000_000)
        check_duration(step, "window", where, check.errors)
        if "key" in step:
            check_path(step["key"], f"{where}.key", check.errors)
        return 0

    def execute(self, walk: Walk, step: dict[str, Any]) -> None:
        throttle(walk.run, step, walk.context, walk.writes, walk.now)


def throttle(run: Run, step: dict[str, Any], context: dict[str, Any], writes: ChunkWrites, now: datetime) -> None:
    step_id = step["id"]
    key_value = path_value(context, step["key"]) if step.get("key") else ""
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
        trace(writes, run, step, StepRun.Decision.EXECUTED, "under_limit", **detail)
        return
    run.step_results[step_id] = {"status": "throttled", **detail}
    trace(writes, run, step, StepRun.Decision.SKIPPED, "throttled", **detail)
    end(run, now)
