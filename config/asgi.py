"""ASGI entry point for uvicorn: HTTP through Django, websockets through Channels.

HTTP has two modes (``WEB_HTTP_THREADS``):

* ``0`` (default): Django's ASGI handler. Every view of Clarion is synchronous, so each request's
  sync code runs in a thread made for that request; the event loop stays free for the inbox
  websockets served by the same process.
* ``N > 0``: Django's WSGI handler on N long-lived threads (a2wsgi), so what is thread-local
  (database connections, clients) outlives a request: about 1.6x less web CPU per API request
  (docs/benchmarks.md). Each request hands data between its thread and the event loop several
  times, so on a process that also holds many websockets these hand-offs wait behind the sockets
  (trigger -> frame p50 of 20 s with 1,000 sockets, against 82 ms in the default mode): use it for
  web processes that serve the API only, with websockets on other processes.
"""

import os
from typing import Any

from django.core.asgi import get_asgi_application
from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
django_asgi_app = get_asgi_application()

from a2wsgi import WSGIMiddleware  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from django.conf import settings  # noqa: E402

from apps.core.asgi_http import WithContentLength  # noqa: E402
from apps.inbox.routing import websocket_urlpatterns  # noqa: E402


def http_application(threads: int) -> Any:
    """The HTTP application: Django's ASGI handler, or its WSGI handler on ``threads`` threads."""
    if threads <= 0:
        return django_asgi_app
    return WithContentLength(WSGIMiddleware(get_wsgi_application(), workers=threads))  # type: ignore[arg-type]


application = ProtocolTypeRouter(
    {
        "http": http_application(settings.WEB_HTTP_THREADS),
        # types-channels wants its own pattern type, which no stubbed path() returns
        "websocket": URLRouter(websocket_urlpatterns),  # type: ignore[arg-type]
    }
)
