"""The walk: one run through its compiled program, step by step, until it must wait or it ends.

Control flow (jumps, branch ends, ``if`` conditions) lives here; what a step does is its step
type's ``execute`` (``apps/workflows/steps/``).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from apps.core.sandbox import SandboxError, evaluate_expression
from apps.templates.rendering import build_render_context
from apps.workflows.definitions import program_for
from apps.workflows.models import Run, StepRun
from apps.workflows.steps import ChunkData, ChunkWrites, Stop, Walk, all_step_types, step_type
from apps.workflows.steps.base import end, time_guarded, trace
from apps.workflows.steps.branch import BranchStep


def walk(run: Run, data: ChunkData, writes: ChunkWrites, now: datetime) -> None:
    try:
        _walk_program(run, data, writes, now)
    except Stop:
        return


def _walk_program(run: Run, data: ChunkData, writes: ChunkWrites, now: datetime) -> None:
    program = program_for(run.workflow_version)
    event = run.event
    context = build_render_context(payload=event.payload, subscriber=run.subscriber.as_context(), actor=event.actor)
    state = Walk(run=run, data=data, writes=writes, now=now, context=context)
    for kind in all_step_types():
        kind.on_walk_start(state)

    while run.step_index < len(program):
        instruction = program[run.step_index]
        op = instruction["op"]
        if op == "jump":
            run.step_index = instruction["to"]
            continue
        step = instruction["step"]
        if op == "end":
            trace(writes, run, step, StepRun.Decision.EXECUTED, "branch_ended")
            end(run, now)
        step_id = step["id"]
        in_progress = bool(run.step_results.get(step_id, {}).get("in_progress"))
        condition = step.get("if")
        if condition and not in_progress:
            try:
                passed = bool(
                    time_guarded(
                        data,
                        ("if", run.workflow_version_id, step_id),
                        evaluate_expression,
                        condition,
                        {**context, "steps": run.step_results},
                    )
                )
            except SandboxError as exc:
                trace(
                    writes, run, step, StepRun.Decision.FAILED, "condition_error", condition=condition, error=str(exc)
                )
                end(run, now, Run.Status.FAILED)
            if not passed:
                trace(writes, run, step, StepRun.Decision.SKIPPED, "condition_false", condition=condition)
                run.step_results[step_id] = {"status": "skipped", "reason": "condition_false"}
                run.step_index = _after(instruction, run.step_index, program)
                continue

        kind = step_type(step["type"])
        if op == "branch":
            assert isinstance(kind, BranchStep)
            run.step_index = kind.take(state, instruction)
            continue
        kind.execute(state, step)
        run.step_index += 1

    run.status = Run.Status.COMPLETED
    run.resume_at = None
    run.completed_at = now


def _after(instruction: dict[str, Any], index: int, program: list[dict[str, Any]]) -> int:
    """The instruction after this one; a whole branch is skipped when its own condition is false."""
    return int(instruction["after"]) if instruction["op"] == "branch" else index + 1
