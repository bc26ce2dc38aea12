"""ASGI entry point: HTTP through Django, websockets through Channels. Serve with uvicorn."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
django_asgi_app = get_asgi_application()

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402

from apps.inbox.routing import websocket_urlpatterns  # noqa: E402

application = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        # types-channels wants its own pattern type, which no stubbed path() returns
        "websocket": URLRouter(websocket_urlpatterns),  # type: ignore[arg-type]
    }
)
