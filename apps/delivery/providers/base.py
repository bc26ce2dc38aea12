"""The one small interface every provider implements, the registry, and error classification.

A provider is a class with a ``channel``, a ``name`` and ``send(message, integration)``; adding
one is one module that defines it and decorates it with ``@register``. ``send`` returns a
``SendResult`` or raises ``ProviderError`` saying whether the failure is worth retrying, and
whether the request may have reached the provider anyway (``in_doubt``).

Every request carries Clarion's message id: as the API's idempotency key where it has one
(``idempotency_key``), and as metadata the provider echoes in its callbacks. A provider class says
how (``idempotency_field``, ``metadata_field``) and whether its API drops a second request with the
same key (``deduplicates``): the in-doubt policy resends safely only then.
"""

from __future__ import annotations

import email.utils
import json
import socket
import ssl
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, ClassVar

import requests
import urllib3.exceptions
from django.conf import settings

from apps.core.net import DestinationRefused, destination_check, guarded_session

if TYPE_CHECKING:
    from apps.delivery.models import Integration, Message

DEFAULT_TIMEOUT = 10.0
DEFAULT_SEND_HEARTBEAT_SECONDS = 30.0


class ErrorKind:
    """Why a send failed: retryable (nothing was sent), in doubt (it may have been), or terminal."""

    # Nothing reached the provider, or it answered "not now": retry, then fail over.
    CONNECTION = "connection"  # refused, DNS failure, connect timeout, TLS certificate
    RATE_LIMITED = "rate_limited"
    SERVER_ERROR = "server_error"
    # The request may have reached the provider, which may have accepted it.
    TIMEOUT = "timeout"  # no answer in time after the request was written (or HTTP 504)
    CONNECTION_LOST = "connection_lost"  # the connection broke after the request was written
    WORKER_DIED = "worker_died"  # the worker stopped during the provider call
    UNKNOWN = "unknown"  # the provider library failed in an unexpected way
    # Terminal.
    INVALID_ADDRESS = "invalid_address"  # bad email, invalid phone number, dead push token
    AUTH = "auth"  # wrong or revoked credentials
    REJECTED = "rejected"  # the provider refused this message (content, policy, 4xx)
    CONFIGURATION = "configuration"  # the integration is missing something
    NO_DESTINATION = "no_destination"  # nothing to send to (no device, no webhook URL)

    RETRYABLE = frozenset({CONNECTION, RATE_LIMITED, SERVER_ERROR})
    IN_DOUBT = frozenset({TIMEOUT, CONNECTION_LOST, WORKER_DIED, UNKNOWN})


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

    @property
    def in_doubt(self) -> bool:
        """The provider may have accepted the message: sending it again may duplicate it."""
        return self.kind in ErrorKind.IN_DOUBT


def kind_for_status(status_code: int | None) -> str:
    """Classify an HTTP status: 429, 408 and 5xx retry, 401/403 are credentials, other 4xx stop.

    504 is a gateway that gave up waiting for the provider, which may still have accepted the
    message: in doubt. 408 is the server saying it never got the whole request: safe to retry.
    """
    if status_code is None:
        return ErrorKind.CONNECTION
    if 200 <= status_code < 300:
        return ErrorKind.UNKNOWN  # accepted, but the answer could not be read
    if status_code == 429:
        return ErrorKind.RATE_LIMITED
    if status_code == 504:
        return ErrorKind.TIMEOUT
    if status_code == 408 or status_code >= 500:
        return ErrorKind.SERVER_ERROR
    if status_code in (401, 403):
        return ErrorKind.AUTH
    return ErrorKind.REJECTED


def _not_sent_types() -> tuple[type[BaseException], ...]:
    types: list[type[BaseException]] = [
        requests.exceptions.ConnectTimeout,
        requests.exceptions.ProxyError,
        urllib3.exceptions.ConnectTimeoutError,  # NewConnectionError and NameResolutionError too
        socket.gaierror,
        ConnectionRefusedError,
        ssl.SSLCertVerificationError,
    ]
    try:
        from botocore import exceptions as boto

        types += [boto.ConnectTimeoutError, boto.EndpointConnectionError]
    except ImportError:  # pragma: no cover - boto3 comes with the SES extra
        pass
    return tuple(types)


# Failures that happen before a request is written: connecting, resolving, the TLS handshake.
NOT_SENT_ERRORS = _not_sent_types()


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """The exception and what it wraps: ``__cause__``, urllib3's ``reason``, exceptions in ``args``.

    Not ``__context__``: an unrelated error handled earlier (a first connect attempt refused)
    must not make a later in-doubt failure look safe.
    """
    seen: set[int] = set()
    stack = [exc]
    while stack and len(seen) < 25:
        current = stack.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        linked = (current.__cause__, getattr(current, "reason", None), *current.args)
        stack.extend(item for item in linked if isinstance(item, BaseException))


def nothing_was_sent(exc: BaseException) -> bool:
    """Whether a network failure certainly happened before the request was written."""
    return any(isinstance(cause, NOT_SENT_ERRORS) for cause in _causes(exc))


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
    """Refused / DNS / connect timeout: nothing sent (retry, fail over). A timeout or a broken
    connection once the request was written: in doubt."""
    if exc.response is not None:
        return error_from_response(exc.response, what=what)
    if nothing_was_sent(exc):
        return ProviderError(f"{what} unreachable: {exc}", kind=ErrorKind.CONNECTION)
    if isinstance(exc, requests.Timeout):
        return ProviderError(f"{what} did not answer in time after the request was sent: {exc}", kind=ErrorKind.TIMEOUT)
    if isinstance(exc, ValueError):  # InvalidURL, MissingSchema…: raised before anything is sent
        return ProviderError(f"{what}: {exc}", kind=ErrorKind.CONFIGURATION)
    return ProviderError(f"{what}: connection lost after the request was sent: {exc}", kind=ErrorKind.CONNECTION_LOST)


def refused_destination_error(exc: DestinationRefused, *, what: str) -> ProviderError:
    """An internal destination: terminal, nothing was sent, retrying or failing over cannot help it."""
    return ProviderError(f"{what} refused: {exc}", kind=ErrorKind.CONFIGURATION)


def destination_errors(provider: Provider, credentials: Mapping[str, Any]) -> dict[str, str]:
    """Save-time check of the credentials that name where requests go (``destination_credentials``):
    ``{credential key: why it is refused}`` for each one that is, or resolves only to, an internal address."""
    errors: dict[str, str] = {}
    for key in provider.destination_credentials:
        value = credentials.get(key)
        if isinstance(value, str) and value:
            try:
                destination_check(value)
            except DestinationRefused as exc:
                errors[key] = str(exc)
    return errors


def idempotency_key(message: Message) -> str:
    """The message's idempotency key: the same on every retry and resend of that message.

    Its id, plus its creation time in microseconds, so that two installations (or a re-created
    database) sending through one provider account never present the same key for different
    messages: a provider that deduplicates would silently drop the second.
    """
    stamp = int(message.created_at.timestamp() * 1_000_000) if message.created_at else 0
    return f"clarion-message-{message.pk}-{stamp}"


def send_heartbeat_seconds() -> float:
    """How long a send may go without a heartbeat before it is presumed dead (its worker gone)."""
    return float(settings.CLARION.get("SEND_HEARTBEAT_SECONDS", DEFAULT_SEND_HEARTBEAT_SECONDS))


def max_call_seconds() -> float:
    """The longest timeout a provider call may have: a third of the heartbeat timeout.

    Timeouts apply per socket operation, so one call can take about twice its timeout (connecting,
    then waiting for the answer); a third leaves a margin for the database writes around it.
    """
    return send_heartbeat_seconds() / 3


def integration_settings_errors(values: Mapping[str, Any]) -> list[str]:
    """What is wrong with an integration's delivery settings (``timeout``, ``deduplicates``)."""
    errors: list[str] = []
    if "timeout" in values:
        timeout = values["timeout"]
        limit = max_call_seconds()
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not 0 < timeout <= limit:
            errors.append(
                f"timeout must be a number of seconds above 0 and at most {limit:g} "
                "(a third of CLARION_SEND_HEARTBEAT_SECONDS, so a live send is never presumed dead)."
            )
    if "deduplicates" in values and not isinstance(values["deduplicates"], bool):
        errors.append("deduplicates must be true or false.")
    return errors


_heartbeat: ContextVar[Callable[[], bool] | None] = ContextVar("clarion_send_heartbeat", default=None)


@contextmanager
def heartbeat_during(beat: Callable[[], bool]) -> Iterator[None]:
    """Make ``beat`` what ``heartbeat()`` calls while a provider sends (set by the delivery service)."""
    token = _heartbeat.set(beat)
    try:
        yield
    finally:
        _heartbeat.reset(token)


def heartbeat() -> bool:
    """Between two calls of one send (one per device): refresh the message's heartbeat.

    False when the message is no longer this worker's (it was presumed dead): stop sending.
    """
    beat = _heartbeat.get()
    return True if beat is None else beat()


_batch_session: ContextVar[requests.Session | None] = ContextVar("clarion_batch_session", default=None)


@contextmanager
def reused_session() -> Iterator[requests.Session]:
    """One guarded session for every request made inside the block (a delivery batch): its
    keep-alive connections are reused from one message to the next. Each new connection still goes
    through the outbound address guard; a broken one is dropped from the pool by urllib3."""
    with guarded_session() as session:
        token = _batch_session.set(session)
        try:
            yield session
        finally:
            _batch_session.reset(token)


@contextmanager
def outbound_session() -> Iterator[requests.Session]:
    """The batch's session when one is open (``reused_session``), else a new one closed after use."""
    session = _batch_session.get()
    if session is not None:
        yield session
        return
    with guarded_session() as session:
        yield session


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
    """POST, turning every failure into a classified ``ProviderError``; returns a 2xx response.

    Through the outbound address guard: a destination that is (or resolves to) an internal address
    is a terminal ``configuration`` error, whatever DNS answered when the integration was saved.
    """
    try:
        with outbound_session() as session:
            response = session.post(
                url, json=json_body, data=data, headers=dict(headers or {}), auth=auth, timeout=timeout
            )
    except DestinationRefused as exc:
        raise refused_destination_error(exc, what=what) from exc
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
    # Credential keys holding a URL (or host) requests go to: refused when internal (apps.core.net).
    destination_credentials: ClassVar[tuple[str, ...]] = ()
    # Whether the API drops a second request carrying the same idempotency key (for how long, in
    # seconds, when it does): only then is resending a message in doubt free of duplicates.
    deduplicates: ClassVar[bool] = False
    dedupe_window: ClassVar[float | None] = None
    # How the idempotency key travels ("" when the API has none) and where the message id goes as
    # metadata; docs/providers.md lists both per provider (a test keeps it in step).
    idempotency_field: ClassVar[str] = ""
    metadata_field: ClassVar[str] = ""
    # Whether ``send`` reads the subscriber's devices (push, chat): a batch loads them at once.
    uses_devices: ClassVar[bool] = False

    def send(self, message: Message, integration: Integration | None) -> SendResult:
        raise NotImplementedError

    @contextmanager
    def connection(self, integration: Integration | None, messages: Sequence[Message] = ()) -> Iterator[None]:
        """Keep what can be reused open for the ``send`` calls made inside the block (a delivery
        batch of ``messages`` through one integration): by default one HTTP session whose
        connections are kept alive, and (``uses_devices``) the subscribers' devices loaded at once.
        A provider whose library holds its own connection overrides this."""
        if not self.uses_devices:
            with reused_session():
                yield
            return
        from apps.delivery.providers.fanout import prefetched_devices

        with reused_session(), prefetched_devices(messages, self.name):
            yield

    def deduplicates_for(self, integration: Integration | None) -> bool:
        return self.deduplicates

    @staticmethod
    def timeout(integration: Integration | None) -> float:
        """Seconds per provider call: the integration's ``timeout`` setting, never above ``max_call_seconds()``."""
        configured = DEFAULT_TIMEOUT
        if integration is not None:
            try:
                configured = float(integration.settings.get("timeout", DEFAULT_TIMEOUT))
            except (TypeError, ValueError):
                configured = DEFAULT_TIMEOUT
            if configured <= 0:
                configured = DEFAULT_TIMEOUT
        return min(configured, max_call_seconds())


_REGISTRY: dict[tuple[str, str], Provider] = {}


def register(cls: type[Provider]) -> type[Provider]:
    _REGISTRY[(cls.channel, cls.name)] = cls()
    return cls


def get_provider(channel: str, name: str) -> Provider | None:
    _load_builtin()
    return _REGISTRY.get((channel, name))


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
