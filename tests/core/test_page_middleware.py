"""Sessions, CSRF cookies, ``request.user`` and messages are for pages: the server API's paths
(``/api/v1/``) skip them (apps.core.middleware), every other path keeps them."""

from __future__ import annotations

from typing import Any

import pytest
from django.http import HttpRequest, HttpResponse
from django.test import Client, RequestFactory

from apps.core.middleware import (
    PageAuthenticationMiddleware,
    PageCsrfViewMiddleware,
    PageMessageMiddleware,
    PageSessionMiddleware,
)

PAGE_MIDDLEWARE = [PageSessionMiddleware, PageCsrfViewMiddleware, PageAuthenticationMiddleware, PageMessageMiddleware]


def _seen(path: str) -> set[str]:
    """The attributes the page middleware left on a request to ``path``."""
    seen: set[str] = set()

    def view(request: HttpRequest) -> HttpResponse:
        seen.update(name for name in ("session", "user", "_messages") if hasattr(request, name))
        if "CSRF_COOKIE" in request.META:
            seen.add("csrf")
        return HttpResponse("ok")

    handler: Any = view
    for middleware in reversed(PAGE_MIDDLEWARE):
        handler = middleware(handler)
    handler(RequestFactory().get(path))
    return seen


@pytest.mark.django_db
def test_pages_get_the_session_user_and_messages() -> None:
    assert _seen("/console/") >= {"session", "user", "_messages"}
    assert _seen("/api/docs/") >= {"session", "user", "_messages"}  # the API's reference is a page


def test_the_server_api_skips_them() -> None:
    assert _seen("/api/v1/events/trigger") == set()


@pytest.mark.django_db
def test_csrf_still_guards_the_pages() -> None:
    client = Client(enforce_csrf_checks=True)
    response = client.post("/admin/login/", {"username": "a", "password": "b"})
    assert response.status_code == 403


def test_an_api_response_sets_no_session_or_csrf_cookie(api: Any) -> None:
    response = api.get("/api/v1/subscribers")
    assert response.status_code == 200
    assert not response.cookies
    assert "Cookie" not in response.get("Vary", "")
