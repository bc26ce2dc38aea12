"""Allowed origins per environment (``Environment.allowed_origins``), for the inbox websocket
handshake and the inbox REST API's CORS answers.

An entry is an origin as browsers send it (``https://app.example.com``, ``http://localhost:3000``)
or a subdomain wildcard (``https://*.example.com``). An environment with no entries accepts any
origin (the default of a fresh environment, so a local page works at once); a request without an
``Origin`` header is not a browser's cross-site request and is not checked (a non-browser client
can send any header it likes, so an origin check could not stop it anyway). The server's own
origin is always accepted (the demo page).

Lookups are cached per process for ``CACHE_SECONDS``: a websocket handshake or an API call costs
at most one small query per environment and process every half minute, never one per message.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from urllib.parse import urlsplit

from asgiref.sync import sync_to_async
from django.conf import settings

from apps.tenancy.models import Environment

CACHE_SECONDS = 30.0

_cache: dict[int, tuple[float, tuple[str, ...]]] = {}
_cache_lock = threading.Lock()


def origin_normalize(origin: str) -> str | None:
    """``scheme://host[:port]`` in lower case with default ports dropped; ``None`` if not an origin."""
    if not origin or len(origin) > 500:
        return None
    parts = urlsplit(origin.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.path not in ("", "/"):
        return None
    if parts.query or parts.fragment or parts.username or parts.password:
        return None
    try:
        port = parts.port
    except ValueError:
        return None
    host = parts.hostname.lower()
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    default = {"http": 80, "https": 443}[parts.scheme]
    return f"{parts.scheme}://{host}" + (f":{port}" if port and port != default else "")


def origin_entry_valid(entry: str) -> bool:
    """Whether an ``allowed_origins`` entry is an origin or a ``scheme://*.domain`` wildcard."""
    if not isinstance(entry, str):
        return False
    if "://*." in entry:
        scheme, rest = entry.split("://*.", 1)
        return origin_normalize(f"{scheme}://{rest}") is not None
    return origin_normalize(entry) is not None


def origin_matches(origin: str, allowed: Iterable[str]) -> bool:
    """Whether ``origin`` is one of ``allowed`` (exact, or under a ``scheme://*.domain`` wildcard)."""
    normalized = origin_normalize(origin)
    if normalized is None:
        return False
    for entry in allowed:
        if not isinstance(entry, str):
            continue
        if "://*." in entry:
            scheme, domain = entry.lower().split("://*.", 1)
            base = origin_normalize(f"{scheme}://{domain}")
            if base is None:
                continue
            # same scheme and port, host one or more labels under the domain
            suffix = base.split("://", 1)[1]
            if normalized.startswith(f"{scheme}://") and normalized.split("://", 1)[1].endswith("." + suffix):
                return True
        elif origin_normalize(entry) == normalized:
            return True
    return False


def _own_origins(host: str | None) -> set[str]:
    own = {origin_normalize(settings.PUBLIC_URL)}
    if host:
        own |= {origin_normalize(f"http://{host}"), origin_normalize(f"https://{host}")}
    return {o for o in own if o}


def _cached(environment_id: int) -> tuple[str, ...] | None:
    entry = _cache.get(environment_id)
    if entry is not None and entry[0] > time.monotonic():
        return entry[1]
    return None


def _store(environment_id: int, origins: Iterable[str]) -> tuple[str, ...]:
    value = tuple(o for o in origins if isinstance(o, str))
    with _cache_lock:
        _cache[environment_id] = (time.monotonic() + CACHE_SECONDS, value)
    return value


def allowed_origins_for(environment_id: int) -> tuple[str, ...]:
    """The environment's allowed origins (cached per process)."""
    cached = _cached(environment_id)
    if cached is not None:
        return cached
    row = Environment.objects.filter(pk=environment_id).values_list("allowed_origins", flat=True).first()
    return _store(environment_id, row or [])


def allowed_origins_forget(environment_id: int | None = None) -> None:
    """Drop the cache (tests, or after an environment's origins changed in this process)."""
    with _cache_lock:
        if environment_id is None:
            _cache.clear()
        else:
            _cache.pop(environment_id, None)


def origin_allowed(*, environment_id: int, origin: str | None, host: str | None = None) -> bool:
    """The rule above: no header, the server's own origin, an empty list or a match → allowed."""
    if not origin:
        return True
    if origin_normalize(origin) in _own_origins(host):
        return True
    allowed = allowed_origins_for(environment_id)
    return not allowed or origin_matches(origin, allowed)


async def aorigin_allowed(*, environment_id: int, origin: str | None, host: str | None = None) -> bool:
    """``origin_allowed`` for async code: no thread hop unless the cache is cold."""
    if not origin or origin_normalize(origin) in _own_origins(host):
        return True
    allowed = _cached(environment_id)
    if allowed is None:
        allowed = await sync_to_async(allowed_origins_for)(environment_id)
    return not allowed or origin_matches(origin, allowed)
