"""Rate limits for the API: DRF throttles counting in Django's cache.

Scopes (``REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"]``, from the ``CLARION_RATE_*`` variables in
docs/deployment.md), each counted per environment or per caller:

* ``trigger`` — ``POST /events/trigger`` and ``/events/bulk`` (views with ``throttle_scope =
  "trigger"`` too), per environment of the secret key;
* ``management`` — every other server-API call, per environment of the secret key;
* ``inbox`` — the inbox endpoints (session token), per environment;
* ``inbox_session_subscriber`` / ``inbox_session_ip`` — ``POST /inbox/session``, per publishable
  key + subscriber id and per client IP (IPv6 per /64: one host usually holds the whole /64).

A refusal is ``429`` with ``Retry-After`` and the error envelope's ``details``
``{"retry_after": seconds, "scope": scope}`` (apps.core.errors).

Counting: DRF's ``SimpleRateThrottle`` keeps a list of timestamps per key and reads then rewrites
it (two cache round trips, a pickled list as long as the limit, and lost updates between
processes). These classes keep DRF's rates, scopes, keys and ``Throttled`` plumbing but count in
fixed windows with one atomic increment: on Redis ``INCR`` + ``EXPIRE`` in one pipeline (one
round trip per request), in the per-process cache of the embedded default an add-or-increment.
A cache that cannot be reached lets requests through (logged): rate limits must not take the API
down with them.
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import math
from collections.abc import Mapping
from typing import Any, Protocol, TypeGuard

from django.core.cache import caches
from django.core.cache.backends.base import BaseCache
from django.core.cache.backends.redis import RedisCache, RedisCacheClient
from django.core.exceptions import ImproperlyConfigured
from django.http import HttpRequest
from rest_framework import exceptions
from rest_framework.request import Request
from rest_framework.settings import api_settings
from rest_framework.throttling import BaseThrottle, SimpleRateThrottle

logger = logging.getLogger(__name__)

CACHE_ALIAS = "default"
# URL names of the trigger endpoints (apps.events.urls); a view may also say ``throttle_scope``.
TRIGGER_URL_NAMES = frozenset({"event-trigger", "event-bulk", "event-broadcast"})


class RateLimited(exceptions.Throttled):
    """``Throttled`` that knows which limit was hit (the envelope's ``details.scope``)."""

    def __init__(self, *, wait: float, scope: str) -> None:
        super().__init__(wait=wait)
        self.scope = scope


def client_ip(request: HttpRequest | Request) -> str | None:
    """The client's address: ``REMOTE_ADDR`` unless ``NUM_PROXIES`` says how many proxies put
    theirs in ``X-Forwarded-For``. Also django-axes' ``AXES_CLIENT_IP_CALLABLE``."""
    # get_ident reads only request.META, which a Django HttpRequest has too (the stub asks for a DRF Request)
    return BaseThrottle().get_ident(request)  # type: ignore[arg-type]


def _ip_ident(address: str | None) -> str:
    try:
        ip = ipaddress.ip_address((address or "").strip())
    except ValueError:
        return "unknown"
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


# Django's ``RedisCacheClient.get_client`` builds a new ``redis.Redis`` per call (response callbacks, an
# event dispatcher: 4-8% of an API request's web CPU under py-spy). A client only wraps its pool and is
# thread-safe, so the one for writes is kept on the cache client (it lives as long as the pool does).
_WRITE_CLIENT = "_clarion_write_client"


def _redis_client(cache: RedisCache, full_key: str) -> Any:
    cache_client = cache._cache
    if type(cache_client).get_client is not RedisCacheClient.get_client:  # may pick a pool per key (sharding)
        return cache_client.get_client(full_key, write=True)
    client = cache_client.__dict__.get(_WRITE_CLIENT)
    if client is None:
        client = cache_client.__dict__[_WRITE_CLIENT] = cache_client.get_client(full_key, write=True)
    return client


def window_hit(cache: BaseCache, key: str, ttl: int) -> int:
    """Count one hit on ``key`` (a key naming one window) and return the window's count."""
    if isinstance(cache, RedisCache):
        full_key = cache.make_and_validate_key(key)
        client = _redis_client(cache, full_key)
        with client.pipeline(transaction=False) as pipe:
            pipe.incr(full_key)
            pipe.expire(full_key, ttl)
            count, _ = pipe.execute()
        return int(count)
    if cache.add(key, 1, ttl):
        return 1
    try:
        return int(cache.incr(key))
    except ValueError:  # expired between add and incr
        cache.add(key, 1, ttl)
        return 1


class ClarionRateThrottle(SimpleRateThrottle):
    """A DRF rate throttle that counts in fixed windows (see the module docstring)."""

    cache_format = "throttle:%(scope)s:%(ident)s"
    # Set by SimpleRateThrottle.__init__ from parse_rate (not declared in the DRF stubs).
    num_requests: int | None
    duration: int | None

    def get_rate(self) -> str | None:
        # Read on every request, not at import, so settings changes (tests) apply.
        rates = api_settings.DEFAULT_THROTTLE_RATES
        if not self.scope or self.scope not in rates:
            raise ImproperlyConfigured(f"No throttle rate for the scope {self.scope!r} (DEFAULT_THROTTLE_RATES).")
        rate = rates[self.scope]
        if rate is not None and not isinstance(rate, str):
            raise ImproperlyConfigured(f"The throttle rate of {self.scope!r} must be like '100/min', not {rate!r}.")
        return rate

    def parse_rate(self, rate: str | None) -> tuple[int | None, int | None]:
        if rate is None:
            return None, None
        num, period = rate.split("/")
        duration = {"s": 1, "m": 60, "h": 3600, "d": 86400}[period.strip()[0]]
        return int(num), duration

    def allow_request(self, request: Request, view: Any) -> bool:
        if self.rate is None or self.num_requests is None or self.duration is None:
            return True
        ident = self.get_cache_key(request, view)
        if ident is None:
            return True
        now = self.timer()
        window = math.floor(now / self.duration)
        try:
            count = window_hit(caches[CACHE_ALIAS], f"{ident}:{window}", self.duration + 1)
        except Exception:
            logger.warning("rate limit %s not checked: the cache is unavailable", self.scope, exc_info=True)
            return True
        if count > self.num_requests:
            raise RateLimited(wait=(window + 1) * self.duration - now, scope=str(self.scope))
        return True

    def key_for(self, ident: Any) -> str:
        return self.cache_format % {"scope": self.scope, "ident": ident}


class ThrottledPrincipal(Protocol):
    """What an authenticated API caller tells the throttles (apps.tenancy.auth, apps.inbox.auth)."""

    throttle_kind: str
    environment_id: int


def _is_throttled_principal(user: object) -> TypeGuard[ThrottledPrincipal]:
    return hasattr(user, "throttle_kind")  # one attribute: a runtime_checkable isinstance costs ~8 µs


def endpoint_class(request: Request, view: Any) -> tuple[str, int] | None:
    """``(scope, environment_id)`` of an authenticated API request; ``None`` for anonymous ones.

    The caller says which limits count it: its ``throttle_kind`` is ``"inbox"`` (an inbox session,
    apps.inbox.auth) or ``"server"`` (a secret key, apps.tenancy.auth), next to its ``environment_id``.
    """
    principal = request.user
    if not _is_throttled_principal(principal):
        return None
    kind = principal.throttle_kind
    if kind == "inbox":
        return "inbox", principal.environment_id
    if kind == "server":
        scope = getattr(view, "throttle_scope", None)
        if scope is None:
            match = getattr(request, "resolver_match", None)
            scope = "trigger" if match is not None and match.url_name in TRIGGER_URL_NAMES else "management"
        return scope, principal.environment_id
    return None


class EnvironmentRateThrottle(ClarionRateThrottle):
    """Counts the requests of one endpoint class (the subclass's ``scope``) per environment."""

    def get_cache_key(self, request: Request, view: Any) -> str | None:
        found = endpoint_class(request, view)
        if found is None or found[0] != self.scope:
            return None
        return self.key_for(f"env{found[1]}")


class TriggerRateThrottle(EnvironmentRateThrottle):
    scope = "trigger"


class ManagementRateThrottle(EnvironmentRateThrottle):
    scope = "management"


class InboxRateThrottle(EnvironmentRateThrottle):
    scope = "inbox"


class InboxSessionSubscriberThrottle(ClarionRateThrottle):
    """``POST /inbox/session`` per publishable key + subscriber id (before anything is looked up)."""

    scope = "inbox_session_subscriber"

    def get_cache_key(self, request: Request, view: Any) -> str | None:
        data = request.data
        if not isinstance(data, Mapping):
            return None
        key, subscriber_id = data.get("publishable_key"), data.get("subscriber_id")
        if not isinstance(key, str) or not isinstance(subscriber_id, str):
            return None  # the view answers 400
        digest = hashlib.sha256(f"{key.strip()}\0{subscriber_id}".encode(errors="replace")).hexdigest()[:32]
        return self.key_for(digest)


class InboxSessionIpThrottle(ClarionRateThrottle):
    """``POST /inbox/session`` per client IP (IPv6 per /64)."""

    scope = "inbox_session_ip"

    def get_cache_key(self, request: Request, view: Any) -> str | None:
        return self.key_for(_ip_ident(client_ip(request)))


class TrackingIpThrottle(ClarionRateThrottle):
    """The open pixel and click redirect (``/t/o/``, ``/t/c/``) per client IP (IPv6 per /64).

    Over the limit the request is still answered (the image, the redirect: a recipient's link
    never breaks) but not recorded. Mail providers' image proxies fetch for many recipients from
    few addresses, hence a generous default (``DEFAULT_THROTTLE_RATES["tracking_ip"]`` overrides it).
    """

    scope = "tracking_ip"
    default_rate = "6000/minute"

    def get_rate(self) -> str | None:
        rates = api_settings.DEFAULT_THROTTLE_RATES
        return super().get_rate() if self.scope in rates else self.default_rate

    def get_cache_key(self, request: Request, view: Any) -> str | None:
        return self.key_for(_ip_ident(client_ip(request)))
