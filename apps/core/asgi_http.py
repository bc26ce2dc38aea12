"""A request body sent without Content-Length (chunked), made readable by a WSGI application.

WSGI reads ``CONTENT_LENGTH`` bytes of the body and nothing when it is absent, so a chunked
request would reach Django empty. Such a body is read here first — at most
``DATA_UPLOAD_MAX_MEMORY_SIZE`` bytes plus a margin, else 413 — and passed on with its length.
Requests that state their length (nearly all) go straight through.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from django.conf import settings

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

# Django refuses a body over DATA_UPLOAD_MAX_MEMORY_SIZE with its own 400; this only bounds memory.
_MARGIN = 64 * 1024
_TOO_LARGE = json.dumps(
    {"error": {"code": "request_too_large", "message": "The request body is too large.", "details": {}}}
).encode()


class WithContentLength:
    """Wraps ``app`` (kept as ``.app``) so that a chunked body reaches it with its length."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = scope.get("headers") or []
        if scope["type"] != "http" or any(name.lower() == b"content-length" for name, _ in headers):
            await self.app(scope, receive, send)
            return
        limit = (settings.DATA_UPLOAD_MAX_MEMORY_SIZE or 0) + _MARGIN
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body = message.get("body", b"")
            size += len(body)
            if size > limit:
                await send(
                    {"type": "http.response.start", "status": 413, "headers": [(b"content-type", b"application/json")]}
                )
                await send({"type": "http.response.body", "body": _TOO_LARGE})
                return
            chunks.append(body)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        scope = dict(scope, headers=[*headers, (b"content-length", str(len(body)).encode())])
        await self.app(scope, replay, send)
