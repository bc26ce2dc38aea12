"""The live inbox demo page (``/demo/inbox/``) for the environment ``manage.py seed_demo`` creates.

It reads the demo's keys from ``VAR_DIR/demo.json``, computes the subscriber hash on the server (as
a customer's backend would) and hands the browser only what the widget needs, plus a curl command
that triggers the demo workflow.
"""

from __future__ import annotations

import ipaddress
import json
import shlex
from typing import Any

from django.conf import settings
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import render
from django.urls import path
from django.views.decorators.http import require_GET

from apps.demo import content
from apps.demo.selectors import demo_config
from apps.inbox.auth import subscriber_hash_compute


def trigger_curl(*, trigger_url: str, secret_key: str, subscriber_id: str) -> str:
    body = json.dumps({"workflow": content.WORKFLOW_KEY, "to": [subscriber_id], "payload": content.PAYLOAD})
    return (
        f"curl -X POST {shlex.quote(trigger_url)} \\\n"
        f"  -H {shlex.quote('Authorization: Bearer ' + secret_key)} \\\n"
        f"  -H 'Content-Type: application/json' \\\n"
        f"  -d {shlex.quote(body)}"
    )


FORWARDING_HEADERS = ("HTTP_FORWARDED", "HTTP_X_FORWARDED_FOR", "HTTP_X_REAL_IP")


def loopback_client(request: HttpRequest) -> bool:
    """The request comes from this machine, directly: a loopback peer address and no header a
    proxy adds (behind a reverse proxy on the same host every client would look local)."""
    if any(header in request.META for header in FORWARDING_HEADERS):
        return False
    try:
        return ipaddress.ip_address(request.META.get("REMOTE_ADDR", "")).is_loopback
    except ValueError:
        return False


@require_GET
def demo_inbox(request: HttpRequest) -> HttpResponse:
    # It shows a secret key: only when turned on (`make run` does) AND asked for from this machine,
    # so a server started with the flag by mistake, or behind a proxy, still shows nothing.
    if not settings.CLARION_DEMO_PAGE:
        raise Http404("The demo page is off (set CLARION_DEMO_PAGE=1 to turn it on).")
    if not loopback_client(request):
        raise Http404("The demo page answers only requests from this machine (127.0.0.1 / ::1), not proxied.")
    demo, problem = demo_config()
    if demo is None:
        return render(request, "demo/missing.html", {"problem": problem}, status=404)
    subscriber_hash = subscriber_hash_compute(secret=demo["inbox_hmac_secret"], subscriber_id=demo["subscriber_id"])
    widget_config: dict[str, Any] = {
        "api_base": "/api/v1/inbox",
        "publishable_key": demo["publishable_key"],
        "subscriber_id": demo["subscriber_id"],
        "subscriber_hash": subscriber_hash,
    }
    context = {
        "demo": demo,
        "widget_config": widget_config,
        "curl": trigger_curl(
            trigger_url=request.build_absolute_uri("/api/v1/events/trigger"),
            secret_key=demo["secret_key"],
            subscriber_id=demo["subscriber_id"],
        ),
    }
    return render(request, "demo/inbox.html", context)


urlpatterns = [
    path("demo/inbox/", demo_inbox, name="demo-inbox"),
]
