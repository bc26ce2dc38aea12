"""Email providers: Django's mail API, through Anymail for ESPs or SMTP.

Each provider maps to a Django email backend; an Integration's ``credentials`` are passed to the
backend as keyword arguments (Anymail backends accept their settings as kwargs, e.g. ``api_key``).
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.core.mail import EmailMultiAlternatives, get_connection
from django.utils.html import strip_tags

from apps.delivery.models import Integration, Message

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


_BLOCK_END = re.compile(r"(?i)<br\s*/?>|</(p|div|h[1-6]|li|tr|table|blockquote)>")
_LINK = re.compile(r'(?is)<a\s[^>]*href="([^"]+)"[^>]*>(.*?)</a>')


def html_to_text(body: str) -> str:
    """A readable plain-text alternative: block ends become line breaks, links keep their URL."""
    text = _LINK.sub(lambda m: f"{m.group(2)} ({m.group(1)})", body)
    text = _BLOCK_END.sub("\n\n", text)
    text = html.unescape(strip_tags(text))
    return re.sub(r"\n{3,}", "\n\n", "\n".join(line.strip() for line in text.splitlines())).strip()


@dataclass(frozen=True)
class SendResult:
    provider_message_id: str
    response: dict[str, Any]


class ProviderError(Exception):
    def __init__(self, message: str, *, response: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.response = response or {}


def _backend_for(integration: Integration | None) -> Any:
    if integration is None:
        return get_connection(fail_silently=False)
    backend = EMAIL_BACKENDS.get(integration.provider)
    if backend is None:
        raise ProviderError(f"unknown email provider '{integration.provider}'")
    return get_connection(backend, fail_silently=False, **integration.credentials)


def build_email(message: Message, integration: Integration | None) -> EmailMultiAlternatives:
    sender = (integration.settings.get("from_email") if integration else None) or settings.DEFAULT_FROM_EMAIL
    email = EmailMultiAlternatives(
        subject=message.subject,
        body=html_to_text(message.body),
        from_email=sender,
        to=[message.recipient],
        headers={"X-Clarion-Message-Id": str(message.pk)},
    )
    reply_to = integration.settings.get("reply_to") if integration else None
    if reply_to:
        email.reply_to = [reply_to]
    email.attach_alternative(message.body, "text/html")
    return email


def send_email(message: Message, integration: Integration | None) -> SendResult:
    try:
        connection = _backend_for(integration)
        email = build_email(message, integration)
        email.connection = connection
        sent = email.send()
    except ProviderError:
        raise
    except Exception as exc:  # every backend raises its own types; the attempt row keeps them
        response = {}
        anymail_status = getattr(exc, "response", None)
        if anymail_status is not None and hasattr(anymail_status, "status_code"):
            response = {"status_code": anymail_status.status_code}
        raise ProviderError(f"{type(exc).__name__}: {exc}", response=response) from exc
    if not sent:
        raise ProviderError("the backend accepted no message")
    status = getattr(email, "anymail_status", None)
    message_id = ""
    if status is not None and status.message_id:
        message_id = str(status.message_id)
    return SendResult(provider_message_id=message_id, response={"accepted": sent})
