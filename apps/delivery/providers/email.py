"""Email providers: Django's mail API, through Anymail for ESPs or plain SMTP.

Each provider maps to a Django email backend; an Integration's ``credentials`` are passed to the
backend as keyword arguments (Anymail backends accept their settings as kwargs, e.g. ``api_key``
or ``server_token``; Django's SMTP backend takes ``host``, ``port``, ``username``, ``password``,
``use_tls``…). With no integration, Django's configured backend sends (the file backend on the
embedded default).

Every email carries Clarion's message id in an ``X-Clarion-Message-Id`` header and (for ESPs whose
Anymail backend supports it) as Anymail metadata ``clarion_message_id``, which the ESP echoes in its
tracking webhooks. Two ESPs deduplicate on an idempotency key: Resend (``Idempotency-Key`` HTTP
header, 24 hours) and Brevo (``idempotencyKey`` in the message's ``headers``, a UUID, at least 15
minutes); ``EMAIL_SPECS`` says which does what.
"""

from __future__ import annotations

import html
import logging
import re
import smtplib
import socket
import traceback
import uuid
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import requests
from anymail.backends.base_requests import AnymailRequestsBackend
from anymail.backends.resend import EmailBackend as AnymailResendBackend
from anymail.exceptions import AnymailAPIError, AnymailError, AnymailNotSupportedWarning, AnymailRecipientsRefused
from django.conf import settings
from django.core.mail import EmailMultiAlternatives, get_connection
from django.core.mail.backends import smtp as django_smtp
from django.utils.html import strip_tags

from apps.core.net import DestinationRefused, guard_session
from apps.delivery.models import Integration, Message
from apps.delivery.providers.base import (
    ErrorKind,
    Provider,
    ProviderError,
    SendResult,
    idempotency_key,
    kind_for_status,
    nothing_was_sent,
    parse_retry_after,
    refused_destination_error,
    register,
)
from apps.delivery.tracking import message_html, prefetched_tracking

logger = logging.getLogger(__name__)

EMAIL_BACKENDS: dict[str, str] = {
    "smtp": "django.core.mail.backends.smtp.EmailBackend",
    "sendgrid": "anymail.backends.sendgrid.EmailBackend",
    "mailgun": "anymail.backends.mailgun.EmailBackend",
    "postmark": "anymail.backends.postmark.EmailBackend",
    "ses": "anymail.backends.amazon_ses.EmailBackend",
    "resend": "apps.delivery.providers.email.ResendBackend",
    "brevo": "anymail.backends.brevo.EmailBackend",
    "mailjet": "anymail.backends.mailjet.EmailBackend",
    "sparkpost": "anymail.backends.sparkpost.EmailBackend",
    "mailersend": "anymail.backends.mailersend.EmailBackend",
}

# Credential keys used by Clarion's own webhook endpoint, never passed to the sending backend.
WEBHOOK_CREDENTIAL_KEYS = frozenset(
    {"webhook_secret", "webhook_signing_key", "signing_secret", "webhook_verification_key", "tracking_webhook_secret"}
)
# Amazon SES: flat credentials become boto3 session parameters.
_SES_SESSION_KEYS = {
    "access_key_id": "aws_access_key_id",
    "secret_access_key": "aws_secret_access_key",
    "session_token": "aws_session_token",
    "region": "region_name",
}
# Amazon SES error codes that mean "slow down" (HTTP 400 from SES, but retryable).
_SES_THROTTLING = {"Throttling", "ThrottlingException", "TooManyRequestsException", "LimitExceededException"}


@dataclass(frozen=True)
class EmailSpec:
    """What one ESP's API offers for Clarion's message id (see docs/providers.md)."""

    metadata_field: str  # where Anymail puts ``metadata`` in that ESP's API ("" = not supported)
    idempotency_field: str = ""
    dedupe_window: float | None = None  # seconds the ESP remembers an idempotency key

    @property
    def deduplicates(self) -> bool:
        return bool(self.idempotency_field)


EMAIL_SPECS: dict[str, EmailSpec] = {
    "smtp": EmailSpec(metadata_field=""),
    "sendgrid": EmailSpec(metadata_field="custom_args"),
    "mailgun": EmailSpec(metadata_field="v:clarion_message_id (user variable)"),
    "postmark": EmailSpec(metadata_field="Metadata"),
    "ses": EmailSpec(metadata_field="X-Metadata header"),
    "resend": EmailSpec(
        metadata_field="X-Metadata header", idempotency_field="Idempotency-Key HTTP header", dedupe_window=24 * 3600.0
    ),
    # Brevo documents a TTL of 15 minutes (elsewhere 30): the shorter one is assumed.
    "brevo": EmailSpec(
        metadata_field="X-Mailin-custom header", idempotency_field="headers.idempotencyKey (UUID)", dedupe_window=900.0
    ),
    "mailjet": EmailSpec(metadata_field="EventPayload"),
    "sparkpost": EmailSpec(metadata_field="metadata"),
    "mailersend": EmailSpec(metadata_field=""),  # Anymail has no metadata for MailerSend
}


class ResendBackend(AnymailResendBackend):
    """Anymail's Resend backend plus Resend's ``Idempotency-Key`` request header."""

    def build_message_payload(self, message: Any, defaults: Any) -> Any:
        payload = super().build_message_payload(message, defaults)
        key = getattr(message, "clarion_idempotency_key", "")
        if key:
            payload.headers["Idempotency-Key"] = key
        return payload


def brevo_idempotency_key(message: Message) -> str:
    """Brevo wants a UUID: one derived from the message's idempotency key (stable across resends)."""
    derived = uuid.uuid5(uuid.NAMESPACE_URL, f"clarion:{idempotency_key(message)}")
    return str(uuid.UUID(bytes=derived.bytes, version=4))


_BLOCK_END = re.compile(r"(?i)<br\s*/?>|</(p|div|h[1-6]|li|tr|table|blockquote)>")
_LINK = re.compile(r'(?is)<a\s[^>]*href="([^"]+)"[^>]*>(.*?)</a>')


def html_to_text(body: str) -> str:
    """A readable plain-text alternative: block ends become line breaks, links keep their URL."""
    text = _LINK.sub(lambda m: f"{m.group(2)} ({m.group(1)})", body)
    text = _BLOCK_END.sub("\n\n", text)
    text = html.unescape(strip_tags(text))
    return re.sub(r"\n{3,}", "\n\n", "\n".join(line.strip() for line in text.splitlines())).strip()


def backend_kwargs(integration: Integration) -> dict[str, Any]:
    """The integration's credentials as backend keyword arguments (webhook secrets left out)."""
    kwargs = {k: v for k, v in integration.credentials.items() if k not in WEBHOOK_CREDENTIAL_KEYS}
    if integration.provider == "ses":
        session = dict(kwargs.pop("session_params", {}) or {})
        for flat, boto_name in _SES_SESSION_KEYS.items():
            if flat in kwargs:
                session[boto_name] = kwargs.pop(flat)
        if session:
            kwargs["session_params"] = session
    timeout = Provider.timeout(integration)
    if integration.provider == "ses":
        # boto3 would wait 60 s and retry a timed-out SendEmail by itself (SES has no idempotency
        # key, so a retry may duplicate): one attempt, bounded like every other provider call.
        client_params = dict(kwargs.get("client_params") or {})
        config = client_params.get("config")
        config = dict(config) if isinstance(config, dict) else config
        if config is None or isinstance(config, dict):
            config = config or {}
            config.setdefault("connect_timeout", timeout)
            config.setdefault("read_timeout", timeout)
            config.setdefault("retries", {"total_max_attempts": 1})
            client_params["config"] = config
        kwargs["client_params"] = client_params
    else:
        # Django's SMTP backend: seconds per socket operation; Anymail's: seconds per API call.
        kwargs["timeout"] = min(float(kwargs.get("timeout") or timeout), timeout)
    return kwargs


def _backend_for(integration: Integration | None) -> Any:
    if integration is None:
        return get_connection(fail_silently=False)
    backend = EMAIL_BACKENDS.get(integration.provider)
    if backend is None:
        raise ProviderError(f"unknown email provider '{integration.provider}'", kind=ErrorKind.CONFIGURATION)
    with warnings.catch_warnings():
        # Anymail marks SendGrid "unsupported" (no longer tested by Anymail); it still works, and
        # Clarion's tests cover it. Say so once in the docs, not in every worker log line.
        warnings.simplefilter("ignore", AnymailNotSupportedWarning)
        return get_connection(backend, fail_silently=False, **backend_kwargs(integration))


def build_email(message: Message, integration: Integration | None) -> EmailMultiAlternatives:
    """The email for a message: HTML body, plain-text part (``data.text`` or derived), extra headers."""
    sender = (integration.settings.get("from_email") if integration else None) or settings.DEFAULT_FROM_EMAIL
    data = message.data or {}
    headers = {str(k): str(v) for k, v in (data.get("headers") or {}).items()}
    headers["X-Clarion-Message-Id"] = str(message.pk)
    provider = integration.provider if integration else ""
    if provider == "brevo":
        headers["idempotencyKey"] = brevo_idempotency_key(message)
    text = data.get("text") or html_to_text(message.body)
    email = EmailMultiAlternatives(
        subject=message.subject,
        body=text,
        from_email=sender,
        to=[message.recipient],
        headers=headers,
    )
    reply_to = integration.settings.get("reply_to") if integration else None
    if reply_to:
        email.reply_to = [reply_to]
    # The HTML part through Clarion's open and click tracking when the rules say so (the stored
    # body and the plain-text part stay as rendered; see apps.delivery.tracking).
    email.attach_alternative(message_html(message), "text/html")
    # Anymail: tag the message with its id so tracking webhooks can be matched by metadata too
    # (not for MailerSend, whose Anymail backend refuses metadata).
    if provider != "mailersend":
        email.metadata = {"clarion_message_id": str(message.pk)}  # type: ignore[attr-defined]
    email.clarion_idempotency_key = idempotency_key(message)  # type: ignore[attr-defined]
    return email


def _smtp_stage(exc: BaseException) -> str:
    """Where an SMTP failure came from once the message may have been handed over: ``"data"`` (the
    body was being sent or its answer awaited), ``"close"`` (after the send), else ``""``."""
    for frame, _ in traceback.walk_tb(exc.__traceback__):
        code = frame.f_code
        if code.co_name == "close" and code.co_filename == django_smtp.__file__:
            return "close"
        if code.co_name == "data" and code.co_filename == smtplib.__file__:
            return "data"
    return ""


def _boto_failure(text: str, cause: BaseException) -> ProviderError | None:
    """Amazon SES: a botocore network failure before or after the request was written."""
    try:
        from botocore import exceptions as boto
    except ImportError:  # pragma: no cover
        return None
    if not isinstance(cause, boto.BotoCoreError):
        return None
    if nothing_was_sent(cause):
        return ProviderError(text, kind=ErrorKind.CONNECTION)
    if isinstance(cause, boto.ReadTimeoutError):
        return ProviderError(text, kind=ErrorKind.TIMEOUT)
    if isinstance(cause, boto.HTTPClientError):
        return ProviderError(text, kind=ErrorKind.CONNECTION_LOST)
    return ProviderError(text, kind=ErrorKind.CONFIGURATION)  # credentials, parameters


def _classify(exc: Exception) -> ProviderError:
    """Every backend raises its own types: sort them into retryable, in doubt and terminal."""
    text = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, AnymailRecipientsRefused):
        return ProviderError(text[:2000], kind=ErrorKind.INVALID_ADDRESS)
    if isinstance(exc, AnymailError):
        status_code = exc.status_code
        headers = getattr(getattr(exc, "response", None), "headers", None)
        retry_after = parse_retry_after(headers.get("Retry-After")) if headers is not None else None
        response: dict[str, Any] = {"status_code": status_code} if status_code else {}
        cause = exc.__cause__
        if cause is not None and status_code is None:
            boto = _boto_failure(text[:2000], cause)
            if boto is not None:
                return boto
        boto_error = getattr(cause, "response", None)
        if isinstance(boto_error, dict):  # Amazon SES (botocore ClientError)
            code = boto_error.get("Error", {}).get("Code", "")
            status_code = boto_error.get("ResponseMetadata", {}).get("HTTPStatusCode", status_code)
            response = {"status_code": status_code, "code": code}
            kind = ErrorKind.RATE_LIMITED if code in _SES_THROTTLING else kind_for_status(status_code)
            return ProviderError(text[:2000], kind=kind, status_code=status_code, response=response)
        # Anymail re-raises a requests failure as a class that is both its error and requests'
        # (the original is its cause): refused / DNS → not sent; timeout or reset → in doubt.
        if isinstance(exc, requests.RequestException) and status_code is None:
            if nothing_was_sent(exc):
                kind = ErrorKind.CONNECTION
            elif isinstance(exc, requests.Timeout):
                kind = ErrorKind.TIMEOUT
            else:
                kind = ErrorKind.CONNECTION_LOST
            return ProviderError(f"{text} ({cause})"[:2000], kind=kind)
        if status_code is None and isinstance(exc, AnymailAPIError) and isinstance(cause, OSError):
            kind = ErrorKind.CONNECTION if nothing_was_sent(cause) else ErrorKind.CONNECTION_LOST
            return ProviderError(text[:2000], kind=kind)
        if status_code is None:
            return ProviderError(text[:2000], kind=ErrorKind.CONFIGURATION)
        return ProviderError(
            text[:2000],
            kind=kind_for_status(status_code),
            status_code=status_code,
            retry_after=retry_after,
            response=response,
        )
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        codes = [code for code, _msg in exc.recipients.values()]
        kind = ErrorKind.SERVER_ERROR if codes and all(400 <= c < 500 for c in codes) else ErrorKind.INVALID_ADDRESS
        return ProviderError(text[:2000], kind=kind, status_code=codes[0] if codes else None)
    if isinstance(exc, smtplib.SMTPAuthenticationError):
        return ProviderError(text[:2000], kind=ErrorKind.AUTH, status_code=exc.smtp_code)
    if isinstance(exc, smtplib.SMTPResponseException):
        if _smtp_stage(exc) == "close":  # the server had accepted the message; closing failed
            return ProviderError(text[:2000], kind=ErrorKind.UNKNOWN, status_code=exc.smtp_code)
        # A definite answer, to a command or to the message itself.
        kind = ErrorKind.SERVER_ERROR if 400 <= exc.smtp_code < 500 else ErrorKind.REJECTED
        return ProviderError(text[:2000], kind=kind, status_code=exc.smtp_code)
    if isinstance(exc, socket.timeout | TimeoutError | smtplib.SMTPServerDisconnected | OSError):
        if _smtp_stage(exc):
            # smtplib reports a read timeout as "Connection unexpectedly closed" (the timeout as its context).
            timed_out = isinstance(exc, socket.timeout | TimeoutError) or isinstance(exc.__context__, TimeoutError)
            kind = ErrorKind.TIMEOUT if timed_out else ErrorKind.CONNECTION_LOST
            return ProviderError(text[:2000], kind=kind)
        # Connecting, greeting, authenticating, MAIL/RCPT: the message itself was not sent yet.
        return ProviderError(text[:2000], kind=ErrorKind.CONNECTION)
    return ProviderError(text[:2000], kind=ErrorKind.REJECTED)


def _guarded_backend(integration: Integration | None) -> Any:
    connection = _backend_for(integration)
    if isinstance(connection, AnymailRequestsBackend):
        # The API URL can be overridden (``api_url``): the ESP's requests go through the
        # outbound address guard like every customer-configured destination.
        create_session = connection.create_session
        connection.create_session = lambda: guard_session(create_session())
    return connection


# Backends kept open for a delivery batch (``EmailProvider.connection``), by integration id (None:
# Django's default backend).
_open_backends: ContextVar[dict[int | None, Any] | None] = ContextVar("clarion_open_backends", default=None)


@contextmanager
def reused_backend(integration: Integration | None) -> Iterator[None]:
    """Open the integration's backend once (Anymail: one requests session; SMTP: one connection)
    for every ``send_email`` inside the block. A backend that cannot be opened is not kept: each
    send then opens its own and reports the failure as usual. After any failed send the backend is
    dropped, so the next send starts on a fresh connection."""
    backends = dict(_open_backends.get() or {})
    key = integration.pk if integration is not None else None
    backend = None
    try:
        backend = _guarded_backend(integration)
        backend.open()
        backends[key] = backend
    except Exception as exc:  # the sends themselves will classify it
        logger.info("email backend for integration %s not kept open: %s", key, exc)
        backend = None
    token = _open_backends.set(backends)
    try:
        yield
    finally:
        _open_backends.reset(token)
        _close_quietly(backends.get(key))


def _close_quietly(backend: Any) -> None:
    if backend is None:
        return
    try:
        backend.close()
    except Exception as exc:  # every message was settled before; a failed QUIT changes nothing
        logger.info("closing an email backend failed: %s", exc)


def send_email(message: Message, integration: Integration | None) -> SendResult:
    backends = _open_backends.get()
    key = integration.pk if integration is not None else None
    reused = backends.get(key) if backends is not None else None
    try:
        try:
            connection = reused if reused is not None else _guarded_backend(integration)
            email = build_email(message, integration)
            email.connection = connection
            sent = email.send()
        except BaseException:
            if reused is not None and backends is not None:
                backends.pop(key, None)  # its connection may be in any state now: start afresh
                _close_quietly(reused)
            raise
    except ProviderError:
        raise
    except DestinationRefused as exc:
        raise refused_destination_error(exc, what="Email service") from exc
    except Exception as exc:
        raise _classify(exc) from exc
    if not sent:
        raise ProviderError("the backend accepted no message", kind=ErrorKind.REJECTED)
    status = getattr(email, "anymail_status", None)
    message_id = ""
    if status is not None and status.message_id:
        message_id = str(status.message_id)
    return SendResult(provider_message_id=message_id, response={"accepted": sent})


class EmailProvider(Provider):
    channel = "email"

    def send(self, message: Message, integration: Integration | None) -> SendResult:
        return send_email(message, integration)

    @contextmanager
    def connection(self, integration: Integration | None, messages: Sequence[Message] = ()) -> Iterator[None]:
        # One connection for the batch, and its tracking decided at once (not a query per email).
        with reused_backend(integration), prefetched_tracking(messages):
            yield


def _email_provider(provider_name: str, required: tuple[str, ...] = ()) -> type[Provider]:
    spec = EMAIL_SPECS[provider_name]
    header = "X-Clarion-Message-Id header"
    cls = type(
        f"{provider_name.title()}EmailProvider",
        (EmailProvider,),
        {
            "name": provider_name,
            "required_credentials": required,
            # Anymail's ESPs take an ``api_url`` override: checked like any destination.
            "destination_credentials": () if provider_name in ("smtp", "ses") else ("api_url",),
            "deduplicates": spec.deduplicates,
            "dedupe_window": spec.dedupe_window,
            "idempotency_field": spec.idempotency_field,
            "metadata_field": f"{header}; {spec.metadata_field}" if spec.metadata_field else header,
            "__module__": __name__,
        },
    )
    return register(cls)


_REQUIRED = {
    "sendgrid": ("api_key",),
    "mailgun": ("api_key",),
    "postmark": ("server_token",),
    "resend": ("api_key",),
    "brevo": ("api_key",),
    "mailjet": ("api_key", "secret_key"),
    "sparkpost": ("api_key",),
    "mailersend": ("api_token",),
    "smtp": ("host",),
}
for _name in EMAIL_BACKENDS:
    _email_provider(_name, _REQUIRED.get(_name, ()))
