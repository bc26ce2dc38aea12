"""The inbox's Redis channel layer (apps.inbox.layers): handshake storms, batched sends, order, capacity.

Needs the Redis layer (``REDIS_URL``); skipped on the embedded default's SQLite layer.
"""

from __future__ import annotations

import asyncio
import copy
import time
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote

import pytest
from asgiref.sync import sync_to_async
from channels.layers import channel_layers, get_channel_layer
from channels.testing import WebsocketCommunicator
from django.conf import settings as django_settings

from apps.inbox.layers import InboxChannelLayer
from apps.inbox.realtime import subscriber_group
from config.asgi import application
from tests.factories import SubscriberFactory
from tests.inbox.conftest import token_for

pytestmark = [
    pytest.mark.services,
    pytest.mark.skipif(
        django_settings.CHANNEL_LAYERS["default"]["BACKEND"] != "apps.inbox.layers.InboxChannelLayer",
        reason="needs the Redis channel layer (REDIS_URL)",
    ),
]
TIMEOUT = 20


def _layers_config(**overrides: Any) -> dict[str, Any]:
    config = copy.deepcopy(django_settings.CHANNEL_LAYERS)
    # A prefix of its own: these tests never see (or leave) another test's messages.
    config["default"]["CONFIG"].update({"prefix": "clarion-layer-test", **overrides})
    return config


@pytest.fixture(autouse=True)
async def _fresh_layer() -> AsyncIterator[None]:
    channel_layers.backends = {}
    yield
    for layer in list(channel_layers.backends.values()):
        await layer.flush()
    channel_layers.backends = {}


def _layer(**overrides: Any) -> InboxChannelLayer:
    return InboxChannelLayer(**_layers_config(**overrides)["default"]["CONFIG"])


@pytest.mark.django_db(transaction=True)
async def test_a_storm_of_handshakes_waits_for_connections_instead_of_failing(settings):
    """300 sockets connect at once through a pool of 4 Redis connections: every one is accepted
    (the stock channels-redis pool raised MaxConnectionsError once its connections were in use)."""
    settings.CHANNEL_LAYERS = _layers_config(max_connections=4)
    subscribers = [await sync_to_async(SubscriberFactory)() for _ in range(10)]
    tokens = [await sync_to_async(token_for)(s) for s in subscribers]
    sockets = [WebsocketCommunicator(application, f"/ws/inbox/?token={quote(tokens[n % 10])}") for n in range(300)]
    try:
        results = await asyncio.gather(*(ws.connect(timeout=TIMEOUT) for ws in sockets))
        assert [connected for connected, _ in results] == [True] * 300
        ready = await asyncio.gather(*(ws.receive_json_from(timeout=TIMEOUT) for ws in sockets))
        assert {frame["event"] for frame in ready} == {"ready"}
        # every socket is in its subscriber's group: one push reaches its 30 sockets
        group = subscriber_group(environment_id=subscribers[3].environment_id, subscriber_pk=subscribers[3].pk)
        frame = {"event": "counts.changed", "cursor": 7, "counts": {"unread": 1, "unseen": 1, "total": 1}}
        await sync_to_async(get_channel_layer().group_send_many)([(group, {"type": "inbox.event", "frame": frame})])
        got = await asyncio.gather(*(sockets[n].receive_json_from(timeout=TIMEOUT) for n in range(3, 300, 10)))
        assert got == [frame] * 30
        assert all([await sockets[n].receive_nothing(timeout=0.2) for n in range(0, 300, 10)])
    finally:
        await asyncio.gather(*(ws.disconnect() for ws in sockets))


async def test_group_add_many_is_one_round_trip_per_handshake():
    layer = _layer()
    channel = await layer.new_channel()
    calls: list[str] = []
    connection = layer.connection(0)
    original_pipeline = connection.pipeline

    def counting_pipeline(*args: Any, **kwargs: Any) -> Any:
        calls.append("pipeline")
        return original_pipeline(*args, **kwargs)

    connection.pipeline = counting_pipeline  # type: ignore[method-assign]
    await layer.group_add_many(["inbox.1.2", "inbox.1"], channel)
    assert calls == ["pipeline"]
    for group in ("inbox.1.2", "inbox.1"):
        assert await connection.zscore(layer._group_key(group), channel) is not None
    await layer.group_discard_many(["inbox.1.2", "inbox.1"], channel)
    for group in ("inbox.1.2", "inbox.1"):
        assert await connection.zscore(layer._group_key(group), channel) is None


async def test_group_send_many_delivers_each_group_in_order():
    layer = _layer()
    first, second, third = [await layer.new_channel() for _ in range(3)]
    await layer.group_add_many(["g.a"], first)
    await layer.group_add_many(["g.a", "g.b"], second)
    await layer.group_add_many(["g.c"], third)
    sends = [("g.a", {"type": "t", "n": 1}), ("g.b", {"type": "t", "n": 2}), ("g.a", {"type": "t", "n": 3})]
    sends += [("g.empty", {"type": "t", "n": 4})] + [("g.c", {"type": "t", "n": 10 + n}) for n in range(50)]
    assert await sync_to_async(layer.group_send_many)(sends) == 0

    async def drain(channel: str, count: int) -> list[int]:
        return [(await asyncio.wait_for(layer.receive(channel), TIMEOUT))["n"] for _ in range(count)]

    assert await drain(first, 2) == [1, 3]
    assert await drain(second, 3) == [1, 2, 3]
    assert await drain(third, 50) == [10 + n for n in range(50)]


async def test_a_burst_to_the_process_channel_is_popped_in_one_round_trip():
    """50 frames queued at once for 50 sockets of one process: every socket gets its frame, in
    send order, from one ZPOPMIN (channels-redis: four round trips per frame, one after the other)."""
    layer = _layer()
    channels = [await layer.new_channel() for _ in range(50)]
    for n, channel in enumerate(channels):
        await layer.group_add_many([f"g.s{n}"], channel)
    assert await sync_to_async(layer.group_send_many)([(f"g.s{n}", {"type": "t", "n": n}) for n in range(50)]) == 0
    connection = layer.connection(0)
    calls: list[str] = []
    for name in ("zpopmin", "bzpopmin", "eval", "zadd"):
        original = getattr(connection, name)

        def counting(*args: Any, _name: str = name, _original: Any = original, **kwargs: Any) -> Any:
            calls.append(_name)
            return _original(*args, **kwargs)

        setattr(connection, name, counting)
    received = await asyncio.wait_for(asyncio.gather(*(layer.receive(c) for c in channels)), TIMEOUT)
    assert [message["n"] for message in received] == list(range(50))
    assert calls.count("zpopmin") == 1
    assert "bzpopmin" not in calls and "zadd" not in calls


async def test_a_receiver_cancelled_while_it_pops_loses_no_message():
    """The socket holding the receive lock closes while the pop is on its way: the frames it
    popped for the others still reach them (the pop is the layer's, not the closing socket's)."""
    layer = _layer()
    leaving, staying = await layer.new_channel(), await layer.new_channel()
    await layer.group_add_many(["g.leaving"], leaving)
    await layer.group_add_many(["g.staying"], staying)
    leaving_receive = asyncio.ensure_future(layer.receive(leaving))
    await asyncio.sleep(0.2)  # it holds the lock and waits in BZPOPMIN
    assert layer._pops
    await sync_to_async(layer.group_send_many)([("g.staying", {"type": "t", "n": 1})])
    leaving_receive.cancel()
    with pytest.raises(asyncio.CancelledError):
        await leaving_receive
    assert (await asyncio.wait_for(layer.receive(staying), TIMEOUT))["n"] == 1


async def test_the_backup_queue_a_stock_receive_left_is_delivered_first():
    """Messages channels-redis's own receive popped into its backup queue and never handed out
    are put back before this layer first pops from the channel."""
    layer = _layer()
    channel = await layer.new_channel()
    key = layer.prefix + layer.non_local_name(channel)
    connection = layer.connection(0)
    message = layer.serialize({"type": "t", "n": 0, "__asgi_channel__": [channel]})
    await connection.zadd(layer._backup_channel_name(key), {message: time.time()})
    assert (await asyncio.wait_for(layer.receive(channel), TIMEOUT))["n"] == 0
    assert await connection.exists(layer._backup_channel_name(key)) == 0


async def test_group_send_many_drops_past_capacity_and_says_so():
    layer = _layer(capacity=2)
    channel = await layer.new_channel()
    await layer.group_add_many(["g.full"], channel)
    sends = [("g.full", {"type": "t", "n": n}) for n in range(3)]
    assert await sync_to_async(layer.group_send_many)(sends) == 1
    assert [(await asyncio.wait_for(layer.receive(channel), TIMEOUT))["n"] for _ in range(2)] == [0, 1]


async def test_the_stock_group_send_reaches_channels_added_in_batches():
    """Processes running channels-redis's own layer (the same keys) still reach our sockets."""
    layer = _layer()
    channel = await layer.new_channel()
    await layer.group_add_many(["g.stock"], channel)
    await layer.group_send("g.stock", {"type": "t", "n": 1})
    assert (await asyncio.wait_for(layer.receive(channel), TIMEOUT))["n"] == 1


async def test_groups_listening_names_only_groups_with_a_live_member(settings):
    layer = _layer(group_expiry=60)
    channel = await layer.new_channel()
    await layer.group_add_many(["g.live", "g.stale"], channel)
    # a member past group_expiry no longer counts (group_send_many would drop it too)
    await layer.connection(0).zadd(layer._group_key("g.stale"), {channel: 1})
    found = await sync_to_async(layer.groups_listening)(["g.live", "g.stale", "g.nobody"])
    assert found == {"g.live"}
    assert await sync_to_async(layer.groups_listening)([]) == set()


async def test_groups_members_hands_group_send_many_the_members_it_found():
    """The push's open-socket check returns the members, and the send given them is one round
    trip (the Lua call), not two; a group it does not name is still looked up."""
    layer = _layer(group_expiry=60)
    first, second = await layer.new_channel(), await layer.new_channel()
    await layer.group_add_many(["g.m1"], first)
    await layer.group_add_many(["g.m2"], second)
    await layer.connection(0).zadd(layer._group_key("g.m1"), {"specific.stale!x": 1})  # past group_expiry
    members = await sync_to_async(layer.groups_members)(["g.m1", "g.m2", "g.nobody"])
    assert members == {"g.m1": [first], "g.m2": [second]}
    pipelines: list[str] = []
    client = layer.sync_connection(0)
    original_pipeline = client.pipeline

    def counting_pipeline(*args: Any, **kwargs: Any) -> Any:
        pipelines.append("pipeline")
        return original_pipeline(*args, **kwargs)

    client.pipeline = counting_pipeline  # type: ignore[method-assign]
    sends = [("g.m1", {"type": "t", "n": 1}), ("g.m2", {"type": "t", "n": 2})]
    assert await sync_to_async(layer.group_send_many)(sends, members=members) == 0
    assert pipelines == []
    assert await sync_to_async(layer.group_send_many)(sends[:1], members={"g.m2": [second]}) == 0
    assert pipelines == ["pipeline"]
    assert [(await asyncio.wait_for(layer.receive(c), TIMEOUT))["n"] for c in (first, second, first)] == [1, 2, 1]


@pytest.mark.django_db(transaction=True)
async def test_a_push_builds_frames_only_for_subscribers_with_an_open_socket(settings, monkeypatch):
    """publish_messages_created to two subscribers, one online: one frame, and the counts query
    asks only for the online one."""
    from apps.inbox import realtime
    from apps.inbox.models import InboxMessage

    settings.CHANNEL_LAYERS = _layers_config()
    online, offline = [await sync_to_async(SubscriberFactory)() for _ in range(2)]
    asked: list[set[int]] = []
    original_counts = realtime.inbox_counts

    def counting(*, subscriber_ids: Any) -> Any:
        asked.append(set(subscriber_ids))
        return original_counts(subscriber_ids=subscriber_ids)

    monkeypatch.setattr(realtime, "inbox_counts", counting)
    ws = WebsocketCommunicator(application, f"/ws/inbox/?token={quote(await sync_to_async(token_for)(online))}")
    try:
        assert (await ws.connect(timeout=TIMEOUT))[0]
        assert (await ws.receive_json_from(timeout=TIMEOUT))["event"] == "ready"
        messages = [
            InboxMessage(pk=100 + n, environment_id=s.environment_id, subscriber_id=s.pk, title=f"t{n}", seq=5 + n)
            for n, s in enumerate([offline, online])
        ]
        await sync_to_async(realtime.publish_messages_created)(messages)
        frame = await ws.receive_json_from(timeout=TIMEOUT)
        assert (frame["event"], frame["message"]["id"], frame["cursor"]) == ("message.created", 101, 6)
        assert await ws.receive_nothing(timeout=0.2)
        assert asked == [{online.pk}]
    finally:
        await ws.disconnect()


@pytest.mark.django_db(transaction=True)
async def test_a_push_of_inserted_rows_builds_model_instances_only_for_subscribers_online(settings, monkeypatch):
    """publish_rows_created (inbox_messages_create's push after commit) to two subscribers, one
    online: one frame, and one InboxMessage instance built, the online subscriber's."""
    from apps.inbox import realtime
    from apps.inbox.models import InboxMessage

    settings.CHANNEL_LAYERS = _layers_config()
    online, offline = [await sync_to_async(SubscriberFactory)() for _ in range(2)]
    built: list[int] = []

    def building(**fields: Any) -> InboxMessage:
        built.append(fields["subscriber_id"])
        return InboxMessage(**fields)

    monkeypatch.setattr(realtime, "InboxMessage", building)
    ws = WebsocketCommunicator(application, f"/ws/inbox/?token={quote(await sync_to_async(token_for)(online))}")
    try:
        assert (await ws.connect(timeout=TIMEOUT))[0]
        assert (await ws.receive_json_from(timeout=TIMEOUT))["event"] == "ready"
        rows = [
            {"environment_id": s.environment_id, "subscriber_id": s.pk, "title": f"t{n}", "seq": 5 + n}
            for n, s in enumerate([offline, online])
        ]
        await sync_to_async(realtime.publish_rows_created)(rows, [100, 101])
        frame = await ws.receive_json_from(timeout=TIMEOUT)
        assert (frame["event"], frame["message"]["id"], frame["message"]["title"]) == ("message.created", 101, "t1")
        assert await ws.receive_nothing(timeout=0.2)
        assert built == [online.pk]
    finally:
        await ws.disconnect()
