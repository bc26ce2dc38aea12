"""``escalate``: channels in order, each after its wait from the start, until the subscriber engages."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from apps.core.durations import parse_duration
from apps.core.schedule import parse_timestamp
from apps.workflows.models import Run, StepRun
from apps.workflows.steps.base import (
    ChunkData,
    ChunkPlan,
    ChunkWrites,
    StepType,
    Validation,
    Walk,
    register,
    trace,
    wait,
)
from apps.workflows.steps.channel import CHANNEL_STEP_TYPES, prepare_channels, send_channel

STOP_ON = ("seen", "read", "clicked")


@register
class EscalateStep(StepType):
    types = ("escalate",)
    fields = frozenset({"channels", "stop_on"})

    def validate(self, step: dict[str, Any], where: str, check: Validation) -> int:
        validate_escalation(step, where, check.errors)
        return 0

    def template_keys(self, step: dict[str, Any]) -> dict[str, str]:
        return {stage["template"]: stage["channel"] for stage in step.get("channels", [])}

    def prepare(self, plan: ChunkPlan, data: ChunkData, now: datetime) -> None:
        prepare_channels(plan, data, now)  # its stages are channel sends; loaded once for both

    def execute(self, walk: Walk, step: dict[str, Any]) -> None:
        escalate(walk.run, step, walk.context, walk.data, walk.writes, walk.now)


def validate_escalation(step: dict[str, Any], where: str, errors: dict[str, str]) -> None:
    stop_on = step.get("stop_on", "read")
    if stop_on not in STOP_ON:
        errors[f"{where}.stop_on"] = f"must be one of {list(STOP_ON)}"
    channels = step.get("channels")
    if not isinstance(channels, list) or not channels:
        errors[f"{where}.channels"] = "required: a non-empty list of {'channel', 'template', 'after'} objects"
        return
    used: set[str] = set()
    previous = None
    for index, stage in enumerate(channels):
        swhere = f"{where}.channels[{index}]"
        if not isinstance(stage, dict):
            errors[swhere] = "must be an object with 'channel', 'template' and optionally 'after'"
            continue
        extra = sorted(set(stage) - {"channel", "template", "after"})
        if extra:
            errors[swhere] = f"unknown field(s) {extra}"
        channel = stage.get("channel")
        if channel not in CHANNEL_STEP_TYPES or channel == "webhook":
            errors[f"{swhere}.channel"] = "must be one of in_app, email, sms, push, chat"
        elif channel in used:
            errors[f"{swhere}.channel"] = f"channel '{channel}' appears twice in this escalation"
        else:
            used.add(channel)
        if not isinstance(stage.get("template"), str) or not stage.get("template"):
            errors[f"{swhere}.template"] = "required: the key of a template for this channel"
        if "after" in stage:
            try:
                after = parse_duration(stage["after"])
            except ValueError as exc:
                errors[f"{swhere}.after"] = str(exc)
                continue
            if previous is not None and after < previous:
                errors[f"{swhere}.after"] = "waits are measured from the start of the escalation and cannot go down"
            previous = after
        elif previous is not None:
            errors[f"{swhere}.after"] = "required after the first channel: how long after the start to send"


def escalate(
    run: Run, step: dict[str, Any], context: dict[str, Any], data: ChunkData, writes: ChunkWrites, now: datetime
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
        trace(
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
            trace(
                writes,
                run,
                step,
                StepRun.Decision.WAITING,
                "escalation_wait",
                next_channel=stage["channel"],
                until=due.isoformat(),
                stop_on=stop_on,
            )
            wait(run, due)
        outcome = send_channel(
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
        refined = _refined_reason(outcome, writes)
        if refined:  # which lever, where the outcome alone does not tell (docs/analytics.md)
            state.setdefault("reasons", {})[stage["channel"]] = refined
        state["stage"] += 1
    run.step_results[step_id] = {**state, "in_progress": False, "status": "completed"}


def _refined_reason(outcome: str, writes: ChunkWrites) -> str | None:
    """An unsubscribed subscriber's skip, or why a message was held: read from the decision the
    stage just traced (its last trace entry)."""
    if outcome not in ("preference", "held") or not writes.step_runs:
        return None
    last = writes.step_runs[-1]
    if outcome == "preference":
        return "unsubscribed" if last.detail.get("rule") == "unsubscribed" else None
    return str(last.reason)
