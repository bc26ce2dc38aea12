"""The live inbox websocket (``/ws/inbox/?token=...``): a thin relay of the subscriber's group.

Authentication reads the signed session token only (no database query); the ``Origin`` of the
handshake is checked against the environment's allowed origins (cached). Frames are pushed by
``apps.inbox.realtime`` through the channel layer as ``{"type": "inbox.event", "frame": ...}``.
"""

from __future__ import annotations

import json
import logging
from typing import Any
from urllib.parse import parse_qs

from channels.generic.websocket import AsyncJsonWebsocketConsumer

from apps.inbox.auth import inbox_token_read
from apps.inbox.origins import aorigin_allowed
from apps.inbox.realtime import subscriber_group
from apps.inbox.sequence import inbox_seq_next

logger = logging.getLogger(__name__)

# Application close codes (4000-4999): the client opens a new session on 4401, and would stop on 4403.
CLOSE_UNAUTHORIZED = 4401
CLOSE_FORBIDDEN_ORIGIN = 4403
MAX_CLIENT_FRAME = 4096


class InboxConsumer(AsyncJsonWebsocketConsumer):
    group_name: str | None = None

    def _token(self) -> str | None:
        query = parse_qs(self.scope.get("query_string", b"").decode("latin-1"))
        values = query.get("token")
        return values[0] if values else None

    def _header(self, name: bytes) -> str | None:
        for key, value in self.scope.get("headers", []):
            if key == name:
                return value.decode("latin-1")
        return None

    async def origin_allowed(self, environment_id: int) -> bool:
        """The handshake's ``Origin`` against the environment's allowed origins (apps.inbox.origins:
        cached per process, so a handshake costs no query once warm and a pushed frame never does)."""
        return await aorigin_allowed(
            environment_id=environment_id, origin=self._header(b"origin"), host=self._header(b"host")
        )

    async def _reject(self, code: int) -> None:
        # Accept, then close with an application code: a handshake rejection reaches browsers
        # only as 1006, and the client must be able to tell "get a new token" from "network blip".
        await self.accept()
        await self.close(code=code)

    async def connect(self) -> None:
        identity = inbox_token_read(self._token())
        if identity is None:
            await self._reject(CLOSE_UNAUTHORIZED)
            return
        environment_id, subscriber_pk = identity
        if not await self.origin_allowed(environment_id):
            await self._reject(CLOSE_FORBIDDEN_ORIGIN)
            return
        self.group_name = subscriber_group(environment_id=environment_id, subscriber_pk=subscriber_pk)
        await self.channel_layer.group_add(self.group_name, self.channel_name)
        await self.accept()
        # The server's current cursor: a client that has nothing yet replays changes from here.
        await self.send_json({"event": "ready", "cursor": inbox_seq_next()})

    async def disconnect(self, code: int) -> None:
        if self.group_name is not None:
            await self.channel_layer.group_discard(self.group_name, self.channel_name)
            self.group_name = None

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None, **kwargs: Any) -> None:
        if self.group_name is None:
            return
        if text_data is None or len(text_data) > MAX_CLIENT_FRAME:
            await self.send_json({"event": "error", "code": "unsupported_frame"})
            return
        try:
            content = json.loads(text_data)
        except ValueError:
            await self.send_json({"event": "error", "code": "malformed_json"})
            return
        await self.receive_json(content)

    async def receive_json(self, content: Any, **kwargs: Any) -> None:
        if isinstance(content, dict) and content.get("type") == "ping":
            # Group memberships expire in the channel layer (a day by default); the client's
            # periodic ping renews ours so a long-open tab keeps receiving frames.
            if self.group_name is not None:
                await self.channel_layer.group_add(self.group_name, self.channel_name)
            await self.send_json({"event": "pong"})
            return
        await self.send_json({"event": "error", "code": "unknown_type"})

    async def inbox_event(self, event: dict[str, Any]) -> None:
        await self.send_json(event["frame"])
