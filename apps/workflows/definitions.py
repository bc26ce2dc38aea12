"""Validation of workflow definitions (steps are data; see docs/workflows.md)."""

from __future__ import annotations

import re
from typing import Any

from apps.core.durations import parse_duration
from apps.core.sandbox import SandboxError, validate_expression

STEP_ID = re.compile(r"^[a-zA-Z][a-zA-Z0-9_-]{0,62}$")
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
STEP_TYPES = {*CHANNEL_STEP_TYPES, "delay"}
MAX_STEPS = 50


class DefinitionError(ValueError):
    """Carries ``errors``: a mapping of JSON path → message."""

    def __init__(self, errors: dict[str, str]) -> None:
        super().__init__("; ".join(f"{k}: {v}" for k, v in errors.items()))
        self.errors = errors


def validate_steps(steps: Any) -> list[dict[str, Any]]:
    """Check the shape of every step and return them unchanged; raise DefinitionError otherwise."""
    errors: dict[str, str] = {}
    if not isinstance(steps, list):
        raise DefinitionError({"steps": "must be a list of step objects"})
    if len(steps) > MAX_STEPS:
        raise DefinitionError({"steps": f"at most {MAX_STEPS} steps"})
    seen: set[str] = set()
    for index, step in enumerate(steps):
        where = f"steps[{index}]"
        if not isinstance(step, dict):
            errors[where] = "must be an object"
            continue
        step_id = step.get("id")
        if not isinstance(step_id, str) or not STEP_ID.match(step_id):
            errors[f"{where}.id"] = "required: letters, digits, '-' or '_', starting with a letter"
        elif step_id in seen:
            errors[f"{where}.id"] = f"duplicate step id '{step_id}'"
        else:
            seen.add(step_id)
        step_type = step.get("type")
        if step_type not in STEP_TYPES:
            errors[f"{where}.type"] = f"unknown step type {step_type!r}; expected one of {sorted(STEP_TYPES)}"
            continue
        condition = step.get("if")
        if condition is not None:
            if not isinstance(condition, str) or not condition.strip():
                errors[f"{where}.if"] = "must be a non-empty expression string"
            else:
                try:
                    validate_expression(condition)
                except SandboxError as exc:
                    errors[f"{where}.if"] = f"invalid expression: {exc}"
        if step_type in CHANNEL_STEP_TYPES:
            template = step.get("template")
            optional = step_type in TEMPLATE_OPTIONAL_STEP_TYPES and template is None
            if not optional and (not isinstance(template, str) or not template):
                errors[f"{where}.template"] = "required: the key of a template for this channel"
        elif step_type == "delay":
            try:
                duration = parse_duration(step.get("for", ""))
                if duration.total_seconds() <= 0:
                    errors[f"{where}.for"] = "must be longer than zero"
            except ValueError as exc:
                errors[f"{where}.for"] = str(exc)
        allowed = {"id", "type", "if", "name"} | (
            {"template"} if step_type in CHANNEL_STEP_TYPES else {"for"} if step_type == "delay" else set()
        )
        unknown = sorted(set(step) - allowed)
        if unknown:
            errors[f"{where}"] = f"unknown field(s) {unknown} for a {step_type} step"
    if errors:
        raise DefinitionError(errors)
    return steps


def template_keys(steps: list[dict[str, Any]]) -> dict[str, str]:
    """template key → channel it is used on."""
    return {
        s["template"]: CHANNEL_STEP_TYPES[s["type"]]
        for s in steps
        if s.get("type") in CHANNEL_STEP_TYPES and s.get("template")
    }
