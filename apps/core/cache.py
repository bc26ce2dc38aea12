"""Django's Redis cache with one connection pool per process instead of one per thread.

Django keeps a cache instance per thread (and per async context), and ``RedisCache`` builds its
client — with its own connection pool — per instance. Under ASGI every request runs its sync code
in a new thread, so each request opened a new Redis connection (TCP connect, HELLO, the client's
driver-info lookup): about a fifth of the web process's CPU per API request, measured with py-spy
under load (docs/benchmarks.md). redis-py's pools are thread-safe and reset themselves in a forked
child, so one client per process and configuration is safe.
"""

from __future__ import annotations

import threading
from typing import Any

from django.core.cache.backends.redis import RedisCache, RedisCacheClient
from django.utils.functional import cached_property

_clients: dict[tuple[str, str], RedisCacheClient] = {}
_clients_lock = threading.Lock()


class SharedRedisCache(RedisCache):
    def __init__(self, server: str, params: dict[str, Any]) -> None:
        super().__init__(server, params)
        self._client_key = (repr(server), repr(sorted(params.get("OPTIONS", {}).items())))

    @cached_property
    def _cache(self) -> RedisCacheClient:
        client = _clients.get(self._client_key)
        if client is None:
            with _clients_lock:
                client = _clients.get(self._client_key)
                if client is None:
                    client = _clients[self._client_key] = super()._cache
        return client
