"""``exit``: end the run here, with a reason in the trace."""

from __future__ import annotations

from typing import Any

from apps.workflows.models import StepRun
from apps.workflows.steps.base import StepType, Validation, Walk, end, register


@register
class ExitStep(StepType):
    types = ("exit",)
    fields = frozenset({"reason"})

    def validate(self, step: dict[str, Any], where: str, check: Validation) -> int:
        if "reason" in step and not isinstance(step["reason"], str):
            check.errors[f"{where}.reason"] = "must be a string"
        return 0

    def execute(self, walk: Walk, step: dict[str, Any]) -> None:
        walk.run.step_results[step["id"]] = {"status": "exited"}
        walk.trace(step, StepRun.Decision.EXECUTED, "exit", message=step.get("reason", ""))
        end(walk.run, walk.now)
