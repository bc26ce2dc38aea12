"""The OpenAPI schema's shared parts.

- ``error_responses_hook`` (a drf-spectacular postprocessing hook, SPECTACULAR_SETTINGS) documents
  the error envelope (component ``Error``) for the errors every operation can answer: 400, 401,
  404, 422 and 429, plus 413 and 415 where the operation takes a body. An operation that documents
  one of them itself keeps its own description and schema.
- ``declared_query_parameters`` reads, from the generated schema, which query parameters each
  operation takes; ``apps.core.query_params`` rejects the others.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Any

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


def _spectacular_path(route: str) -> str:
    """``api/v1/topics/<str:key>`` (a Django route) → ``/api/v1/topics/{key}`` (the schema's path)."""
    return "/" + re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", route)


@functools.cache
def _operations() -> dict[tuple[str, str], dict[str, QueryParameter]]:
    from drf_spectacular.generators import SchemaGenerator

    schema = SchemaGenerator().get_schema(request=None, public=True)
    found: dict[tuple[str, str], dict[str, QueryParameter]] = {}
    for path, operations in schema.get("paths", {}).items():
        for method, operation in operations.items():
            if method not in _METHODS:
                continue
            found[(path, method)] = {
                p["name"]: QueryParameter(p["name"], p.get("schema", {}).get("type") == "array")
                for p in operation.get("parameters", [])
                if p.get("in") == "query"
            }
    return found


def declared_query_parameters(*, route: str, method: str) -> dict[str, QueryParameter] | None:
    """The query parameters the schema declares for the operation at this Django route and HTTP
    method (HEAD as GET), or None when the schema has no such operation."""
    method = "get" if method.upper() == "HEAD" else method.lower()
    return _operations().get((_spectacular_path(route), method))


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
