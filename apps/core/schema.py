"""The OpenAPI schema's shared parts.

- ``error_responses_hook`` (a drf-spectacular postprocessing hook, SPECTACULAR_SETTINGS) documents
  the error envelope (component ``Error``) for the errors every operation can answer: 400, 401,
  404, 422 and 429, plus 413 and 415 where the operation takes a body. An operation that documents
  one of them itself keeps its own description and schema.
- ``declared_query_parameters`` reads, from the generated schema, which query parameters each
  operation takes; ``apps.core.query_params`` rejects the others.
- ``request_body_check`` validates a parsed JSON body against the operation's request schema
  (apps.core.parsers calls it), so a body the schema refuses is a 400 whatever the serializer
  would have coerced: ``"read": 0`` is not a boolean and ``"name": 0`` is not a string.
"""

from __future__ import annotations

import functools
import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

T = TypeVar("T")

ERROR_COMPONENT = "Error"
ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "Every error: a machine-readable code, a sentence for people, and details.",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message", "details"],
            "properties": {
                "code": {"type": "string", "example": "validation_error"},
                "message": {"type": "string"},
                "details": {
                    "description": "Per field (or per item by index) for validation errors; "
                    "extra facts otherwise; `{}` when there is nothing more to say.",
                },
            },
        }
    },
}

ERROR_DESCRIPTIONS: dict[str, str] = {
    "400": "Malformed or invalid request (error envelope): `malformed_json`, `invalid_json`, `validation_error` "
    "(details per field), `unknown_query_parameter`, `invalid_characters`, `invalid_cursor`.",
    "401": "Missing, wrong or revoked credentials (error envelope): `not_authenticated`, `authentication_failed`.",
    "404": "Nothing with that id in your environment (error envelope): `not_found` or a specific `*_not_found`.",
    "413": "The request body is larger than the server accepts (error envelope): `request_too_large`.",
    "415": "The request body is not JSON (error envelope): `unsupported_media_type`.",
    "422": "Understood but cannot be done (error envelope), e.g. `payload_too_large`, `invalid_payload`.",
    "429": "Too many requests (error envelope): `rate_limited`; retry after the `Retry-After` seconds.",
}

_ALWAYS = ("400", "401", "404", "422", "429")
_WITH_BODY = ("413", "415")
_METHODS = ("get", "put", "post", "patch", "delete", "head", "options", "trace")


def _error_response(status: str) -> dict[str, Any]:
    return {
        "description": ERROR_DESCRIPTIONS[status],
        "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{ERROR_COMPONENT}"}}},
    }


def error_responses_hook(result: dict[str, Any], generator: Any, request: Any, public: bool) -> dict[str, Any]:
    result.setdefault("components", {}).setdefault("schemas", {})[ERROR_COMPONENT] = ERROR_SCHEMA
    for operations in result.get("paths", {}).values():
        for method, operation in operations.items():
            if method not in _METHODS:
                continue
            responses = operation.setdefault("responses", {})
            statuses = _ALWAYS + (_WITH_BODY if "requestBody" in operation else ())
            for status in statuses:
                documented = responses.get(status)
                if documented is None:
                    responses[status] = _error_response(status)
                elif "content" not in documented:
                    documented["content"] = _error_response(status)["content"]
                    documented["description"] = documented.get("description") or ERROR_DESCRIPTIONS[status]
    return result


@dataclass(frozen=True)
class QueryParameter:
    name: str
    repeatable: bool


@dataclass(frozen=True)
class Operation:
    query: dict[str, QueryParameter]
    body_schema: dict[str, Any] | None


def _spectacular_path(route: str) -> str:
    """``api/v1/topics/<str:key>`` (a Django route) → ``/api/v1/topics/{key}`` (the schema's path)."""
    return "/" + re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", route)


_schema_lock = threading.Lock()


def _schema() -> dict[str, Any]:
    # Built once per process, by one thread: a cold web process's first concurrent requests each
    # generated it, and drf-spectacular's lazy loading of its extensions is not thread-safe
    # ("'NoneType' object has no attribute 'startswith'": HTTP 500s on the first triggers).
    with _schema_lock:
        return _generated_schema()


@functools.cache
def _generated_schema() -> dict[str, Any]:
    from drf_spectacular.generators import SchemaGenerator

    return SchemaGenerator().get_schema(request=None, public=True)


@functools.cache
def _operations() -> dict[tuple[str, str], Operation]:
    found: dict[tuple[str, str], Operation] = {}
    for path, operations in _schema().get("paths", {}).items():
        for method, operation in operations.items():
            if method not in _METHODS:
                continue
            body = operation.get("requestBody", {}).get("content", {}).get("application/json", {})
            found[(path, method)] = Operation(
                query={
                    p["name"]: QueryParameter(p["name"], _is_array(p.get("schema", {})))
                    for p in operation.get("parameters", [])
                    if p.get("in") == "query"
                },
                body_schema=body.get("schema"),
            )
    return found


def _is_array(schema: dict[str, Any]) -> bool:
    branches = [schema, *schema.get("oneOf", []), *schema.get("anyOf", [])]
    return any(branch.get("type") == "array" for branch in branches)


def _operation(route: str, method: str) -> Operation | None:
    method = "get" if method.upper() == "HEAD" else method.lower()
    return _operations().get((_spectacular_path(route), method))


def declared_query_parameters(*, route: str, method: str) -> dict[str, QueryParameter] | None:
    """The query parameters the schema declares for the operation at this Django route and HTTP
    method (HEAD as GET), or None when the schema has no such operation."""
    operation = _operation(route, method)
    return None if operation is None else operation.query


def _json_schema(node: Any) -> Any:
    """OpenAPI 3.0 schema objects → JSON Schema (draft 4, as OpenAPI 3.0 bases itself on):
    ``nullable: true`` becomes "or null". Formats are left to the serializers."""
    if isinstance(node, list):
        return [_json_schema(item) for item in node]
    if not isinstance(node, dict):
        return node
    converted = {key: _json_schema(value) for key, value in node.items() if key != "nullable"}
    if node.get("nullable") is True:
        return {"anyOf": [converted, {"type": "null"}]}
    return converted


@dataclass(frozen=True)
class BodyValidator:
    """``fast`` (jsonschema-rs) answers "valid?" in about a millisecond for a 1,000-item bulk call;
    only an invalid body pays for ``slow`` (jsonschema), which says what is wrong and where."""

    fast: Any
    slow: Any


@functools.cache
def _body_validator(route: str, method: str) -> BodyValidator | None:
    import jsonschema_rs
    from jsonschema import Draft4Validator

    operation = _operation(route, method)
    if operation is None or operation.body_schema is None:
        return None
    document = {
        "allOf": [_json_schema(operation.body_schema)],
        "components": {"schemas": _json_schema(_schema().get("components", {}).get("schemas", {}))},
    }
    return BodyValidator(fast=jsonschema_rs.Draft4Validator(document), slow=Draft4Validator(document))


def _type_errors(errors: Any) -> Any:
    """The errors that say "wrong JSON type", also inside the one branch of a oneOf / anyOf (as
    ``nullable`` becomes) whose type the value has."""
    for error in errors:
        if error.validator == "type":
            yield error
        elif error.validator in ("oneOf", "anyOf"):
            kind = _json_type(error.instance)
            typed = [
                i
                for i, branch in enumerate(error.validator_value)
                if _branch_type(branch) in (kind, None)
                and not (isinstance(error.instance, dict) and set(branch.get("required", ())) - set(error.instance))
            ]
            if not typed:
                yield error  # no branch takes a value of this type
            elif len(typed) == 1:
                yield from _type_errors(c for c in error.context if c.schema_path[0] == typed[0])


def _branch_type(branch: dict[str, Any]) -> str | None:
    kind = branch.get("type")
    return "number" if kind == "integer" else kind


def request_body_check(data: Any, parser_context: Mapping[str, Any]) -> None:
    """Raise a 400 ``validation_error`` when a value in the JSON body has another JSON type than the
    operation's request schema says; ``details`` names each place, nested as DRF nests its errors
    (``{"events": {"2": {"workflow": [...]}}}``). The serializers check everything else (required
    fields, lengths, choices…) with their own messages; this catches what they would coerce (``0``
    for a boolean or a string, ``"12"`` for an integer)."""
    request = parser_context.get("request")
    match = getattr(request, "resolver_match", None)
    if request is None or match is None or not str(getattr(request, "path", "")).startswith("/api/v1/"):
        return
    validator = _body_validator(match.route, request.method or "POST")
    if validator is None or validator.fast.is_valid(data):
        return
    errors = list(_type_errors(validator.slow.iter_errors(data)))
    if not errors:
        return
    from apps.core.errors import ApiError

    # Nested like DRF's own errors: {"subscribers": {"1": {"last_name": ["…"]}}}.
    details: dict[str, Any] = {}
    for error in errors[:50]:
        node = details
        path = [str(step) for step in error.absolute_path] or ["non_field_errors"]
        for step in path[:-1]:
            child = node.setdefault(step, {})
            if not isinstance(child, dict):
                break
            node = child
        else:
            messages = node.setdefault(path[-1], [])
            if isinstance(messages, list):
                messages.append(_message(error))
    raise ApiError("The request is invalid. See details for each field.", code="validation_error", details=details)


def _message(error: Any) -> str:
    if error.validator == "type":
        expected = error.validator_value
        expected = " or ".join(expected) if isinstance(expected, list) else expected
    else:
        expected = " or ".join(dict.fromkeys(str(branch.get("type")) for branch in error.validator_value))
    return f"Must be of type {expected}, not {_json_type(error.instance)}."


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"  # integer or number: the serializers tell 1 from 1.5
    names: dict[type, str] = {str: "string", list: "array", dict: "object"}
    return names.get(type(value), type(value).__name__)


def key_path_parameter(name: str = "key", *, max_length: int = 100) -> Any:
    """The path parameter of an upsert (PUT) whose key is a slug: letters, digits, '-' and '_'."""
    from drf_spectacular.utils import OpenApiParameter

    schema = {"type": "string", "minLength": 1, "maxLength": max_length, "pattern": "^[-a-zA-Z0-9_]+$"}
    return OpenApiParameter(name, schema, OpenApiParameter.PATH)


def pagination_parameters() -> list[Any]:
    """``cursor`` and ``limit`` as IdCursorPagination takes them, for views that page by hand."""
    from drf_spectacular.utils import OpenApiParameter

    from apps.core.pagination import IdCursorPagination

    return [
        OpenApiParameter("cursor", str, description="The `next_cursor` of the previous page."),
        OpenApiParameter(
            "limit",
            {"type": "integer", "minimum": 1, "maximum": IdCursorPagination.max_page_size},
            description=f"Page size, 1 to {IdCursorPagination.max_page_size} (default {IdCursorPagination.page_size}).",
        ),
    ]


def paginated_schema(items: dict[str, Any]) -> dict[str, Any]:
    """The schema of one cursor page whose ``data`` items have the schema ``items``."""
    from apps.core.pagination import IdCursorPagination

    return IdCursorPagination().get_paginated_response_schema({"type": "array", "items": items})


def with_schema(field_class: type[T], schema: dict[str, Any]) -> type[T]:
    """A subclass of the serializer field ``field_class`` that the OpenAPI schema describes as
    ``schema`` (drf-spectacular's extend_schema_field, on a class of its own: DRF copies field
    instances, so an annotation on an instance would be lost)."""
    from drf_spectacular.utils import extend_schema_field

    return extend_schema_field(schema)(type(f"{field_class.__name__}WithSchema", (field_class,), {}))


def blank_or(schema: dict[str, Any]) -> dict[str, Any]:
    """A string ``schema`` (with a format) that may also be empty, as optional text fields are."""
    string_format = {key: value for key, value in schema.items() if key != "type"}
    return {"type": "string", "anyOf": [string_format, {"type": "string", "maxLength": 0}]}
