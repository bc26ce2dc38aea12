"""Payload validation against a workflow's optional JSON Schema (Draft 2020-12)."""

from __future__ import annotations

import json
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError, ValidationError

MAX_ERRORS = 50
_VALIDATORS: dict[str, Draft202012Validator] = {}


def schema_problem(schema: Any) -> str | None:
    """Why ``schema`` is not a usable JSON Schema, or None when it is."""
    if schema is None:
        return None
    if not isinstance(schema, dict):
        return "must be a JSON Schema object"
    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as exc:
        return f"not a valid JSON Schema: {exc.message}"
    return None


def _where(error: ValidationError) -> str:
    path = "payload"
    for part in error.absolute_path:
        path += f"[{part}]" if isinstance(part, int) else f".{part}"
    return path


def payload_errors(*, schema: dict[str, Any], payload: Any) -> dict[str, str]:
    """JSON path → plain message for every way ``payload`` breaks ``schema`` (empty when it fits)."""
    cache_key = json.dumps(schema, sort_keys=True)
    validator = _VALIDATORS.get(cache_key)
    if validator is None:
        validator = Draft202012Validator(schema)
        if len(_VALIDATORS) > 1024:
            _VALIDATORS.clear()
        _VALIDATORS[cache_key] = validator
    errors: dict[str, str] = {}
    for error in sorted(validator.iter_errors(payload), key=lambda e: list(map(str, e.absolute_path))):
        if error.validator == "required" and isinstance(error.instance, dict):
            for name in error.validator_value:
                if name not in error.instance:
                    errors[f"{_where(error)}.{name}"] = "is required"
        else:
            errors.setdefault(_where(error), error.message)
        if len(errors) >= MAX_ERRORS:
            break
    return errors
