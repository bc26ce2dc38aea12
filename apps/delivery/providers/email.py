"""Email providers: Django's mail API, through Anymail for ESPs or plain SMTP.

Each provider maps to a Django email backend; an Integration's ``credentials`` are passed to the
backend as keyword arguments (Anymail backends accept their settings as kwargs, e.g. ``api_key``
or ``server_token``; Django's SMTP backend takes ``host``, ``port``, ``username``, ``password``,
``use_tls``…). With no integration, Django's configured backend sends (the file backend on the
embedded default).
"""

from __future__ import annotations

import html
import re
import smtplib
import socket
import ssl
import warnings
from typing import Any

import requests
from anymail.exceptions import AnymailAPIError, AnymailError, AnymailNotSupportedWarning, AnymailRecipientsRefused
from django.conf import settings
from django.core.mail import EmailMultiAlternatives, get_connection
from django.utils.html import strip_tags

from apps.delivery.models import Integration, Message
from apps.delivery.providers.base import (
    ErrorKind,
    Provider,
    ProviderError,
    SendResult,
    kind_for_status,
    parse_retry_after,
    register,
)

EMAIL_BACKENDS: dict[str, str] = {
    "smtp": "django.core.mail.backends.smtp.EmailBackend",
    "sendgrid": "anymail.backends.sendgrid.EmailBackend",
    "mailgun": "anymail.backends.mailgun.EmailBackend",
    "postmark": "anymail.backends.postmark.EmailBackend",
    "ses": "anymail.backends.amazon_ses.EmailBackend",
    "resend": "anymail.backends.resend.EmailBackend",
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
    if integration.provider == "smtp":
        kwargs.setdefault("timeout", timeout)
    elif integration.provider != "ses":
        kwargs.setdefault("timeout", timeout)  # Anymail requests-based backends: seconds per API call
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
    email.attach_alternative(message.body, "text/html")
    # Anymail: tag the message with its id so tracking webhooks can be matched by metadata too.
    email.metadata = {"clarion_message_id": str(message.pk)}  # type: ignore[attr-defined]
    return email


def _classify(exc: Exception) -> ProviderError:
    """Every backend raises its own types: sort them into retryable and terminal."""
    text = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, AnymailRecipientsRefused):
        return ProviderError(text[:2000], kind=ErrorKind.INVALID_ADDRESS)
    if isinstance(exc, AnymailError):
        status_code = exc.status_code
        http = getattr(exc, "response", None)
        retry_after = parse_retry_after(http.headers.get("Retry-After")) if hasattr(http, "headers") else None
        response: dict[str, Any] = {"status_code": status_code} if status_code else {}
        cause = exc.__cause__
        boto_error = getattr(cause, "response", None)
        if isinstance(boto_error, dict):  # Amazon SES (botocore ClientError)
            code = boto_error.get("Error", {}).get("Code", "")
            status_code = boto_error.get("ResponseMetadata", {}).get("HTTPStatusCode", status_code)
            response = {"status_code": status_code, "code": code}
            kind = ErrorKind.RATE_LIMITED if code in _SES_THROTTLING else kind_for_status(status_code)
            return ProviderError(text[:2000], kind=kind, status_code=status_code, response=response)
        # Anymail re-raises a requests failure as a class that is both its error and requests'.
        if isinstance(exc, requests.Timeout):
            return ProviderError(text[:2000], kind=ErrorKind.TIMEOUT)
        if isinstance(exc, requests.RequestException) and status_code is None:
            return ProviderError(text[:2000], kind=ErrorKind.CONNECTION)
        if status_code is None and isinstance(exc, AnymailAPIError) and isinstance(cause, OSError):
            return ProviderError(text[:2000], kind=ErrorKind.CONNECTION)
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
        kind = ErrorKind.SERVER_ERROR if 400 <= exc.smtp_code < 500 else ErrorKind.REJECTED
        return ProviderError(text[:2000], kind=kind, status_code=exc.smtp_code)
    if isinstance(exc, socket.timeout | TimeoutError):
        return ProviderError(text[:2000], kind=ErrorKind.TIMEOUT)
    if isinstance(exc, smtplib.SMTPServerDisconnected | ConnectionError | ssl.SSLError | OSError):
        return ProviderError(text[:2000], kind=ErrorKind.CONNECTION)
    return ProviderError(text[:2000], kind=ErrorKind.REJECTED)


def send_email(message: Message, integration: Integration | None) -> SendResult:
    try:
        connection = _backend_for(integration)
        email = build_email(message, integration)
        email.connection = connection
        sent = email.send()
    except ProviderError:
        raise
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


def _email_provider(provider_name: str, required: tuple[str, ...] = ()) -> type[Provider]:
    cls = type(
        f"{provider_name.title()}EmailProvider",
        (EmailProvider,),
        {"name": provider_name, "required_credentials": required, "__module__": __name__},
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
