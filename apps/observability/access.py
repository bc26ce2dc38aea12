"""Who may read ``/metrics``: a bearer token (``METRICS_TOKEN``) and/or a network allow-list
(``METRICS_ALLOWED_NETWORKS``; loopback only without a token, anywhere with one)."""

from __future__ import annotations

import hmac
import ipaddress
from functools import lru_cache

from django.conf import settings


@lru_cache(maxsize=8)
def _networks(cidrs: tuple[str, ...]) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    return tuple(ipaddress.ip_network(cidr.strip(), strict=False) for cidr in cidrs if cidr.strip())


def address_allowed(remote_addr: str) -> bool:
    try:
        address = ipaddress.ip_address(remote_addr)
    except ValueError:
        return False
    return any(address in network for network in _networks(tuple(settings.METRICS_ALLOWED_NETWORKS)))


def token_accepted(authorization: str) -> bool:
    expected = settings.METRICS_TOKEN
    if not expected:
        return True
    scheme, _, given = authorization.partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), expected.encode())


def metrics_access(remote_addr: str, authorization: str) -> int | None:
    """None when allowed, else the HTTP status to answer (401 without the right token, 403 from elsewhere)."""
    if not address_allowed(remote_addr):
        return 403
    if not token_accepted(authorization):
        return 401
    return None
