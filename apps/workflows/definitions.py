"""Workflow definitions: validation of the authored steps, and their compiled form.

Steps are data (see docs/workflows.md). A branch nests lists of steps; the engine runs a flat
*program* compiled from the tree, and a run's ``step_index`` is its position in that program.
A definition without branches compiles to exactly its own steps, one instruction each. What each
step type accepts is declared by its ``StepType`` (``apps/workflows/steps/``).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

from apps.workflows.steps import (
    CHANNEL_STEP_TYPES,
    TEMPLATE_OPTIONAL_STEP_TYPES,
    Validation,
    known_step_types,
    step_type,
)
from apps.workflows.steps.base import check_expression

__all__ = [
    "CHANNEL_STEP_TYPES",
    "TEMPLATE_OPTIONAL_STEP_TYPES",
    "DefinitionError",
    "compile_steps",
    "iter_steps",
    "program_for",
    "template_keys",
    "validate_steps",
]

STEP_ID = re.compile(r"^[a-zA-Z][a-zA-Z0-9_-]{0,62}$")
MAX_STEPS = 50
MAX_DEPTH = 5
COMMON_FIELDS = {"id", "type", "if", "name"}


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
    name = step.get("type")
    known = known_step_types()
    if not isinstance(name, str) or name not in known:
        errors[f"{where}.type"] = f"unknown step type {name!r}; expected one of {sorted(known)}"
        return 0
    if step.get("if") is not None:
        check_expression(step["if"], f"{where}.if", errors)
    kind = step_type(name)
    unknown = sorted(set(step) - COMMON_FIELDS - kind.fields)
    if unknown:
        errors[where] = f"unknown field(s) {unknown} for a {name} step"
    return kind.validate(
        step,
        where,
        Validation(
            errors=errors,
            nested=lambda steps, nested_where: _validate_list(steps, nested_where, errors, seen, depth=depth + 1),
        ),
    )


def iter_steps(steps: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Every step of a definition, nested ones included, in document order."""
    for step in steps:
        yield step
        if step.get("type") == "branch":
            for branch in step.get("branches", []):
                yield from iter_steps(branch.get("steps", []))
            yield from iter_steps(step.get("else", []))


def template_keys(steps: list[dict[str, Any]]) -> dict[str, str]:
    """template key → channel it is used on (every step type that renders templates says which)."""
    keys: dict[str, str] = {}
    for step in iter_steps(steps):
        name = step.get("type")
        if isinstance(name, str) and name in known_step_types():
            keys.update(step_type(name).template_keys(step))
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
                jump: dict[str, Any] = {"op": "jump", "to": None}
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
