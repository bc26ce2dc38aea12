"""Outbound requests to addresses customers configure, without reaching internal hosts (SSRF).

Customers give Clarion URLs it POSTs to: SMS gateways, signed webhooks, chat webhooks, web push
endpoints. None of them may reach a private, loopback, link-local (cloud metadata), shared or
otherwise non-public address unless the operator lists its network in
``CLARION_ALLOWED_PRIVATE_NETWORKS``.

``guarded_session()`` is a ``requests.Session`` whose connections resolve the host once, check
every address it resolves to, and connect to a checked address: the TLS handshake (SNI,
certificate) and the ``Host`` header still use the name, and there is no second lookup that DNS
rebinding could answer differently. Redirects go through the same check. Proxy variables from
the environment are ignored (a proxy would resolve the name itself).

``destination_check()`` is the save-time check: it refuses a literal non-public address, and a
host whose every address is non-public; a host that does not resolve yet is accepted (the send
checks again).
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
import threading
from collections.abc import Iterable, Sequence
from typing import Any
from urllib.parse import urlsplit

import requests
from django.conf import settings
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import ConnectTimeoutError, NameResolutionError, NewConnectionError
from urllib3.util import connection as urllib3_connection

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# Non-public but reported as "global" by the ipaddress module, or worth naming.
_METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a) for a in ("169.254.169.254", "169.254.170.2", "100.100.100.200", "fd00:ec2::254")
)
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
# How long the save-time check waits for DNS before accepting the host (the send checks again).
SAVE_TIME_RESOLVE_SECONDS = 2.0


class DestinationRefused(Exception):
    """The destination is, or resolves to, an address outbound requests may not reach."""


def parse_networks(values: Iterable[str]) -> tuple[IPNetwork, ...]:
    """``CLARION_ALLOWED_PRIVATE_NETWORKS`` items as networks; ``ValueError`` names a bad one."""
    networks: list[IPNetwork] = []
    for value in values:
        value = value.strip()
        if not value:
            continue
        try:
            networks.append(ipaddress.ip_network(value, strict=False))
        except ValueError as exc:
            raise ValueError(f"{value!r} is not a network in CIDR notation (e.g. 10.0.0.0/8): {exc}") from exc
    return tuple(networks)


def allowed_networks() -> tuple[IPNetwork, ...]:
    return parse_networks(getattr(settings, "CLARION_ALLOWED_PRIVATE_NETWORKS", ()) or ())


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """IPv4 addresses an IPv6 address carries (6to4, Teredo, NAT64): each must pass too."""
    found = [ip.sixtofour]
    if ip.teredo:
        found.extend(ip.teredo)
    if ip in _NAT64:
        found.append(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
    return [address for address in found if address is not None]


def refusal_reason(ip: IPAddress, allowed: Sequence[IPNetwork] = ()) -> str | None:
    """Why ``ip`` may not be reached (``None`` when it may): public, or in an allowed network."""
    if any(ip.version == network.version and ip in network for network in allowed):
        return None
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return refusal_reason(ip.ipv4_mapped, allowed)
        for inner in _embedded_ipv4(ip):
            reason = refusal_reason(inner, allowed)
            if reason:
                return reason
    if ip in _METADATA_ADDRESSES:
        return "a cloud metadata address"
    if ip.is_loopback:
        return "a loopback address"
    if ip.is_link_local:
        return "a link-local address"
    if ip.is_unspecified:
        return "an unspecified address"
    if ip.is_multicast:
        return "a multicast address"
    if ip.is_private:
        return "a private address"
    if not ip.is_global:
        return "a reserved (non-public) address"
    return None


def _literal_ip(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host.strip("[]").split("%", 1)[0])
    except ValueError:
        return None


def _host_of(destination: str) -> str:
    """The host of a URL, or the destination itself when it is a bare host name (an SMTP host)."""
    if "//" in destination:
        try:
            return urlsplit(destination).hostname or ""
        except ValueError:
            return ""
    return destination.strip().strip("[]")


def resolve(host: str, port: int | None) -> list[IPAddress]:
    """Every address ``host`` resolves to, in the resolver's order, without duplicates."""
    infos = socket.getaddrinfo(host, port, urllib3_connection.allowed_gai_family(), socket.SOCK_STREAM)
    seen: list[IPAddress] = []
    for info in infos:
        ip = ipaddress.ip_address(str(info[4][0]).split("%", 1)[0])
        if ip not in seen:
            seen.append(ip)
    return seen


def checked_addresses(host: str, port: int | None) -> list[IPAddress]:
    """The addresses to connect to for ``host``: all of them, once each is checked.

    Raises ``DestinationRefused`` if any is refused (one refused address is enough: which one a
    client picks is not ours to predict), ``socket.gaierror`` if the name does not resolve.
    """
    allowed = allowed_networks()
    literal = _literal_ip(host)
    addresses = [literal] if literal is not None else resolve(host, port)
    for ip in addresses:
        reason = refusal_reason(ip, allowed)
        if reason:
            shown = host if literal is not None else f"{host} (resolves to {ip})"
            raise DestinationRefused(
                f"{shown} is {reason}: outbound requests may not reach internal hosts "
                "(an operator can allow networks with CLARION_ALLOWED_PRIVATE_NETWORKS)"
            )
    return addresses


def destination_check(destination: str, *, resolve_timeout: float = SAVE_TIME_RESOLVE_SECONDS) -> None:
    """Save-time check of a URL or host name; raises ``DestinationRefused`` with the reason.

    A literal address must pass. A name is refused when every address it resolves to is refused;
    one that does not resolve (in time) is accepted: the send checks every address again.
    """
    host = _host_of(destination)
    if not host:
        return
    allowed = allowed_networks()
    literal = _literal_ip(host)
    if literal is not None:
        reason = refusal_reason(literal, allowed)
        if reason:
            raise DestinationRefused(f"{host} is {reason}; outbound requests may not reach internal hosts")
        return
    addresses = _resolve_bounded(host, resolve_timeout)
    reasons = [refusal_reason(ip, allowed) for ip in addresses]
    if addresses and all(reasons):
        raise DestinationRefused(
            f"{host} resolves only to non-public addresses ({addresses[0]} is {reasons[0]}); "
            "outbound requests may not reach internal hosts"
        )


def _resolve_bounded(host: str, timeout: float) -> list[IPAddress]:
    """``resolve`` in a helper thread, so a slow resolver cannot hold an API request for long."""
    result: list[IPAddress] = []

    def lookup() -> None:
        with contextlib.suppress(OSError, UnicodeError, ValueError):
            result.extend(resolve(host, None))

    thread = threading.Thread(target=lookup, name="clarion-destination-check", daemon=True)
    thread.start()
    thread.join(timeout)
    return list(result) if not thread.is_alive() else []


class _GuardedConnectionMixin:
    """Resolve once, check every address, connect to a checked one (urllib3's ``_new_conn``)."""

    host: str
    port: int
    timeout: Any
    source_address: Any
    socket_options: Any
    _dns_host: str

    def _new_conn(self) -> socket.socket:
        try:
            addresses = checked_addresses(self._dns_host, self.port)
        except socket.gaierror as exc:
            raise NameResolutionError(self.host, self, exc) from exc  # type: ignore[arg-type]
        last: OSError | None = None
        for ip in addresses:
            try:
                sock = urllib3_connection.create_connection(
                    (str(ip), self.port),
                    self.timeout,
                    source_address=self.source_address,
                    socket_options=self.socket_options,
                )
            except TimeoutError as exc:
                raise ConnectTimeoutError(
                    self, f"Connection to {self.host} timed out. (connect timeout={self.timeout})"
                ) from exc
            except OSError as exc:
                last = exc
                continue
            return sock
        raise NewConnectionError(self, f"Failed to establish a new connection: {last}")  # type: ignore[arg-type]


class GuardedHTTPConnection(_GuardedConnectionMixin, HTTPConnection):
    pass


class GuardedHTTPSConnection(_GuardedConnectionMixin, HTTPSConnection):
    pass


class _GuardedHTTPConnectionPool(HTTPConnectionPool):
    ConnectionCls = GuardedHTTPConnection


class _GuardedHTTPSConnectionPool(HTTPSConnectionPool):
    ConnectionCls = GuardedHTTPSConnection


class GuardedAdapter(HTTPAdapter):
    """A requests transport adapter whose every connection goes through the address check."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {
            "http": _GuardedHTTPConnectionPool,
            "https": _GuardedHTTPSConnectionPool,
        }

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        raise DestinationRefused("outbound requests to customer destinations do not go through a proxy")


def guard_session(session: requests.Session) -> requests.Session:
    """Route every request of ``session`` through the address check (e.g. a library's own session)."""
    session.trust_env = False  # no HTTP(S)_PROXY: a proxy would resolve (and reach) any host
    adapter = GuardedAdapter()
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


def guarded_session() -> requests.Session:
    """A new session for requests to customer-configured destinations (close it after use)."""
    return guard_session(requests.Session())
