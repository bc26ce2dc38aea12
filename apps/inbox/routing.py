from django.urls import path

from apps.inbox.consumers import InboxConsumer

websocket_urlpatterns = [
    # django-stubs types path() for views only; Channels routes ASGI applications with it
    path("ws/inbox/", InboxConsumer.as_asgi()),  # type: ignore[arg-type]
]
