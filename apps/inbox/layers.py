"""The inbox's channel layer: channels-redis with a bounded, waiting connection pool and batched calls.

``channels_redis.core.RedisChannelLayer`` as shipped:

* builds each event loop's pool with ``redis.asyncio.ConnectionPool.from_url``, whose default
  ``max_connections`` is 100 and which *raises* ``MaxConnectionsError`` when they are all in use
  instead of waiting: a storm of a few hundred websocket handshakes (two ``group_add`` each, every
  one holding a connection for its round trip) failed with HTTP 500;
* costs two round trips per ``group_add`` (ZADD, then EXPIRE) and four per ``group_send``.

This layer keeps the wire format (same keys, same serializer, same Lua semantics, so processes
running the stock layer interoperate) and changes how it talks to Redis:

* ``BlockingConnectionPool``: at most ``max_connections`` per process and event loop; a caller
  beyond that *waits* for a free connection (up to ``pool_timeout`` seconds);
* ``group_add_many`` / ``group_discard_many``: every group of a socket in one pipeline (one round
  trip per handshake);
* ``group_send_many``: synchronous, for the workers and views that push after a commit. A batch of
  frames costs two round trips whatever its size (the groups' members, then one Lua call that
  queues every message), on a process-wide synchronous pool, so no event loop and no new
  connection is made per push.
* receiving on the process's channel (every socket of a websocket process shares one Redis sorted
  set): ``ZPOPMIN`` of up to ``receive_batch`` messages in one round trip, ``BZPOPMIN`` only when
  it is empty. channels-redis spends four round trips on *each* message (restore the backup
  queue, ``BZPOPMIN``, ``ZADD`` to the backup queue, ``ZPOPMIN`` it off again), one message after
  the other, so a micro-batch's frames reached their sockets one 4-round-trip step apart. Popped
  messages are kept by the layer, not by the coroutine that popped them, and a pop is shielded
  from that coroutine's cancellation (a socket closing while it holds the receive lock): what
  the backup queue protected against cannot lose them either.
"""

from __future__ import annotations

import asyncio
import functools
import threading
import time
from collections import defaultdict, deque
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import redis
from channels_redis.core import RedisChannelLayer
from redis import asyncio as aioredis

# The Lua of channels-redis's group_send, for many channel keys at once, with the expiry of old
# messages (a separate pipeline in channels-redis) folded in. KEYS: channel keys (a key may repeat);
# ARGV: one message per key, one capacity per key, one score per key (the send time, a microsecond
# apart within a batch so that a process receives them in order), then the expiry and the score
# below which a message has expired.
_SEND_LUA = """
local n = #KEYS
local expiry = ARGV[3 * n + 1]
local expired = ARGV[3 * n + 2]
local over_capacity = 0
for i = 1, n do
    redis.call('ZREMRANGEBYSCORE', KEYS[i], 0, expired)
    if redis.call('ZCOUNT', KEYS[i], '-inf', '+inf') < tonumber(ARGV[n + i]) then
        redis.call('ZADD', KEYS[i], ARGV[2 * n + i], ARGV[i])
        redis.call('EXPIRE', KEYS[i], expiry)
    else
        over_capacity = over_capacity + 1
    end
end
return over_capacity
"""


# channels-redis's restore of a channel's backup queue (messages a stock receive popped and did
# not finish): run once per channel key before this layer first pops from it.
_RESTORE_BACKUP_LUA = """
local backed_up = redis.call('ZRANGE', ARGV[2], 0, -1, 'WITHSCORES')
for i = #backed_up, 1, -2 do
    redis.call('ZADD', ARGV[1], backed_up[i], backed_up[i - 1])
end
redis.call('DEL', ARGV[2])
"""


class InboxChannelLayer(RedisChannelLayer):
    def __init__(
        self, *, max_connections: int = 50, pool_timeout: float = 30.0, receive_batch: int = 100, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.max_connections = max_connections
        self.pool_timeout = pool_timeout
        self.receive_batch = receive_batch
        self._sync_clients: dict[int, redis.Redis] = {}
        self._sync_lock = threading.Lock()
        self._send_scripts: dict[int, Any] = {}
        # per process-local channel key: messages popped and not yet handed out, the pop in flight
        self._popped: dict[bytes | str, deque[bytes]] = defaultdict(deque)
        self._pops: dict[bytes | str, asyncio.Task[None]] = {}
        self._restored: set[bytes | str] = set()

    # --- connections --------------------------------------------------------------------------

    def _pool_kwargs(self, index: int) -> tuple[str | None, dict[str, Any]]:
        host = dict(self.hosts[index])
        address = host.pop("address", None)
        host.setdefault("max_connections", self.max_connections)
        host.setdefault("timeout", self.pool_timeout)
        return address, host

    def create_pool(self, index: int) -> Any:
        if "master_name" in self.hosts[index]:  # Sentinel: channels-redis's own pool
            return super().create_pool(index)
        address, kwargs = self._pool_kwargs(index)
        if address is None:
            return aioredis.BlockingConnectionPool(**kwargs)
        return aioredis.BlockingConnectionPool.from_url(address, **kwargs)

    def sync_connection(self, index: int) -> redis.Redis:
        """A process-wide synchronous client (thread-safe pool; reset in a forked child by redis-py)."""
        client = self._sync_clients.get(index)
        if client is None:
            with self._sync_lock:
                client = self._sync_clients.get(index)
                if client is None:
                    address, kwargs = self._pool_kwargs(index)
                    pool = (
                        redis.BlockingConnectionPool(**kwargs)
                        if address is None
                        else redis.BlockingConnectionPool.from_url(address, **kwargs)
                    )
                    client = self._sync_clients[index] = redis.Redis(connection_pool=pool)
        return client

    def _script(self, index: int) -> Any:
        script = self._send_scripts.get(index)
        if script is None:
            script = self._send_scripts[index] = self.sync_connection(index).register_script(_SEND_LUA)
        return script

    # --- groups -------------------------------------------------------------------------------

    async def group_add_many(self, groups: Sequence[str], channel: str) -> None:
        """Add ``channel`` to every group: one pipeline per Redis host (one round trip with one host)."""
        assert self.require_valid_channel_name(channel), "Channel name not valid"
        now = time.time()
        for index, keys in self._group_keys_by_host(groups).items():
            pipe = self.connection(index).pipeline(transaction=False)
            for key in keys:
                pipe.zadd(key, {channel: now})
                pipe.expire(key, self.group_expiry)
            await pipe.execute()

    async def group_discard_many(self, groups: Sequence[str], channel: str) -> None:
        assert self.require_valid_channel_name(channel), "Channel name not valid"
        for index, keys in self._group_keys_by_host(groups).items():
            pipe = self.connection(index).pipeline(transaction=False)
            for key in keys:
                pipe.zrem(key, channel)
            await pipe.execute()

    def _group_keys_by_host(self, groups: Iterable[str]) -> dict[int, list[bytes]]:
        by_host: dict[int, list[bytes]] = defaultdict(list)
        for group in groups:
            assert self.require_valid_group_name(group), "Group name not valid"
            by_host[self.consistent_hash(group)].append(self._group_key(group))
        return by_host

    def groups_listening(self, groups: Sequence[str]) -> set[str]:
        """The groups that have a member now (one not past ``group_expiry``): one pipelined
        ``ZCOUNT`` per group, one round trip per Redis host, nothing written. A push can skip
        building the frames of the others: ``group_send_many`` would drop them anyway."""
        if not groups:
            return set()
        low = int(time.time()) - self.group_expiry
        by_host: dict[int, list[str]] = defaultdict(list)
        for group in groups:
            assert self.require_valid_group_name(group), "Group name not valid"
            by_host[self.consistent_hash(group)].append(group)
        live: set[str] = set()
        for index, names in by_host.items():
            pipe = self.sync_connection(index).pipeline(transaction=False)
            for name in names:
                pipe.zcount(self._group_key(name), f"({low}", "+inf")
            for name, count in zip(names, pipe.execute(), strict=True):
                if count:
                    live.add(name)
        return live

    def groups_members(self, groups: Sequence[str]) -> dict[str, list[str]]:
        """The groups that have a member now, each with its members not past ``group_expiry``: one
        pipelined ``ZRANGEBYSCORE`` per group, one round trip per Redis host, nothing written.
        ``groups_listening`` that also hands ``group_send_many`` the members, so a push skips the
        round trip that looks them up again."""
        if not groups:
            return {}
        low = int(time.time()) - self.group_expiry
        by_host: dict[int, list[str]] = defaultdict(list)
        for group in groups:
            assert self.require_valid_group_name(group), "Group name not valid"
            by_host[self.consistent_hash(group)].append(group)
        live: dict[str, list[str]] = {}
        for index, names in by_host.items():
            pipe = self.sync_connection(index).pipeline(transaction=False)
            for name in names:
                pipe.zrangebyscore(self._group_key(name), f"({low}", "+inf")
            for name, found in zip(names, pipe.execute(), strict=True):
                if found:
                    live[name] = [member.decode("utf8") for member in found]
        return live

    def group_send_many(
        self, sends: Sequence[tuple[str, dict[str, Any]]], *, members: Mapping[str, Sequence[str]] | None = None
    ) -> int:
        """Send each ``(group, message)`` to its group's members, synchronously, in order.

        Two round trips per Redis host for the whole batch: the members of every group (dropping
        those past ``group_expiry``), then one Lua call queueing every message. Returns how many
        messages were dropped because a channel was over capacity (channels-redis logs the same).
        ``members``: the groups' members as ``groups_members`` just found them; the groups it
        names are not looked up again (with all of them: one round trip for the batch).
        """
        if not sends:
            return 0
        now = time.time()
        known = members or {}
        found: dict[int, list[str]] = {}
        by_host: dict[int, list[int]] = defaultdict(list)
        for position, (group, _message) in enumerate(sends):
            assert self.require_valid_group_name(group), "Group name not valid"
            if group in known:
                found[position] = list(known[group])
            else:
                by_host[self.consistent_hash(group)].append(position)
        for index, positions in by_host.items():
            pipe = self.sync_connection(index).pipeline(transaction=False)
            for position in positions:
                key = self._group_key(sends[position][0])
                pipe.zremrangebyscore(key, min=0, max=int(now) - self.group_expiry)
                pipe.zrange(key, 0, -1)
            replies = pipe.execute()
            for offset, position in enumerate(positions):
                found[position] = [name.decode("utf8") for name in replies[2 * offset + 1]]
        receivers = [found[position] for position in range(len(sends))]

        # Per channel key (one per receiving process for process-local channels), in send order.
        keys: dict[int, list[bytes]] = defaultdict(list)
        messages: dict[int, list[bytes]] = defaultdict(list)
        capacities: dict[int, list[int]] = defaultdict(list)
        scores: dict[int, list[str]] = defaultdict(list)
        sequence = 0
        for (_group, message), names in zip(sends, receivers, strict=True):
            per_key: dict[str, list[str]] = {}
            for name in names:
                non_local = self.non_local_name(name) if "!" in name else name
                per_key.setdefault(non_local, []).append(name)
            for non_local, channels in per_key.items():
                index = self.consistent_hash(non_local)
                keys[index].append((self.prefix + non_local).encode("utf8"))
                messages[index].append(self.serialize({**message, "__asgi_channel__": channels}))
                capacities[index].append(self.get_capacity(channels[0]))
                scores[index].append(repr(now + sequence * 1e-6))
                sequence += 1
        dropped = 0
        for index, channel_keys in keys.items():
            dropped += int(
                self._script(index)(
                    keys=channel_keys,
                    args=[
                        *messages[index],
                        *capacities[index],
                        *scores[index],
                        int(self.expiry),
                        int(now) - int(self.expiry),
                    ],
                )
            )
        return dropped

    # --- receiving ----------------------------------------------------------------------------

    async def receive_single(self, channel: str) -> tuple[Any, dict[str, Any]]:
        """The next message of ``channel``; for the process's own channel (``...!``, every socket
        of this process) from a batch popped at once (see the module's docstring)."""
        if "!" not in channel:
            return await super().receive_single(channel)
        assert self.require_valid_channel_name(channel, receive=True), "Channel name invalid"
        channel_key = self.prefix + channel
        while not self._popped[channel_key]:
            task = self._pops.get(channel_key)
            if task is None or task.get_loop() is not asyncio.get_running_loop():
                task = asyncio.ensure_future(self._pop(channel_key, self.consistent_hash(channel)))
                self._pops[channel_key] = task
                task.add_done_callback(functools.partial(self._pop_done, channel_key))
            # Shielded: if the caller is cancelled the pop still lands in ``_popped`` for the next one.
            await asyncio.shield(task)
        message = self.deserialize(self._popped[channel_key].popleft())
        if "__asgi_channel__" in message:
            channel = message.pop("__asgi_channel__")
        return channel, message

    async def _pop(self, channel_key: bytes | str, index: int) -> None:
        connection = self.connection(index)
        if channel_key not in self._restored:
            await connection.eval(_RESTORE_BACKUP_LUA, 0, channel_key, self._backup_channel_name(channel_key))
            self._restored.add(channel_key)
        batch = await connection.zpopmin(channel_key, self.receive_batch)
        if batch:
            self._popped[channel_key].extend(member for member, _score in batch)
            return
        result = await connection.bzpopmin(channel_key, timeout=self.brpop_timeout)
        if result is not None:
            self._popped[channel_key].append(result[1])

    def _pop_done(self, channel_key: bytes | str, task: asyncio.Task[None]) -> None:
        if self._pops.get(channel_key) is task:
            del self._pops[channel_key]
        if not task.cancelled():
            task.exception()  # retrieved here; the awaiting receive raises it

    async def flush(self) -> None:
        for task in list(self._pops.values()):
            task.cancel()
        self._pops.clear()
        self._popped.clear()
        self._restored.clear()
        await super().flush()
        with self._sync_lock:
            clients, self._sync_clients = self._sync_clients, {}
            self._send_scripts = {}
        for client in clients.values():
            client.close()
            client.connection_pool.disconnect()
