"""An environment's allowed origins (``Environment.allowed_origins``): what an entry may be, and a
per-process cache of each environment's list.

An entry is an origin as browsers send it (``https://app.example.com``, ``http://localhost:3000``)
or a subdomain wildcard (``https://*.example.com``). The inbox checks requests against them
(``apps.inbox.origins``).

Lookups are cached per process for ``CACHE_SECONDS``: a websocket handshake or an API call costs
at most one small query per environment and process every half minute, never one per message.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from urllib.parse import urlsplit

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


def allowed_origins_cached(environment_id: int) -> tuple[str, ...] | None:
    """The environment's allowed origins if this process has them cached and fresh, else ``None``."""
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
    cached = allowed_origins_cached(environment_id)
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
