"""Workflow definitions: validation of the authored steps, and their compiled form.

Steps are data (see docs/workflows.md). A branch nests lists of steps; the engine runs a flat
*program* compiled from the tree, and a run's ``step_index`` is its position in that program.
A definition without branches compiles to exactly its own steps, one instruction each.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

from apps.core.durations import parse_duration
from apps.core.sandbox import SandboxError, validate_expression
from apps.core.schedule import ScheduleError, is_valid_zone, parse_schedule

STEP_ID = re.compile(r"^[a-zA-Z][a-zA-Z0-9_-]{0,62}$")
PATH = re.compile(r"^(payload|subscriber|actor)(\.[A-Za-z0-9_-]+)+$")
# step type -> channel. A webhook step's template is optional (without one the event payload is sent).
CHANNEL_STEP_TYPES = {
    "in_app": "in_app",
    "email": "email",
    "sms": "sms",
    "push": "push",
    "chat": "chat",
    "webhook": "webhook",
}
TEMPLATE_OPTIONAL_STEP_TYPES = {"webhook"}
CONTROL_STEP_TYPES = {"delay", "digest", "branch", "throttle", "escalate", "exit"}
STEP_TYPES = {*CHANNEL_STEP_TYPES, *CONTROL_STEP_TYPES}
STOP_ON = ("seen", "read", "clicked")
MAX_STEPS = 50
MAX_DEPTH = 5
MAX_DIGEST_EVENTS = 10_000

COMMON_FIELDS = {"id", "type", "if", "name"}
FIELDS: dict[str, set[str]] = {
    **{t: {"template"} for t in CHANNEL_STEP_TYPES},
    "delay": {"for", "until", "until_next", "timezone"},
    "digest": {"window", "schedule", "key", "lookback", "max_events", "timezone"},
    "branch": {"branches", "else"},
    "throttle": {"limit", "window", "key"},
    "escalate": {"channels", "stop_on"},
    "exit": {"reason"},
}


class DefinitionError(ValueError):
    """Carries ``errors``: a mapping of JSON path → message."""

    def __init__(self, errors: dict[str, str]) -> None:
        super().__init__("; ".join(f"{k}: {v}" for k, v in errors.items()))
        self.errors = errors


def validate_steps(steps: Any) -> list[dict[str, Any]]:
    """Check the shape of every step (nested ones too) and return them; raise DefinitionError otherwise."""
    errors: dict[str, str] = {}
    if not isinstance(steps, list):
        raise DefinitionError({"steps": "must be a list of step objects"})
    seen: set[str] = set()
    count = _validate_list(steps, "steps", errors, seen, depth=0)
    if count > MAX_STEPS:
        errors["steps"] = f"at most {MAX_STEPS} steps in all (branches included); this has {count}"
    if errors:
        raise DefinitionError(errors)
    return steps


def _validate_list(steps: Any, where: str, errors: dict[str, str], seen: set[str], *, depth: int) -> int:
    if not isinstance(steps, list):
        errors[where] = "must be a list of step objects"
        return 0
    if depth > MAX_DEPTH:
        errors[where] = f"branches nest at most {MAX_DEPTH} deep"
        return 0
    count = 0
    for index, step in enumerate(steps):
        count += 1 + _validate_step(step, f"{where}[{index}]", errors, seen, depth=depth)
    return count


def _duration(step: dict[str, Any], name: str, where: str, errors: dict[str, str], *, zero_ok: bool = False) -> None:
    try:
        duration = parse_duration(step.get(name, ""))
    except ValueError as exc:
        errors[f"{where}.{name}"] = str(exc)
        return
    if duration.total_seconds() < 0 or (not zero_ok and duration.total_seconds() == 0):
        errors[f"{where}.{name}"] = "must be longer than zero"


def _path(value: Any, where: str, errors: dict[str, str]) -> None:
    if not isinstance(value, str) or not PATH.match(value):
        errors[where] = "must be a path such as 'payload.post_id' (under payload, subscriber or actor)"


def _int(value: Any, where: str, errors: dict[str, str], *, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        errors[where] = f"must be a whole number from {low} to {high}"


def _expression(value: Any, where: str, errors: dict[str, str]) -> None:
    if not isinstance(value, str) or not value.strip():
        errors[where] = "must be a non-empty expression string"
        return
    try:
        validate_expression(value)
    except SandboxError as exc:
        errors[where] = f"invalid expression: {exc}"


def _validate_step(step: Any, where: str, errors: dict[str, str], seen: set[str], *, depth: int) -> int:
    """Validate one step; return how many nested steps it holds."""
    if not isinstance(step, dict):
        errors[where] = "must be an object"
        return 0
    step_id = step.get("id")
    if not isinstance(step_id, str) or not STEP_ID.match(step_id):
        errors[f"{where}.id"] = "required: letters, digits, '-' or '_', starting with a letter"
    elif step_id in seen:
        errors[f"{where}.id"] = f"duplicate step id '{step_id}' (ids are unique across branches too)"
    else:
        seen.add(step_id)
    step_type = step.get("type")
    if step_type not in STEP_TYPES:
        errors[f"{where}.type"] = f"unknown step type {step_type!r}; expected one of {sorted(STEP_TYPES)}"
        return 0
    if step.get("if") is not None:
        _expression(step["if"], f"{where}.if", errors)
    unknown = sorted(set(step) - COMMON_FIELDS - FIELDS[step_type])
    if unknown:
        errors[where] = f"unknown field(s) {unknown} for a {step_type} step"

    nested = 0
    if step_type in CHANNEL_STEP_TYPES:
        template = step.get("template")
        optional = step_type in TEMPLATE_OPTIONAL_STEP_TYPES and template is None
        if not optional and (not isinstance(template, str) or not template):
            errors[f"{where}.template"] = "required: the key of a template for this channel"
    elif step_type == "delay":
        modes = [name for name in ("for", "until", "until_next") if name in step]
        if len(modes) != 1:
            errors[where] = "a delay needs exactly one of 'for' (a duration), 'until' (a payload path) or 'until_next'"
        elif modes[0] == "for":
            _duration(step, "for", where, errors)
        elif modes[0] == "until":
            _path(step["until"], f"{where}.until", errors)
        else:
            try:
                parse_schedule(step["until_next"])
            except ScheduleError as exc:
                errors[f"{where}.until_next"] = str(exc)
        _timezone(step, where, errors)
    elif step_type == "digest":
        modes = [name for name in ("window", "schedule") if name in step]
        if len(modes) != 1:
            errors[where] = "a digest needs exactly one of 'window' (a duration) or 'schedule' (e.g. 'daily 09:00')"
        elif modes[0] == "window":
            _duration(step, "window", where, errors)
        else:
            try:
                parse_schedule(step["schedule"], forbid_window=True)
            except ScheduleError as exc:
                errors[f"{where}.schedule"] = str(exc)
        if "key" in step:
            _path(step["key"], f"{where}.key", errors)
        if "lookback" in step:
            _duration(step, "lookback", where, errors)
        if "max_events" in step:
            _int(step["max_events"], f"{where}.max_events", errors, low=2, high=MAX_DIGEST_EVENTS)
        _timezone(step, where, errors)
    elif step_type == "throttle":
        _int(step.get("limit"), f"{where}.limit", errors, low=1, high=1_000_000)
        _duration(step, "window", where, errors)
        if "key" in step:
            _path(step["key"], f"{where}.key", errors)
    elif step_type == "escalate":
        nested = 0
        _validate_escalation(step, where, errors)
    elif step_type == "branch":
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
            _expression(branch.get("if"), f"{bwhere}.if", errors)
            if "end" in branch and not isinstance(branch["end"], bool):
                errors[f"{bwhere}.end"] = "must be true or false"
            nested += _validate_list(branch.get("steps", []), f"{bwhere}.steps", errors, seen, depth=depth + 1)
        if "else" in step:
            nested += _validate_list(step["else"], f"{where}.else", errors, seen, depth=depth + 1)
    elif step_type == "exit" and "reason" in step and not isinstance(step["reason"], str):
        errors[f"{where}.reason"] = "must be a string"
    return nested


def _timezone(step: dict[str, Any], where: str, errors: dict[str, str]) -> None:
    if "timezone" in step and (not isinstance(step["timezone"], str) or not is_valid_zone(step["timezone"])):
        errors[f"{where}.timezone"] = "must be an IANA timezone such as 'Europe/Paris'"


def _validate_escalation(step: dict[str, Any], where: str, errors: dict[str, str]) -> None:
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


def iter_steps(steps: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Every step of a definition, nested ones included, in document order."""
    for step in steps:
        yield step
        if step.get("type") == "branch":
            for branch in step.get("branches", []):
                yield from iter_steps(branch.get("steps", []))
            yield from iter_steps(step.get("else", []))


def template_keys(steps: list[dict[str, Any]]) -> dict[str, str]:
    """template key → channel it is used on (channel steps and escalation stages)."""
    keys: dict[str, str] = {}
    for step in iter_steps(steps):
        step_type = step.get("type")
        if step_type in CHANNEL_STEP_TYPES and step.get("template"):
            keys[step["template"]] = CHANNEL_STEP_TYPES[step_type]
        elif step_type == "escalate":
            for stage in step.get("channels", []):
                keys[stage["template"]] = stage["channel"]
    return keys


# --------------------------------------------------------------------------------------------
# The compiled program
# --------------------------------------------------------------------------------------------
#
# Instructions: {"op": "step", "step": {...}}
#               {"op": "branch", "step": {...}, "targets": [index per branch], "else": index, "after": index}
#               {"op": "jump", "to": index}      (end of a branch's steps → after the branch)
#               {"op": "end", "step": {...}}     (a branch with "end": true finished)


def _emit(steps: list[dict[str, Any]], program: list[dict[str, Any]]) -> None:
    for step in steps:
        if step["type"] != "branch":
            program.append({"op": "step", "step": step})
            continue
        instruction: dict[str, Any] = {"op": "branch", "step": step, "targets": [], "else": None}
        program.append(instruction)
        jumps: list[dict[str, Any]] = []
        for branch in step["branches"]:
            instruction["targets"].append(len(program))
            _emit(branch.get("steps", []), program)
            if branch.get("end"):
                program.append({"op": "end", "step": step})
            else:
                jump = {"op": "jump", "to": None}
                program.append(jump)
                jumps.append(jump)
        instruction["else"] = len(program)
        _emit(step.get("else", []), program)
        instruction["after"] = len(program)
        for jump in jumps:
            jump["to"] = len(program)


def compile_steps(steps: list[dict[str, Any]]) -> list[dict[str, Any]]:
    program: list[dict[str, Any]] = []
    _emit(steps, program)
    return program


def program_for(version: Any) -> list[dict[str, Any]]:
    """The compiled program of a WorkflowVersion, compiled once per loaded instance."""
    program = version.__dict__.get("_compiled_program")
    if program is None:
        program = version.__dict__["_compiled_program"] = compile_steps(version.steps)
    return program
