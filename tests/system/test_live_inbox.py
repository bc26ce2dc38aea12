"""End to end through the real processes: trigger over HTTP → worker runs the workflow →
in-app message pushed over the websocket to the subscriber's open inbox."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import quote

import pytest
from websockets.asyncio.client import ClientConnection, connect

from tests.system.conftest import ClarionSystem, WorkerControl

pytestmark = pytest.mark.system

TEMPLATE = {
    "name": "Comment",
    "channel": "in_app",
    "content": {"en": {"title": "New comment on {{ payload.post_title }}", "body": "{{ payload.comment }}"}},
    "publish": True,
}
WORKFLOW = {
    "name": "New comment",
    "steps": [{"id": "inbox", "type": "in_app", "template": "comment-in-app"}],
    "publish": True,
}
DELIVERY_TIMEOUT = 15.0


async def call(system: ClarionSystem, method: str, path: str, body: Any = None, **kwargs: Any) -> Any:
    return await asyncio.to_thread(system.api, method, path, body, **kwargs)


async def ensure_workflow(system: ClarionSystem) -> None:
    template = await call(system, "PUT", "/api/v1/templates/comment-in-app", TEMPLATE)
    assert template.status_code in (200, 201), template.text
    workflow = await call(system, "PUT", "/api/v1/workflows/comment-created", WORKFLOW)
    assert workflow.status_code in (200, 201), workflow.text


async def ensure_subscriber(system: ClarionSystem, subscriber_id: str) -> None:
    response = await call(
        system, "PUT", f"/api/v1/subscribers/{subscriber_id}", {"email": f"{subscriber_id}@example.com"}
    )
    assert response.status_code in (200, 201), response.text


async def session_token(system: ClarionSystem, subscriber_id: str) -> str:
    """Open an inbox session as the widget does (publishable key + subscriber HMAC)."""
    session = await call(
        system,
        "POST",
        "/api/v1/inbox/session",
        {
            "publishable_key": system.publishable_key,
            "subscriber_id": subscriber_id,
            "subscriber_hash": system.subscriber_hash(subscriber_id),
        },
        auth=False,
    )
    assert session.status_code in (200, 201), session.text
    return session.json()["token"]


@asynccontextmanager
async def open_inbox(system: ClarionSystem, subscriber_id: str) -> AsyncIterator[ClientConnection]:
    """An inbox session for ``subscriber_id`` and its websocket, past the ``ready`` frame."""
    token = await session_token(system, subscriber_id)
    async with connect(f"{system.ws_url}/ws/inbox/?token={quote(token)}", open_timeout=10) as ws:
        ready = json.loads(await asyncio.wait_for(ws.recv(), timeout=10))
        assert ready.get("event") == "ready", ready
        yield ws


async def trigger(system: ClarionSystem, subscriber_id: str, post_title: str) -> str:
    response = await call(
        system,
        "POST",
        "/api/v1/events/trigger",
        {
            "workflow": "comment-created",
            "to": [subscriber_id],
            "payload": {"post_title": post_title, "comment": "First!"},
        },
    )
    assert response.status_code == 202, response.text
    transaction_id = response.json().get("transaction_id")
    assert transaction_id, response.text
    return transaction_id


async def next_message_created(ws: ClientConnection, *, title: str, timeout: float) -> dict[str, Any]:
    """The first ``message.created`` frame whose message has ``title``; other frames are skipped."""
    deadline = time.monotonic() + timeout
    seen: list[dict[str, Any]] = []
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"no message.created titled {title!r} within {timeout:.0f} s; frames seen: {seen}")
        try:
            frame = json.loads(await asyncio.wait_for(ws.recv(), timeout=remaining))
        except TimeoutError:
            continue
        seen.append(frame)
        if frame.get("event") == "message.created" and frame.get("message", {}).get("title") == title:
            return frame


async def test_triggered_comment_arrives_live_in_the_inbox(clarion_system: ClarionSystem) -> None:
    await ensure_workflow(clarion_system)
    await ensure_subscriber(clarion_system, "user-1")

    async with open_inbox(clarion_system, "user-1") as ws:
        await trigger(clarion_system, "user-1", "Hello")
        frame = await next_message_created(ws, title="New comment on Hello", timeout=DELIVERY_TIMEOUT)

    assert frame["message"]["body"] == "First!"
    assert frame["message"]["is_read"] is False
    assert frame["counts"]["unread"] == 1


async def test_trigger_accepted_while_the_worker_is_down_is_delivered_after_restart(
    clarion_system: ClarionSystem, clarion_worker: WorkerControl
) -> None:
    await ensure_workflow(clarion_system)
    await ensure_subscriber(clarion_system, "user-2")

    async with open_inbox(clarion_system, "user-2") as ws:
        await asyncio.to_thread(clarion_worker.kill)
        assert not clarion_worker.alive()

        await trigger(clarion_system, "user-2", "While you were out")
        await asyncio.to_thread(clarion_worker.start)
        frame = await next_message_created(ws, title="New comment on While you were out", timeout=DELIVERY_TIMEOUT)

    assert frame["counts"]["unread"] == 1
    # Nothing lost, nothing doubled: the REST inbox agrees with the push.
    messages = await _inbox_messages(clarion_system, "user-2")
    assert [m["title"] for m in messages] == ["New comment on While you were out"]


async def _inbox_messages(system: ClarionSystem, subscriber_id: str) -> list[dict[str, Any]]:
    token = await session_token(system, subscriber_id)
    response = await call(
        system, "GET", "/api/v1/inbox/messages", auth=False, headers={"Authorization": f"Bearer {token}"}
    )
    assert response.status_code == 200, response.text
    return response.json()["data"]
