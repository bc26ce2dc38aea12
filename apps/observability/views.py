"""``/healthz`` (liveness), ``/readyz`` (readiness) and ``/metrics`` (Prometheus).

Plain Django views, outside DRF: no authentication classes, no throttles, no sessions. uvicorn's
access lines for them are dropped (``apps.observability.logs.ProbeFilter``).
"""

from __future__ import annotations

import logging
import time

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_safe
from prometheus_client import CONTENT_TYPE_LATEST

from apps.core.errors import envelope
from apps.observability.access import metrics_access
from apps.observability.exposition import render
from apps.observability.health import run_checks

logger = logging.getLogger(__name__)

_FAILURE_LOG_EVERY_SECONDS = 60.0
_last_failure_log = 0.0


@require_safe
@never_cache
def healthz(request: HttpRequest) -> JsonResponse:
    """The process answers: nothing else is asked (a database outage must not restart every web process)."""
    return JsonResponse({"status": "ok"})


@require_safe
@never_cache
def readyz(request: HttpRequest) -> JsonResponse:
    """200 when the database, the task broker and the channel layer answer and migrations are applied;
    503 naming the failing checks otherwise."""
    global _last_failure_log
    results = run_checks()
    failing = [name for name, reason in results.items() if reason is not None]
    checks = {name: "ok" if reason is None else reason for name, reason in results.items()}
    if not failing:
        return JsonResponse({"status": "ok", "checks": checks})
    if time.monotonic() - _last_failure_log > _FAILURE_LOG_EVERY_SECONDS:
        _last_failure_log = time.monotonic()
        logger.warning("not ready: %s", ", ".join(f"{name} ({checks[name]})" for name in failing))
    response = JsonResponse({"status": "unavailable", "failing": failing, "checks": checks}, status=503)
    # Logged above, at most once a minute: not again by django.request at ERROR for every probe.
    response._has_been_logged = True  # type: ignore[attr-defined]
    return response


@require_safe
@never_cache
def metrics(request: HttpRequest) -> HttpResponse:
    refused = metrics_access(request.META.get("REMOTE_ADDR", ""), request.headers.get("Authorization", ""))
    if refused == 401:
        response = JsonResponse(envelope("unauthorized", "A valid metrics token is required."), status=401)
        response["WWW-Authenticate"] = 'Bearer realm="metrics"'
        return response
    if refused == 403:
        return JsonResponse(envelope("forbidden", "Metrics are not served to this address."), status=403)
    return HttpResponse(render(), content_type=CONTENT_TYPE_LATEST)
