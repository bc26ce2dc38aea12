"""The live inbox websocket against ``config.asgi.application``.

Most tests run on the configured channel layer (channels-lite on the embedded default, its own
"channels" database alias); a few unit tests use the in-memory layer for speed.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any
from urllib.parse import quote

import pytest
import time_machine
from asgiref.sync import sync_to_async
from channels.layers import channel_layers, get_channel_layer
from channels.testing import WebsocketCommunicator
from django.conf import settings as django_settings
from django.db import connections
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from apps.inbox.realtime import publish_messages_created, subscriber_group
from apps.inbox.services import inbox_mark_all_read, inbox_message_mark
from config.asgi import application
from tests.factories import InboxMessageFactory, SubscriberFactory
from tests.inbox.conftest import token_for

LIVE_DB = pytest.mark.django_db(
    transaction=True, databases=["default", "channels"] if "channels" in django_settings.DATABASES else ["default"]
)
# channels-redis (apps.inbox.layers.InboxChannelLayer) when REDIS_URL is set
REDIS_LAYER = django_settings.CHANNEL_LAYERS["default"]["BACKEND"] == "apps.inbox.layers.InboxChannelLayer"
IN_MEMORY = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
FRAME_TIMEOUT = 5


@pytest.fixture(autouse=True)
async def _fresh_channel_layer() -> AsyncIterator[None]:
    """Each test (and its event loop) gets its own layer instance; background pollers are closed."""
    channel_layers.backends = {}
    yield
    for layer in list(channel_layers.backends.values()):
        close = getattr(layer, "close", None)
        if close is not None:
            await close()
    channel_layers.backends = {}


@asynccontextmanager
async def socket(path: str) -> AsyncIterator[WebsocketCommunicator]:
    communicator = WebsocketCommunicator(application, path)
    try:
        yield communicator
    finally:
        await communicator.disconnect()


async def assert_closed_with(communicator: WebsocketCommunicator, code: int) -> None:
    connected, _ = await communicator.connect(timeout=FRAME_TIMEOUT)
    assert connected  # accepted so the browser sees the application close code, not a bare 1006
    output = await communicator.receive_output(timeout=FRAME_TIMEOUT)
    assert output == {"type": "websocket.close", "code": code}


@sync_to_async
def make_subscriber(**kwargs: Any) -> Any:
    return SubscriberFactory(**kwargs)


@sync_to_async
def make_message(subscriber: Any, **kwargs: Any) -> Any:
    return InboxMessageFactory(subscriber=subscriber, **kwargs)


# --- authentication ----------------------------------------------------------------------------


@LIVE_DB
async def test_rejected_without_token():
    async with socket("/ws/inbox/") as ws:
        await assert_closed_with(ws, 4401)


@LIVE_DB
@pytest.mark.parametrize("token", ["garbage", "sk_live_abc", "pk_live_abc", "a" * 800])
async def test_rejected_with_bad_token(token):
    async with socket(f"/ws/inbox/?token={quote(token)}") as ws:
        await assert_closed_with(ws, 4401)


@LIVE_DB
async def test_rejected_with_expired_token(settings):
    subscriber = await make_subscriber()
    token = await sync_to_async(token_for)(subscriber)
    with time_machine.travel(timezone.now() + timedelta(seconds=settings.CLARION["INBOX_TOKEN_MAX_AGE"] + 5)):
        async with socket(f"/ws/inbox/?token={quote(token)}") as ws:
            await assert_closed_with(ws, 4401)


@LIVE_DB
async def test_connect_needs_no_default_database_query():
    """Database work in a consumer runs on the shared sync thread: capture that thread's queries."""
    subscriber = await make_subscriber()
    token = await sync_to_async(token_for)(subscriber)
    capture = await sync_to_async(lambda: CaptureQueriesContext(connections["default"]))()
    await sync_to_async(capture.__enter__)()
    try:
        async with socket(f"/ws/inbox/?token={quote(token)}") as ws:
            connected, _ = await ws.connect(timeout=FRAME_TIMEOUT)
            assert connected
            assert (await ws.receive_json_from(timeout=FRAME_TIMEOUT))["event"] == "ready"
            await ws.send_json_to({"type": "ping"})
            assert await ws.receive_json_from(timeout=FRAME_TIMEOUT) == {"event": "pong"}
    finally:
        await sync_to_async(capture.__exit__)(None, None, None)
    assert capture.captured_queries == []


# --- live frames on the configured layer ---------------------------------------------------------


@LIVE_DB
async def test_publish_messages_created_reaches_the_socket_with_counts():
    subscriber = await make_subscriber()
    await make_message(subscriber, read_at=timezone.now(), seen_at=timezone.now())
    token = await sync_to_async(token_for)(subscriber)

    async with socket(f"/ws/inbox/?token={quote(token)}") as ws:
        connected, _ = await ws.connect(timeout=FRAME_TIMEOUT)
        assert connected
        assert (await ws.receive_json_from(timeout=FRAME_TIMEOUT))["event"] == "ready"

        message = await make_message(subscriber, title="New comment", body="First!")
        await sync_to_async(publish_messages_created)([message])

        frame = await ws.receive_json_from(timeout=FRAME_TIMEOUT)
        assert frame["event"] == "message.created"
        assert frame["message"]["id"] == message.pk
        assert frame["message"]["title"] == "New comment"
        assert frame["counts"] == {"unread": 1, "unseen": 1, "total": 2}


@LIVE_DB
async def test_frames_go_only_to_their_subscriber():
    alice = await make_subscriber()
    bob = await make_subscriber(environment=alice.environment)
    alice_token = await sync_to_async(token_for)(alice)
    bob_token = await sync_to_async(token_for)(bob)

    async with (
        socket(f"/ws/inbox/?token={quote(alice_token)}") as a,
        socket(f"/ws/inbox/?token={quote(bob_token)}") as b,
    ):
        for ws in (a, b):
            assert (await ws.connect(timeout=FRAME_TIMEOUT))[0]
            assert (await ws.receive_json_from(timeout=FRAME_TIMEOUT))["event"] == "ready"

        for_bob = await make_message(bob, title="for bob")
        await sync_to_async(publish_messages_created)([for_bob])

        assert (await b.receive_json_from(timeout=FRAME_TIMEOUT))["message"]["id"] == for_bob.pk
        assert await a.receive_nothing(timeout=0.5)


@LIVE_DB
async def test_marking_pushes_updated_and_counts_frames():
    subscriber = await make_subscriber()
    first = await make_message(subscriber)
    await make_message(subscriber)
    token = await sync_to_async(token_for)(subscriber)

    async with socket(f"/ws/inbox/?token={quote(token)}") as ws:
        assert (await ws.connect(timeout=FRAME_TIMEOUT))[0]
        assert (await ws.receive_json_from(timeout=FRAME_TIMEOUT))["event"] == "ready"

        await sync_to_async(inbox_message_mark)(subscriber=subscriber, message_id=first.pk, action="read")
        updated = await ws.receive_json_from(timeout=FRAME_TIMEOUT)
        assert updated["event"] == "message.updated"
        assert updated["message"]["id"] == first.pk and updated["message"]["is_read"] is True
        assert updated["counts"] == {"unread": 1, "unseen": 1, "total": 2}

        await sync_to_async(inbox_mark_all_read)(subscriber=subscriber)
        changed = await ws.receive_json_from(timeout=FRAME_TIMEOUT)
        assert changed["event"] == "counts.changed"
        assert changed["counts"] == {"unread": 0, "unseen": 0, "total": 2}
        assert changed["change"] == {"action": "read-all"}
        assert changed["cursor"] > updated["cursor"] > 0  # every frame moves the cursor forward


@LIVE_DB
async def test_disconnect_leaves_the_group():
    subscriber = await make_subscriber()
    token = await sync_to_async(token_for)(subscriber)
    async with socket(f"/ws/inbox/?token={quote(token)}") as ws:
        assert (await ws.connect(timeout=FRAME_TIMEOUT))[0]
        await ws.receive_json_from(timeout=FRAME_TIMEOUT)
    layer = get_channel_layer()
    group = subscriber_group(environment_id=subscriber.environment_id, subscriber_pk=subscriber.pk)
    if hasattr(layer, "groups"):  # in-memory layer
        assert group not in layer.groups or not layer.groups[group]
    elif hasattr(layer, "_group_key"):  # channels-redis: a sorted set of channel names per group
        connection = layer.connection(layer.consistent_hash(group))
        assert await connection.zcard(layer._group_key(group)) == 0
    else:
        from channels_lite.models import GroupMembership

        assert not await GroupMembership.objects.filter(group_name=group).aexists()


# --- client frames (in-memory layer) -----------------------------------------------------------


@pytest.mark.django_db(transaction=True)
async def test_ping_pong_and_bad_client_frames(settings):
    settings.CHANNEL_LAYERS = IN_MEMORY
    subscriber = await make_subscriber()
    token = await sync_to_async(token_for)(subscriber)
    async with socket(f"/ws/inbox/?token={quote(token)}") as ws:
        assert (await ws.connect(timeout=FRAME_TIMEOUT))[0]
        assert (await ws.receive_json_from(timeout=FRAME_TIMEOUT))["event"] == "ready"

        await ws.send_json_to({"type": "ping"})
        assert await ws.receive_json_from(timeout=FRAME_TIMEOUT) == {"event": "pong"}

        await ws.send_to(text_data="{not json")
        assert await ws.receive_json_from(timeout=FRAME_TIMEOUT) == {"event": "error", "code": "malformed_json"}

        await ws.send_to(text_data="[" * 2000 + "]" * 2000)  # within the frame limit, deeper than json can parse
        assert await ws.receive_json_from(timeout=FRAME_TIMEOUT) == {"event": "error", "code": "malformed_json"}

        await ws.send_json_to({"type": "subscribe", "group": "inbox.1.1"})
        assert await ws.receive_json_from(timeout=FRAME_TIMEOUT) == {"event": "error", "code": "unknown_type"}

        await ws.send_to(bytes_data=b"\x00")
        assert await ws.receive_json_from(timeout=FRAME_TIMEOUT) == {"event": "error", "code": "unsupported_frame"}

        # still alive after all that
        await ws.send_json_to({"type": "ping"})
        assert await ws.receive_json_from(timeout=FRAME_TIMEOUT) == {"event": "pong"}


@pytest.mark.django_db(transaction=True)
async def test_group_event_is_forwarded_verbatim(settings):
    settings.CHANNEL_LAYERS = IN_MEMORY
    subscriber = await make_subscriber()
    token = await sync_to_async(token_for)(subscriber)
    async with socket(f"/ws/inbox/?token={quote(token)}") as ws:
        assert (await ws.connect(timeout=FRAME_TIMEOUT))[0]
        await ws.receive_json_from(timeout=FRAME_TIMEOUT)
        frame = {"event": "counts.changed", "counts": {"unread": 3, "unseen": 2, "total": 9}}
        group = subscriber_group(environment_id=subscriber.environment_id, subscriber_pk=subscriber.pk)
        await get_channel_layer().group_send(group, {"type": "inbox.event", "frame": frame})
        assert await ws.receive_json_from(timeout=FRAME_TIMEOUT) == frame


@pytest.mark.django_db(transaction=True)
async def test_unknown_path_is_not_routed(settings):
    settings.CHANNEL_LAYERS = IN_MEMORY
    with pytest.raises(ValueError):
        async with socket("/ws/elsewhere/") as ws:
            await ws.connect(timeout=FRAME_TIMEOUT)


# --- allowed origins on the handshake ---------------------------------------------------------


@sync_to_async
def lock_down(subscriber: Any, origins: list[str]) -> None:
    from apps.tenancy.origins import allowed_origins_forget

    environment = subscriber.environment
    environment.allowed_origins = origins
    environment.save(update_fields=["allowed_origins"])
    allowed_origins_forget()


@asynccontextmanager
async def socket_from(path: str, origin: str) -> AsyncIterator[WebsocketCommunicator]:
    communicator = WebsocketCommunicator(
        application, path, headers=[(b"origin", origin.encode()), (b"host", b"clarion.test")]
    )
    try:
        yield communicator
    finally:
        await communicator.disconnect()


@pytest.mark.django_db(transaction=True)
async def test_handshake_from_a_foreign_origin_is_closed_4403(settings):
    settings.CHANNEL_LAYERS = IN_MEMORY
    subscriber = await make_subscriber()
    await lock_down(subscriber, ["https://app.example.com", "https://*.example.org"])
    token = await sync_to_async(token_for)(subscriber)

    async with socket_from(f"/ws/inbox/?token={quote(token)}", "https://evil.test") as ws:
        await assert_closed_with(ws, 4403)
    for origin in ("https://app.example.com", "https://eu.example.org", "http://clarion.test"):
        async with socket_from(f"/ws/inbox/?token={quote(token)}", origin) as ws:
            assert (await ws.connect(timeout=FRAME_TIMEOUT))[0]
            assert (await ws.receive_json_from(timeout=FRAME_TIMEOUT))["event"] == "ready", origin


@pytest.mark.django_db(transaction=True)
async def test_handshake_origin_check_is_cached(settings):
    """One query for the environment's origins on a cold cache, none for the next handshakes."""
    settings.CHANNEL_LAYERS = IN_MEMORY
    subscriber = await make_subscriber()
    await lock_down(subscriber, ["https://app.example.com"])
    token = await sync_to_async(token_for)(subscriber)
    capture = await sync_to_async(lambda: CaptureQueriesContext(connections["default"]))()
    await sync_to_async(capture.__enter__)()
    try:
        for _ in range(3):
            async with socket_from(f"/ws/inbox/?token={quote(token)}", "https://app.example.com") as ws:
                assert (await ws.connect(timeout=FRAME_TIMEOUT))[0]
                assert (await ws.receive_json_from(timeout=FRAME_TIMEOUT))["event"] == "ready"
    finally:
        await sync_to_async(capture.__exit__)(None, None, None)
    assert len(capture.captured_queries) == 1, capture.captured_queries


@LIVE_DB
async def test_frames_carry_the_message_cursor():
    subscriber = await make_subscriber()
    token = await sync_to_async(token_for)(subscriber)
    async with socket(f"/ws/inbox/?token={quote(token)}") as ws:
        assert (await ws.connect(timeout=FRAME_TIMEOUT))[0]
        await ws.receive_json_from(timeout=FRAME_TIMEOUT)
        first = await make_message(subscriber)
        second = await make_message(subscriber)
        await sync_to_async(publish_messages_created)([second, first])
        frames = [await ws.receive_json_from(timeout=FRAME_TIMEOUT) for _ in range(2)]
    assert [f["message"]["id"] for f in frames] == [first.pk, second.pk]  # in cursor order
    assert [f["cursor"] for f in frames] == [first.seq, second.seq]
    assert first.seq < second.seq


@LIVE_DB
async def test_forwarding_frames_costs_no_query():
    """The consumer is a relay: frames carry everything, so pushing N of them reads nothing."""
    subscriber = await make_subscriber()
    token = await sync_to_async(token_for)(subscriber)
    group = subscriber_group(environment_id=subscriber.environment_id, subscriber_pk=subscriber.pk)
    async with socket(f"/ws/inbox/?token={quote(token)}") as ws:
        assert (await ws.connect(timeout=FRAME_TIMEOUT))[0]
        await ws.receive_json_from(timeout=FRAME_TIMEOUT)
        capture = await sync_to_async(lambda: CaptureQueriesContext(connections["default"]))()
        await sync_to_async(capture.__enter__)()
        try:
            for n in range(20):
                frame = {"event": "counts.changed", "cursor": n, "counts": {"unread": n, "unseen": n, "total": n}}
                await get_channel_layer().group_send(group, {"type": "inbox.event", "frame": frame})
            received = [await ws.receive_json_from(timeout=FRAME_TIMEOUT) for _ in range(20)]
        finally:
            await sync_to_async(capture.__exit__)(None, None, None)
    assert [f["cursor"] for f in received] == list(range(20))
    assert capture.captured_queries == []


@pytest.mark.services
@pytest.mark.django_db(transaction=True)
async def test_idle_socket_survives_the_redis_blocking_read():
    """On channels-redis, a consumer idle for longer than the layer's 5 s BZPOPMIN still gets frames
    (redis-py 8 reads with a 5 s timeout by default; settings give the layer 15 s)."""
    if not REDIS_LAYER:
        pytest.skip("needs the channels-redis layer (REDIS_URL)")
    subscriber = await make_subscriber()
    token = await sync_to_async(token_for)(subscriber)
    group = subscriber_group(environment_id=subscriber.environment_id, subscriber_pk=subscriber.pk)
    async with socket(f"/ws/inbox/?token={quote(token)}") as ws:
        assert (await ws.connect(timeout=FRAME_TIMEOUT))[0]
        await ws.receive_json_from(timeout=FRAME_TIMEOUT)
        await asyncio.sleep(7)
        frame = {"event": "counts.changed", "cursor": 1, "counts": {"unread": 1, "unseen": 1, "total": 1}}
        await get_channel_layer().group_send(group, {"type": "inbox.event", "frame": frame})
        assert await ws.receive_json_from(timeout=FRAME_TIMEOUT) == frame


@pytest.mark.services
@pytest.mark.django_db(transaction=True)
async def test_a_burst_to_many_sockets_of_one_process_is_not_dropped():
    """All sockets of a process share one Redis list in channels-redis; a burst larger than the
    layer's capacity (100 by default) used to be dropped silently. 150 subscribers, one frame each."""
    if not REDIS_LAYER:
        pytest.skip("needs the channels-redis layer (REDIS_URL)")
    subscribers = [await make_subscriber() for _ in range(150)]
    sockets = []
    try:
        for subscriber in subscribers:
            token = await sync_to_async(token_for)(subscriber)
            ws = WebsocketCommunicator(application, f"/ws/inbox/?token={quote(token)}")
            assert (await ws.connect(timeout=FRAME_TIMEOUT))[0]
            await ws.receive_json_from(timeout=FRAME_TIMEOUT)
            sockets.append(ws)
        layer = get_channel_layer()
        for n, subscriber in enumerate(subscribers):
            group = subscriber_group(environment_id=subscriber.environment_id, subscriber_pk=subscriber.pk)
            frame = {"event": "counts.changed", "cursor": n, "counts": {"unread": 1, "unseen": 1, "total": 1}}
            await layer.group_send(group, {"type": "inbox.event", "frame": frame})
        received = [(await ws.receive_json_from(timeout=FRAME_TIMEOUT))["cursor"] for ws in sockets]
        assert received == list(range(150))
    finally:
        for ws in sockets:
            await ws.disconnect()
