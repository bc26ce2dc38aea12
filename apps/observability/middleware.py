"""First in MIDDLEWARE: answers the probes, times every request by route, clears the log context.

``/healthz``, ``/readyz`` and ``/metrics`` are answered here, before the rest of the stack: no host
check (a probe or a Prometheus scrape addresses the pod or host by IP, which ``ALLOWED_HOSTS``
rarely lists), no HTTPS redirect (load balancers probe plain HTTP), no session, no CSRF.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

from asgiref.sync import iscoroutinefunction, sync_to_async
from django.http import HttpRequest, HttpResponse
from django.utils.decorators import sync_and_async_middleware

from apps.observability import views
from apps.observability.logs import clear_log_context
from apps.observability.metrics import http_request_observed

UNMATCHED = "unmatched"
PROBES: dict[str, Callable[[HttpRequest], HttpResponse]] = {
    "/healthz": views.healthz,
    "/readyz": views.readyz,
    "/metrics": views.metrics,
}


def _route(request: HttpRequest) -> str:
    """The resolver's route pattern (``api/v1/subscribers/<str:subscriber_id>``), never the raw path."""
    match = getattr(request, "resolver_match", None)
    if match is None:
        return UNMATCHED
    return match.route or match.view_name or UNMATCHED


def _observe(request: HttpRequest, route: str, response: HttpResponse, started: float) -> None:
    http_request_observed(request.method or "", route, response.status_code, time.perf_counter() - started)


@sync_and_async_middleware
def request_metrics_middleware(get_response: Callable[[HttpRequest], Any]) -> Callable[[HttpRequest], Any]:
    if iscoroutinefunction(get_response):
        async_get_response: Callable[[HttpRequest], Awaitable[HttpResponse]] = get_response

        async def middleware_async(request: HttpRequest) -> HttpResponse:
            clear_log_context()
            started = time.perf_counter()
            probe = PROBES.get(request.path_info)
            response: HttpResponse
            if probe is views.healthz:
                response = probe(request)  # no I/O: no thread hop
            elif probe is not None:
                response = await sync_to_async(probe)(request)
            else:
                response = await async_get_response(request)
            _observe(request, request.path_info.strip("/") if probe else _route(request), response, started)
            return response

        return middleware_async

    def middleware(request: HttpRequest) -> HttpResponse:
        clear_log_context()
        started = time.perf_counter()
        probe = PROBES.get(request.path_info)
        response = probe(request) if probe is not None else get_response(request)
        _observe(request, request.path_info.strip("/") if probe else _route(request), response, started)
        return response

    return middleware
