"""One error envelope for the whole API: ``{"error": {"code", "message", "details"}}``."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from django.core.exceptions import PermissionDenied, RequestDataTooBig
from django.db import DataError, InterfaceError, OperationalError
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.views import exception_handler, set_rollback

logger = logging.getLogger(__name__)


class ApiError(exceptions.APIException):
    """A domain error raised by services and views; rendered in the envelope."""

    status_code: int = status.HTTP_400_BAD_REQUEST
    default_code = "bad_request"
    default_detail = "The request could not be processed."

    def __init__(
        self,
        message: str | None = None,
        *,
        code: str | None = None,
        status_code: int | None = None,
        details: Any = None,
    ) -> None:
        super().__init__(detail=message or self.default_detail, code=code or self.default_code)
        if status_code is not None:
            self.status_code = status_code
        self.error_code = code or self.default_code
        self.details = details if details is not None else {}


class NotFound(ApiError):
    status_code = status.HTTP_404_NOT_FOUND
    default_code = "not_found"
    default_detail = "Not found."


class Conflict(ApiError):
    status_code = status.HTTP_409_CONFLICT
    default_code = "conflict"
    default_detail = "The request conflicts with the current state."


class Unprocessable(ApiError):
    status_code = status.HTTP_422_UNPROCESSABLE_ENTITY
    default_code = "unprocessable"
    default_detail = "The request was well-formed but could not be processed."


_CODES_BY_EXCEPTION: list[tuple[type[Exception], str]] = [
    (exceptions.ParseError, "malformed_json"),
    (exceptions.NotAuthenticated, "not_authenticated"),
    (exceptions.AuthenticationFailed, "authentication_failed"),
    (exceptions.PermissionDenied, "permission_denied"),
    (exceptions.NotFound, "not_found"),
    (exceptions.MethodNotAllowed, "method_not_allowed"),
    (exceptions.UnsupportedMediaType, "unsupported_media_type"),
    (exceptions.Throttled, "rate_limited"),
    (exceptions.ValidationError, "validation_error"),
]


def envelope(code: str, message: str, details: Any = None) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "details": details if details is not None else {}}}


def database_input_error(exc: Exception) -> tuple[str, str] | None:
    """(code, message) when the database refused a value the request carried, else None.

    The last line of defence behind the parser and the middleware (apps.core.parsers,
    apps.core.middleware): PostgreSQL refuses NUL in text and jsonb (psycopg's DataError, or
    ValueError from other drivers), no UTF-8 database stores an unpaired surrogate
    (UnicodeEncodeError while binding), and PostgreSQL enforces lengths and ranges that SQLite
    does not (DataError).
    """
    text = str(exc)
    if (isinstance(exc, UnicodeEncodeError) and "surrogates not allowed" in text) or (
        isinstance(exc, DataError) and "surrogate" in text
    ):
        return "invalid_characters", "The request holds text with an unpaired surrogate, which cannot be stored."
    if isinstance(exc, DataError | ValueError) and ("NUL" in text or "\\u0000" in text):
        return "invalid_characters", "The request holds text with a NUL character (\\u0000), which cannot be stored."
    if isinstance(exc, DataError):
        return "invalid_data", "The request holds a value the database cannot store (too long, out of range…)."
    return None


def api_exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    if isinstance(exc, Http404):
        exc = exceptions.NotFound()
    elif isinstance(exc, PermissionDenied):
        exc = exceptions.PermissionDenied()
    elif isinstance(exc, RequestDataTooBig):
        return Response(
            envelope("request_too_large", "The request body is larger than the server accepts."),
            status=status.HTTP_413_REQUEST_ENTITY_TOO_LARGE,
        )

    response = exception_handler(exc, context)
    if response is None:
        refused = database_input_error(exc)
        if refused is None and isinstance(exc, OperationalError | InterfaceError):
            # The database is unreachable or busy (restart, failover, lock timeout): nothing of the
            # request was kept, and the same request will work again shortly.
            logger.warning("Database unavailable: %s", exc, exc_info=exc)
            set_rollback()
            return Response(
                envelope("service_unavailable", "The service is briefly unavailable; retry the request."),
                status=status.HTTP_503_SERVICE_UNAVAILABLE,
                headers={"Retry-After": "2"},
            )
        if refused is None:
            return None
        logger.warning("The database refused a value from the request: %s", exc, exc_info=exc)
        set_rollback()
        return Response(envelope(*refused), status=status.HTTP_400_BAD_REQUEST)

    if isinstance(exc, ApiError):
        response.data = envelope(exc.error_code, str(exc.detail), exc.details)
        return response

    code = next((c for cls, c in _CODES_BY_EXCEPTION if isinstance(exc, cls)), "error")
    details: Any
    if isinstance(exc, exceptions.ValidationError):
        message = "The request is invalid. See details for each field."
        details = exc.detail
        response.status_code = status.HTTP_400_BAD_REQUEST
    elif isinstance(exc, exceptions.ParseError):
        message = f"The request body is not valid JSON: {exc.detail}"
        details = {}
    elif isinstance(exc, exceptions.Throttled):
        # DRF set the Retry-After header from exc.wait; apps.core.throttling names the scope.
        message = "Too many requests. Retry after the number of seconds in Retry-After."
        # djangorestframework-stubs 3.18 does not declare the wait that Throttled.__init__ sets
        details = {"retry_after": exc.wait, "scope": getattr(exc, "scope", None)}  # type: ignore[attr-defined]
    else:
        message = str(getattr(exc, "detail", exc))
        details = {}
    response.data = envelope(code, message, details)
    return response


def json_error_view(
    code: str, message: str, status_code: int
) -> Callable[[HttpRequest, Exception | None], HttpResponse]:
    def view(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
        if not request.path.startswith("/api/"):
            from django.views import defaults

            if status_code == 404:
                return defaults.page_not_found(request, exception or Http404())
            return defaults.server_error(request)
        return JsonResponse(envelope(code, message), status=status_code)

    return view


handler404 = json_error_view("not_found", "Not found.", 404)
handler500 = json_error_view("internal_error", "Something went wrong on our side.", 500)
