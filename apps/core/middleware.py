"""Hostile bytes outside JSON bodies: a 400 before any view runs, on every database.

PostgreSQL cannot store, or even compare against, text holding NUL (U+0000), so a ``%00`` in a
path key (``/subscribers/a%00b``), a query filter (``?email=%00``) or a form field would reach the
database and fail there. JSON bodies are checked by apps.core.parsers. Unpaired surrogates cannot
arrive this way: Django and uvicorn decode paths and query strings with replacement characters.

Also the ``Page*`` middleware: Django's session, CSRF, auth and messages middleware, skipped on the
server API's paths (``/api/v1/``), which need none of them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from django.contrib.auth.middleware import AuthenticationMiddleware
from django.contrib.messages.middleware import MessageMiddleware
from django.contrib.sessions.middleware import SessionMiddleware
from django.http import HttpRequest, HttpResponse, HttpResponseBadRequest, JsonResponse
from django.middleware.csrf import CsrfViewMiddleware
from django.utils.deprecation import MiddlewareMixin

from apps.core.errors import database_input_error, envelope

logger = logging.getLogger(__name__)

FORM_CONTENT_TYPE = "application/x-www-form-urlencoded"


def _nul_location(request: HttpRequest) -> tuple[str, str | None] | None:
    """Where the request carries NUL: ("path", None), ("query", name) or ("form", name)."""
    if "\x00" in request.path:
        return "path", None
    query = request.META.get("QUERY_STRING", "")
    if "%00" in query or "\x00" in query:
        for name, values in request.GET.lists():
            if "\x00" in name or any("\x00" in value for value in values):
                return "query", name.replace("\x00", "\\u0000")
    if request.method == "POST" and request.content_type == FORM_CONTENT_TYPE:
        for name, values in request.POST.lists():
            if "\x00" in name or any("\x00" in value for value in values):
                return "form", name.replace("\x00", "\\u0000")
    return None


def _bad_request(request: HttpRequest, code: str, message: str, details: dict[str, str]) -> HttpResponse:
    if request.path.startswith("/api/"):
        return JsonResponse(envelope(code, message, details), status=400)
    return HttpResponseBadRequest(message, content_type="text/plain; charset=utf-8")


class HostileInputMiddleware(MiddlewareMixin):
    """Rejects NUL in the path, the query string and form fields; maps a value the database refused
    in a view outside DRF (hosted pages, provider webhooks) to a 400 instead of a 500."""

    def process_request(self, request: HttpRequest) -> HttpResponse | None:
        location = _nul_location(request)
        if location is None:
            return None
        where, name = location
        subject = {"path": "The URL path", "query": "A query parameter", "form": "A form field"}[where]
        details = {"location": where} if name is None else {"location": where, "parameter": name}
        message = f"{subject} contains a NUL character (%00), which is not allowed."
        return _bad_request(request, "invalid_characters", message, details)

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        refused = database_input_error(exception)
        if refused is None:
            return None
        logger.warning("The database refused a value from the request: %s", exception, exc_info=exception)
        return _bad_request(request, *refused, {})


API_PREFIX = "/api/v1/"


class _PagesOnly:
    """For a ``MiddlewareMixin`` class: requests to the server API (``API_PREFIX``) pass through
    untouched. The API authenticates with keys and tokens in headers (DRF), never with the session
    cookie, so it has no use for sessions, CSRF cookies (DRF's views are csrf_exempt; CSRF's
    ``process_view`` still runs), ``request.user`` before DRF sets it, or flash messages: about
    5% of an API request's web CPU (py-spy, docs/benchmarks.md)."""

    get_response: Callable[[HttpRequest], Any]

    def __call__(self, request: HttpRequest) -> Any:
        if request.path_info.startswith(API_PREFIX):
            return self.get_response(request)  # a coroutine when the chain is async: the handler awaits it
        return super().__call__(request)  # type: ignore[misc]


class PageSessionMiddleware(_PagesOnly, SessionMiddleware):
    pass


class PageCsrfViewMiddleware(_PagesOnly, CsrfViewMiddleware):
    pass


class PageAuthenticationMiddleware(_PagesOnly, AuthenticationMiddleware):
    pass


class PageMessageMiddleware(_PagesOnly, MessageMiddleware):
    pass
