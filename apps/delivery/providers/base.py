"""The one small interface every provider implements, the registry, and error classification.

A provider is a class with a ``channel``, a ``name`` and ``send(message, integration)``; adding
one is one module that defines it and decorates it with ``@register``. ``send`` returns a
``SendResult`` or raises ``ProviderError`` saying whether the failure is worth retrying.
"""

from __future__ import annotations

import email.utils
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, ClassVar

import requests

if TYPE_CHECKING:
    from apps.delivery.models import Integration, Message

DEFAULT_TIMEOUT = 10.0


class ErrorKind:
    """Why a send failed. The first group is retryable, the second terminal."""

    TIMEOUT = "timeout"
    CONNECTION = "connection"
    RATE_LIMITED = "rate_limited"
    SERVER_ERROR = "server_error"
    INVALID_ADDRESS = "invalid_address"  # bad email, invalid phone number, dead push token
    AUTH = "auth"  # wrong or revoked credentials
    REJECTED = "rejected"  # the provider refused this message (content, policy, 4xx)
    CONFIGURATION = "configuration"  # the integration is missing something
    NO_DESTINATION = "no_destination"  # nothing to send to (no device, no webhook URL)

    RETRYABLE = frozenset({TIMEOUT, CONNECTION, RATE_LIMITED, SERVER_ERROR})


@dataclass(frozen=True)
class SendResult:
    provider_message_id: str = ""
    response: dict[str, Any] = field(default_factory=dict)
    status_code: int | None = None
    # Subscriber devices (push tokens, chat webhooks) the service said are gone: removed after.
    dead_devices: tuple[int, ...] = ()


class ProviderError(Exception):
    """A failed send. ``kind`` decides retry or stop; ``retry_after`` is the provider's wish (seconds)."""

    def __init__(
        self,
        message: str,
        *,
        kind: str = ErrorKind.REJECTED,
        status_code: int | None = None,
        retry_after: float | None = None,
        response: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.kind = kind
        self.status_code = status_code
        self.retry_after = retry_after
        self.response = response or {}
        self.dead_devices: tuple[int, ...] = ()

    @property
    def retryable(self) -> bool:
        return self.kind in ErrorKind.RETRYABLE


def kind_for_status(status_code: int | None) -> str:
    """Classify an HTTP status: 429 and 5xx (and 408) retry, 401/403 are credentials, other 4xx stop."""
    if status_code is None:
        return ErrorKind.CONNECTION
    if status_code == 429:
        return ErrorKind.RATE_LIMITED
    if status_code == 408 or status_code >= 500:
        return ErrorKind.SERVER_ERROR if status_code != 408 else ErrorKind.TIMEOUT
    if status_code in (401, 403):
        return ErrorKind.AUTH
    return ErrorKind.REJECTED


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """``Retry-After`` as seconds: either delta-seconds or an HTTP date (RFC 9110 §10.2.3)."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


def error_from_response(response: requests.Response, *, what: str) -> ProviderError:
    """A ``ProviderError`` for an HTTP error answer, classified by status, with ``Retry-After``."""
    body: Any
    try:
        body = response.json()
    except ValueError:
        body = response.text[:2000]
    shown = body if isinstance(body, str) else json.dumps(body)
    return ProviderError(
        f"{what} answered HTTP {response.status_code}: {shown[:500]}",
        kind=kind_for_status(response.status_code),
        status_code=response.status_code,
        retry_after=parse_retry_after(response.headers.get("Retry-After")),
        response={"status_code": response.status_code, "body": body},
    )


def error_from_requests_exception(exc: requests.RequestException, *, what: str) -> ProviderError:
    if isinstance(exc, requests.Timeout):
        return ProviderError(f"{what} timed out: {exc}", kind=ErrorKind.TIMEOUT)
    if exc.response is not None:
        return error_from_response(exc.response, what=what)
    return ProviderError(f"{what} unreachable: {exc}", kind=ErrorKind.CONNECTION)


def http_post(
    url: str,
    *,
    what: str,
    timeout: float,
    json_body: Any = None,
    data: bytes | None = None,
    headers: Mapping[str, str] | None = None,
    auth: tuple[str, str] | None = None,
) -> requests.Response:
    """POST, turning every failure into a classified ``ProviderError``; returns a 2xx response."""
    try:
        response = requests.post(
            url, json=json_body, data=data, headers=dict(headers or {}), auth=auth, timeout=timeout
        )
    except requests.RequestException as exc:
        raise error_from_requests_exception(exc, what=what) from exc
    if not 200 <= response.status_code < 300:
        raise error_from_response(response, what=what)
    return response


class Provider:
    """Subclass, set ``channel`` and ``name``, implement ``send``, decorate with ``@register``."""

    channel: ClassVar[str]
    name: ClassVar[str]
    # Credential keys that are required; checked when an integration is saved through the API.
    required_credentials: ClassVar[tuple[str, ...]] = ()

    def send(self, message: Message, integration: Integration | None) -> SendResult:
        raise NotImplementedError

    @staticmethod
    def timeout(integration: Integration | None) -> float:
        if integration is None:
            return DEFAULT_TIMEOUT
        try:
            return float(integration.settings.get("timeout", DEFAULT_TIMEOUT))
        except (TypeError, ValueError):
            return DEFAULT_TIMEOUT


_REGISTRY: dict[tuple[str, str], Provider] = {}


def register(cls: type[Provider]) -> type[Provider]:
    _REGISTRY[(cls.channel, cls.name)] = cls()
    return cls


def get_provider(channel: str, name: str) -> Provider | None:
    _load_builtin()
    return _REGISTRY.get((channel, name))


def provider_names(channel: str | None = None) -> list[str]:
    _load_builtin()
    return sorted(name for (ch, name) in _REGISTRY if channel is None or ch == channel)


def providers_by_channel() -> dict[str, list[str]]:
    _load_builtin()
    grouped: dict[str, list[str]] = {}
    for channel, name in sorted(_REGISTRY):
        grouped.setdefault(channel, []).append(name)
    return grouped


_loaded = False


def _load_builtin() -> None:
    """Import every module of this package once: their ``@register`` decorators fill the registry.

    Adding a provider is adding a module here; nothing else lists it.
    """
    global _loaded
    if _loaded:
        return
    import importlib
    import pkgutil

    import apps.delivery.providers as package

    for module in pkgutil.iter_modules(package.__path__):
        importlib.import_module(f"{package.__name__}.{module.name}")
    _loaded = True
