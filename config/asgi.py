"""ASGI entry point for uvicorn: HTTP through Django's WSGI handler on a fixed pool of threads,
websockets through Channels.

Every HTTP view of Clarion is synchronous. Django's ASGI handler runs a request's sync code in a
thread made for that request, so nothing thread-local survives it: each request paid a thread
start and a pooled database connection checkout, and every thread-local client was rebuilt. a2wsgi
runs Django's WSGI handler on ``WEB_THREADS`` long-lived threads instead (the same code path as
the test client's): about 2.5x less web CPU per API request (docs/benchmarks.md).
"""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
django_wsgi_app = get_wsgi_application()

from a2wsgi import WSGIMiddleware  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from django.conf import settings  # noqa: E402

from apps.core.asgi_http import with_content_length  # noqa: E402
from apps.inbox.routing import websocket_urlpatterns  # noqa: E402

http_application = WSGIMiddleware(django_wsgi_app, workers=settings.WEB_THREADS)  # type: ignore[arg-type]

application = ProtocolTypeRouter(
    {
        "http": with_content_length(http_application),  # type: ignore[arg-type]
        # types-channels wants its own pattern type, which no stubbed path() returns
        "websocket": URLRouter(websocket_urlpatterns),  # type: ignore[arg-type]
    }
)
