"""The Redis cache keeps one client (one connection pool) per process, whatever thread asks."""

from __future__ import annotations

import threading

import pytest
from django.conf import settings
from django.core.cache import caches

pytestmark = pytest.mark.skipif(not settings.REDIS_URL, reason="the Redis cache is used only with REDIS_URL")


def test_every_thread_shares_one_client_and_one_connection() -> None:
    clients: list[object] = []
    errors: list[BaseException] = []

    def request_like() -> None:
        try:
            cache = caches["default"]  # a new cache instance in each thread, as Django gives
            cache.set("cache-test-key", 1, 10)
            assert cache.get("cache-test-key") == 1
            clients.append(cache._cache)  # type: ignore[attr-defined]
        except BaseException as exc:
            errors.append(exc)

    for _ in range(20):  # one after the other: a pool with one free connection reuses it
        thread = threading.Thread(target=request_like)
        thread.start()
        thread.join()

    assert not errors
    assert len({id(client) for client in clients}) == 1
    pool = clients[0]._get_connection_pool(write=True)  # type: ignore[attr-defined]
    # Django's RedisCache made a client, a pool and a TCP connection per thread: 20 here.
    assert pool._created_connections == 1
