"""The generic outbound webhook channel: a JSON POST signed with HMAC-SHA256.

The ``Clarion-Signature`` header is ``t=<unix seconds>,s=<hex HMAC-SHA256 of "<t>.<raw body>">``
keyed with the integration's ``secret`` (Stripe's scheme): the receiver recomputes it, compares in
constant time and rejects old timestamps to stop replays. ``Idempotency-Key`` is the same on
every retry and resend of one message, so a receiver can drop duplicates; an integration whose
receiver does says so with the setting ``deduplicates: true`` (resends of a send in doubt are then
safe).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from typing import Any

from django.core.serializers.json import DjangoJSONEncoder

from apps.delivery.models import Integration, Message
from apps.delivery.providers.base import (
    ErrorKind,
    Provider,
    ProviderError,
    SendResult,
    http_post,
    idempotency_key,
    register,
)

SIGNATURE_HEADER = "Clarion-Signature"
DEFAULT_TOLERANCE_SECONDS = 300


def sign(secret: str, body: bytes, *, timestamp: int | None = None) -> str:
    """The signature header value for a body: ``t=…,s=…``."""
    t = int(time.time()) if timestamp is None else timestamp
    digest = hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={t},s={digest}"


def verify(
    secret: str, body: bytes, header: str, *, tolerance: int = DEFAULT_TOLERANCE_SECONDS, now: float | None = None
) -> bool:
    """Check a ``Clarion-Signature`` header, as a receiver would (also used by the tests)."""
    parts = dict(item.split("=", 1) for item in header.split(",") if "=" in item)
    try:
        t = int(parts["t"])
    except (KeyError, ValueError):
        return False
    if abs((time.time() if now is None else now) - t) > tolerance:
        return False
    expected = hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, parts.get("s", ""))


def webhook_body(message: Message) -> dict[str, Any]:
    data = message.data or {}
    return {
        "id": f"msg_{message.pk}",
        "type": "notification",
        "workflow": data.get("workflow"),
        "transaction_id": data.get("transaction_id"),
        "subscriber_id": message.recipient,
        "step": message.step_id,
        "subject": message.subject,
        "body": message.body,
        "payload": data.get("payload", {}),
        "created_at": message.created_at,
    }


@register
class SignedWebhook(Provider):
    """Credentials: ``url`` and ``secret``. Settings: optional ``headers``, ``timeout``, ``deduplicates``."""

    channel = "webhook"
    name = "webhook"
    required_credentials = ("url", "secret")
    destination_credentials = ("url",)
    idempotency_field = "Idempotency-Key header"
    metadata_field = "id in the body (msg_<id>)"

    def deduplicates_for(self, integration: Integration | None) -> bool:
        return bool(integration is not None and integration.settings.get("deduplicates") is True)

    def send(self, message: Message, integration: Integration | None) -> SendResult:
        if integration is None or not integration.credentials.get("url") or not integration.credentials.get("secret"):
            raise ProviderError("the webhook channel needs a url and a secret", kind=ErrorKind.CONFIGURATION)
        body = json.dumps(webhook_body(message), cls=DjangoJSONEncoder, separators=(",", ":")).encode()
        headers = {str(k): str(v) for k, v in (integration.settings.get("headers") or {}).items()}
        headers.update(
            {
                "Content-Type": "application/json",
                "User-Agent": "Clarion-Webhook/1",
                "Idempotency-Key": idempotency_key(message),
                SIGNATURE_HEADER: sign(integration.credentials["secret"], body),
            }
        )
        response = http_post(
            integration.credentials["url"],
            what="Webhook endpoint",
            timeout=self.timeout(integration),
            data=body,
            headers=headers,
        )
        return SendResult(
            provider_message_id=f"msg_{message.pk}",
            response={"status_code": response.status_code, "body": response.text[:500]},
            status_code=response.status_code,
        )
