from __future__ import annotations

from typing import Any

from rest_framework.exceptions import NotFound
from rest_framework.pagination import Cursor, CursorPagination
from rest_framework.request import Request
from rest_framework.response import Response

from apps.core.errors import ApiError


class IdCursorPagination(CursorPagination):
    """Opaque cursor paging over the primary key: stable under concurrent inserts."""

    ordering = "-id"
    page_size = 50
    page_size_query_param = "limit"
    max_page_size = 200

    def get_page_size(self, request: Request) -> int:
        """``?limit=`` is an integer from 1 to ``max_page_size``; anything else is a 400, never ignored."""
        raw = request.query_params.get(self.page_size_query_param)
        if raw is None:
            return self.page_size
        if not (raw.isascii() and raw.isdigit() and 1 <= int(raw) <= self.max_page_size):
            raise ApiError(
                f"`limit` must be an integer from 1 to {self.max_page_size}.",
                code="validation_error",
                details={"limit": [f"An integer from 1 to {self.max_page_size}, got {raw!r}."]},
            )
        return int(raw)

    def decode_cursor(self, request: Request) -> Cursor | None:
        try:
            return super().decode_cursor(request)
        except NotFound:
            raise ApiError(
                "The cursor is not valid: pass the `next_cursor` (or follow the `next` link) of a previous page.",
                code="invalid_cursor",
                details={"cursor": ["Not a cursor this API issued."]},
            ) from None

    def get_schema_operation_parameters(self, view: Any) -> list[dict[str, Any]]:
        parameters = super().get_schema_operation_parameters(view)
        for parameter in parameters:
            if parameter["name"] == self.page_size_query_param:
                parameter["schema"] = {"type": "integer", "minimum": 1, "maximum": self.max_page_size}
                parameter["description"] = f"Page size, 1 to {self.max_page_size} (default {self.page_size})."
        return parameters

    def get_paginated_response(self, data: Any) -> Response:
        return Response(
            {
                "data": data,
                "next": self.get_next_link(),
                "previous": self.get_previous_link(),
                "next_cursor": self._cursor_param(self.get_next_link()),
            }
        )

    def _cursor_param(self, url: str | None) -> str | None:
        if not url:
            return None
        from urllib.parse import parse_qs, urlparse

        return parse_qs(urlparse(url).query).get(self.cursor_query_param, [None])[0]

    def get_paginated_response_schema(self, schema: dict[str, Any]) -> dict[str, Any]:
        return {
            "type": "object",
            "required": ["data"],
            "properties": {
                "data": schema,
                "next": {"type": "string", "nullable": True, "format": "uri"},
                "previous": {"type": "string", "nullable": True, "format": "uri"},
                "next_cursor": {"type": "string", "nullable": True},
            },
        }


class AscendingIdCursorPagination(IdCursorPagination):
    ordering = "id"
