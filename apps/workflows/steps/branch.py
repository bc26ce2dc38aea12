"""``branch``: if / else-if / else over sandboxed expressions; the first true branch is taken.

Branches are compiled into the flat program (``definitions.compile_steps``): taking a branch is a
jump. A branch with ``end: true`` ends the run after its steps.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from apps.core.sandbox import SandboxError, evaluate_expression
from apps.workflows.models import Run, StepRun
from apps.workflows.steps.base import (
    ChunkData,
    ChunkWrites,
    StepType,
    Validation,
    Walk,
    check_expression,
    end,
    register,
    time_guarded,
    trace,
)


@register
class BranchStep(StepType):
    types = ("branch",)
    fields = frozenset({"branches", "else"})

    def validate(self, step: dict[str, Any], where: str, check: Validation) -> int:
        errors = check.errors
        nested = 0
        branches = step.get("branches")
        if not isinstance(branches, list) or not branches:
            errors[f"{where}.branches"] = "required: a non-empty list of {'if': ..., 'steps': [...]} objects"
            branches = []
        for index, branch in enumerate(branches):
            bwhere = f"{where}.branches[{index}]"
            if not isinstance(branch, dict):
                errors[bwhere] = "must be an object with 'if' and 'steps'"
                continue
            extra = sorted(set(branch) - {"if", "steps", "end", "name"})
            if extra:
                errors[bwhere] = f"unknown field(s) {extra}; a branch has 'if', 'steps', 'end' and 'name'"
            check_expression(branch.get("if"), f"{bwhere}.if", errors)
            if "end" in branch and not isinstance(branch["end"], bool):
                errors[f"{bwhere}.end"] = "must be true or false"
            nested += check.nested(branch.get("steps", []), f"{bwhere}.steps")
        if "else" in step:
            nested += check.nested(step["else"], f"{where}.else")
        return nested

    def take(self, walk: Walk, instruction: dict[str, Any]) -> int:
        """Evaluate the branches in order; returns the index of the instruction to go on at."""
        return branch(walk.run, instruction, walk.context, walk.data, walk.writes, walk.now)


def branch(
    run: Run, instruction: dict[str, Any], context: dict[str, Any], data: ChunkData, writes: ChunkWrites, now: datetime
) -> int:
    step = instruction["step"]
    scope = {**context, "steps": run.step_results}
    for index, branch in enumerate(step["branches"]):
        try:
            condition = branch["if"]
            taken = bool(
                time_guarded(
                    data,
                    ("branch", run.workflow_version_id, step["id"], index),
                    evaluate_expression,
                    condition,
                    scope,
                )
            )
        except SandboxError as exc:
            trace(
                writes,
                run,
                step,
                StepRun.Decision.FAILED,
                "condition_error",
                branch=index,
                condition=branch["if"],
                error=str(exc),
            )
            end(run, now, Run.Status.FAILED)
        if taken:
            run.step_results[step["id"]] = {"status": "taken", "branch": index, "name": branch.get("name", "")}
            trace(
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
    trace(writes, run, step, StepRun.Decision.EXECUTED, "branch_else", branches=len(step["branches"]))
    return int(instruction["else"])
