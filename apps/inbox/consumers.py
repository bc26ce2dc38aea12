"""The live inbox websocket (``/ws/inbox/?token=...``): a thin relay of the subscriber's group.

The handshake reads the signed session token, checks that the session still stands
(``inbox_session_current``: from the process's memory of recently checked sessions when it can,
then once more against the database when that memory runs out; otherwise one query) and checks
the ``Origin`` against the environment's allowed origins (cached). Frames are pushed by
``apps.inbox.realtime`` through the channel layer as ``{"type": "inbox.event", "frame": ...}``;
pushed frames cost no query.

Revocation: the socket is in its subscriber's group and its environment's group. A
``{"type": "inbox.revoke"}`` message on either (deleted subscriber; key revoked or HMAC secret
rotated) makes it send ``{"event": "session.revoked", "reason": ...}`` and close with ``4401``.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any
from urllib.parse import parse_qs

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer

from apps.inbox.auth import InboxTokenClaims, inbox_session_current, inbox_session_remembered, inbox_token_claims
from apps.inbox.origins import aorigin_allowed
from apps.inbox.realtime import environment_group, subscriber_group
from apps.inbox.sequence import inbox_seq_next
from apps.observability.metrics import websocket_closed, websocket_opened

logger = logging.getLogger(__name__)

# Application close codes (4000-4999): the client opens a new session on 4401 (token invalid,
# expired or revoked), and would stop on 4403.
CLOSE_UNAUTHORIZED = 4401
CLOSE_FORBIDDEN_ORIGIN = 4403
MAX_CLIENT_FRAME = 4096


class InboxConsumer(AsyncJsonWebsocketConsumer):
    group_name: str | None = None
    environment_group_name: str | None = None
    session_version: int = 0
    claims: InboxTokenClaims | None = None
    recheck_task: asyncio.Task[None] | None = None

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
        claims = inbox_token_claims(self._token())
        if claims is None:
            await self._reject(CLOSE_UNAUTHORIZED)
            return
        if not await self.origin_allowed(claims.environment_id):
            await self._reject(CLOSE_FORBIDDEN_ORIGIN)
            return
        self.session_version = claims.session_version
        self.group_name = subscriber_group(environment_id=claims.environment_id, subscriber_pk=claims.subscriber_pk)
        self.environment_group_name = environment_group(environment_id=claims.environment_id)
        # Join before checking the session: a revocation committed after the check still reaches us.
        await self._join_groups()
        self.claims = claims
        remembered_for = inbox_session_remembered(
            environment_id=claims.environment_id,
            subscriber_pk=claims.subscriber_pk,
            session_version=claims.session_version,
        )
        if remembered_for is None and not await self._session_current():
            await self._leave_groups()
            await self._reject(CLOSE_UNAUTHORIZED)
            return
        await self.accept()
        websocket_opened(self)  # clarion_websocket_connections
        if remembered_for is not None:
            # Let in from this process's memory: a revocation made in another process shortly
            # before we joined the groups reached no socket of ours, and the memory may not know
            # of it yet. Ask the database once the memory runs out.
            self.recheck_task = asyncio.get_running_loop().create_task(self._recheck_after(remembered_for))
        # The server's current cursor: a client that has nothing yet replays changes from here.
        await self.send_json({"event": "ready", "cursor": inbox_seq_next()})

    async def _session_current(self) -> bool:
        claims = self.claims
        if claims is None:
            return False
        return await database_sync_to_async(inbox_session_current)(
            environment_id=claims.environment_id,
            subscriber_pk=claims.subscriber_pk,
            session_version=claims.session_version,
            remembered=False,
        )

    async def _recheck_after(self, delay: float) -> None:
        await asyncio.sleep(delay)
        if self.group_name is not None and not await self._session_current():
            await self.inbox_revoke({"type": "inbox.revoke", "reason": "session_revoked"})

    def _groups(self) -> list[str]:
        return [g for g in (self.group_name, self.environment_group_name) if g is not None]

    async def _join_groups(self) -> None:
        # One round trip for both groups on the Redis layer (apps.inbox.layers); one call per
        # group on layers without the batch call (in-memory, SQLite).
        groups = self._groups()
        add_many = getattr(self.channel_layer, "group_add_many", None)
        if add_many is not None:
            await add_many(groups, self.channel_name)
            return
        for group in groups:
            await self.channel_layer.group_add(group, self.channel_name)

    async def _leave_groups(self) -> None:
        groups = self._groups()
        self.group_name = self.environment_group_name = None
        discard_many = getattr(self.channel_layer, "group_discard_many", None)
        if discard_many is not None:
            await discard_many(groups, self.channel_name)
            return
        for group in groups:
            await self.channel_layer.group_discard(group, self.channel_name)

    async def disconnect(self, code: int) -> None:
        websocket_closed(self)  # counted down once, only if it was counted
        if self.recheck_task is not None:
            self.recheck_task.cancel()
            self.recheck_task = None
        await self._leave_groups()

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None, **kwargs: Any) -> None:
        if self.group_name is None:
            return
        if text_data is None or len(text_data) > MAX_CLIENT_FRAME:
            await self.send_json({"event": "error", "code": "unsupported_frame"})
            return
        try:
            content = json.loads(text_data)
        except (ValueError, RecursionError):  # nested deeper than the parser can go: as malformed
            await self.send_json({"event": "error", "code": "malformed_json"})
            return
        await self.receive_json(content)

    async def receive_json(self, content: Any, **kwargs: Any) -> None:
        if isinstance(content, dict) and content.get("type") == "ping":
            # Group memberships expire in the channel layer (a day by default); the client's
            # periodic ping renews ours so a long-open tab keeps receiving frames.
            await self._join_groups()
            await self.send_json({"event": "pong"})
            return
        await self.send_json({"event": "error", "code": "unknown_type"})

    async def inbox_event(self, event: dict[str, Any]) -> None:
        await self.send_json(event["frame"])

    async def inbox_revoke(self, event: dict[str, Any]) -> None:
        """The session was revoked (``apps.inbox.realtime.publish_sessions_revoked``)."""
        if self.group_name is None:
            return
        version = event.get("version")
        # An environment-wide revocation ends the sessions issued before it, not newer ones.
        if isinstance(version, int) and self.session_version >= version:
            return
        await self._leave_groups()
        await self.send_json({"event": "session.revoked", "reason": event.get("reason", "")})
        await self.close(code=CLOSE_UNAUTHORIZED)
