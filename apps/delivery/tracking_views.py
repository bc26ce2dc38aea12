"""The open pixel and the click redirect: public, unauthenticated, cheap.

``GET /t/o/<token>`` answers a 1×1 transparent GIF and marks the message opened; ``GET /t/c/<token>``
marks it clicked and answers 302 to the URL the token carries. A token that does not verify is a
plain 404 (nothing said about why), before any query. A genuine one costs the status write only
(``message_status_apply``: two UPDATEs by primary key). Requests over the per-IP rate
(``apps.core.throttling.TrackingIpThrottle``) and ``HEAD`` requests are answered the same way but record nothing.
See docs/security.md ("Tracking links").
"""

from __future__ import annotations

import base64
import logging

from django.http import HttpRequest, HttpResponse, HttpResponseNotFound, HttpResponseRedirect
from django.urls import path
from django.views.decorators.http import require_safe

from apps.core.throttling import RateLimited, TrackingIpThrottle
from apps.delivery.tracking import click_token_read, open_token_read, tracked_click_record, tracked_open_record

logger = logging.getLogger(__name__)

# The smallest transparent GIF (1×1, one transparent colour).
PIXEL_GIF = base64.b64decode("R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7")


def _not_found() -> HttpResponse:
    response = HttpResponseNotFound(b"Not found", content_type="text/plain; charset=utf-8")
    response["Cache-Control"] = "no-store"
    return response


def _may_record(request: HttpRequest) -> bool:
    if request.method != "GET":
        return False  # HEAD: link checkers and proxies probing, not a person
    try:
        TrackingIpThrottle().allow_request(request, None)  # type: ignore[arg-type]  # reads META only
    except RateLimited:
        logger.info("tracking hit over the per-IP rate: answered, not recorded")
        return False
    return True


@require_safe
def tracking_open(request: HttpRequest, token: str) -> HttpResponse:
    message_id = open_token_read(token)
    if message_id is None:
        return _not_found()
    if _may_record(request):
        tracked_open_record(message_id=message_id)
    response = HttpResponse(PIXEL_GIF, content_type="image/gif")
    response["Cache-Control"] = "no-store, max-age=0"
    response["X-Robots-Tag"] = "noindex"
    return response


@require_safe
def tracking_click(request: HttpRequest, token: str) -> HttpResponse:
    found = click_token_read(token)
    if found is None:
        return _not_found()
    message_id, url = found
    if _may_record(request):
        tracked_click_record(message_id=message_id)
    response = HttpResponseRedirect(url)
    response["Cache-Control"] = "no-store"
    # The target never learns the token (nor the message id it carries).
    response["Referrer-Policy"] = "no-referrer"
    response["X-Robots-Tag"] = "noindex"
    return response


urlpatterns = [
    path("t/o/<str:token>", tracking_open, name="tracking-open"),
    path("t/c/<str:token>", tracking_click, name="tracking-click"),
]
