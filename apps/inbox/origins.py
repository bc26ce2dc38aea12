"""Allowed origins per environment (``Environment.allowed_origins``), for the inbox websocket
handshake and the inbox REST API's CORS answers.

An entry is an origin as browsers send it (``https://app.example.com``, ``http://localhost:3000``)
or a subdomain wildcard (``https://*.example.com``). An environment with no entries accepts any
origin (the default of a fresh environment, so a local page works at once); a request without an
``Origin`` header is not a browser's cross-site request and is not checked (a non-browser client
can send any header it likes, so an origin check could not stop it anyway). The server's own
origin is always accepted (the demo page).

What an entry may be, and the per-process cache of each environment's list, belong to the app that
owns the field (``apps.tenancy.origins``).
"""

from __future__ import annotations

from collections.abc import Iterable

from asgiref.sync import sync_to_async
from django.conf import settings

from apps.tenancy.origins import allowed_origins_cached, allowed_origins_for, origin_normalize


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
    allowed = allowed_origins_cached(environment_id)
    if allowed is None:
        allowed = await sync_to_async(allowed_origins_for)(environment_id)
    return not allowed or origin_matches(origin, allowed)
