"""Web Push (RFC 8030 + RFC 8291 encryption + VAPID, RFC 8292) through pywebpush.

Credentials: ``vapid_private_key`` (base64url raw key or PEM) and ``vapid_subject``
(``mailto:ops@example.com`` or an https URL). Devices: ``provider: webpush``, ``token`` = the
PushSubscription endpoint, ``keys`` = its ``p256dh`` and ``auth``.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from pywebpush import WebPushException, webpush

from apps.core.net import DestinationRefused
from apps.delivery.models import Integration, Message
from apps.delivery.providers.base import (
    ErrorKind,
    Provider,
    ProviderError,
    SendResult,
    error_from_requests_exception,
    kind_for_status,
    outbound_session,
    parse_retry_after,
    refused_destination_error,
    register,
)
from apps.delivery.providers.fanout import GONE_STATUSES, DeadDestination, Destination, send_to_each, subscriber_devices


def vapid_key(value: str) -> str:
    """The VAPID private key as pywebpush reads it (base64url raw); a PEM is converted."""
    if "-----BEGIN" not in value:
        return value.strip()
    key = serialization.load_pem_private_key(value.encode(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ProviderError("the VAPID key must be an EC P-256 key", kind=ErrorKind.CONFIGURATION)
    raw = key.private_numbers().private_value.to_bytes(32, "big")
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def push_payload(message: Message) -> dict[str, Any]:
    data = message.data or {}
    payload: dict[str, Any] = {"title": message.subject, "body": message.body, "message_id": str(message.pk)}
    if data.get("action_url"):
        payload["url"] = data["action_url"]
    return payload


@register
class WebPush(Provider):
    channel = "push"
    name = "webpush"
    required_credentials = ("vapid_private_key", "vapid_subject")
    # RFC 8030 ``Topic``: a second push with the same topic replaces one the push service still
    # holds for an offline browser, but one already delivered is shown again: no deduplication.
    idempotency_field = "Topic header (replaces an undelivered copy only)"
    metadata_field = "message_id in the payload"
    uses_devices = True

    def send(self, message: Message, integration: Integration | None) -> SendResult:
        if integration is None or not integration.credentials.get("vapid_private_key"):
            raise ProviderError("web push needs a VAPID private key", kind=ErrorKind.CONFIGURATION)
        devices = subscriber_devices(message, self.name)
        if not devices:
            raise ProviderError("the subscriber has no web push subscription", kind=ErrorKind.NO_DESTINATION)
        data = json.dumps(push_payload(message))
        creds = integration.credentials
        timeout = self.timeout(integration)
        ttl = int(integration.settings.get("ttl", 24 * 3600))
        try:
            private_key = vapid_key(creds["vapid_private_key"])
        except ValueError as exc:
            raise ProviderError(f"invalid VAPID private key: {exc}", kind=ErrorKind.CONFIGURATION) from exc

        def push(destination: Destination) -> dict[str, Any]:
            try:
                # The endpoint is the subscriber's browser's: through the outbound address guard.
                with outbound_session() as session:
                    response = webpush(
                        subscription_info={"endpoint": destination.url, "keys": destination.keys},
                        data=data,
                        vapid_private_key=private_key,
                        vapid_claims={"sub": creds.get("vapid_subject", "")},
                        timeout=timeout,
                        ttl=ttl,
                        headers={
                            "Urgency": integration.settings.get("urgency", "normal"),
                            "Topic": f"clarion-{message.pk}",
                        },
                        requests_session=session,
                    )
            except DestinationRefused as exc:
                raise refused_destination_error(exc, what="Push service") from exc
            except WebPushException as exc:
                status = getattr(exc.response, "status_code", None)
                headers = getattr(exc.response, "headers", {}) or {}
                cls = DeadDestination if status in GONE_STATUSES else ProviderError
                raise cls(
                    f"web push answered {status}: {exc.message}"[:1000],
                    kind=ErrorKind.INVALID_ADDRESS if status in GONE_STATUSES else kind_for_status(status),
                    status_code=status,
                    retry_after=parse_retry_after(headers.get("Retry-After")),
                ) from exc
            except requests.RequestException as exc:
                raise error_from_requests_exception(exc, what="Push service") from exc
            except (ValueError, TypeError) as exc:  # malformed keys on the device
                raise ProviderError(f"invalid web push subscription: {exc}", kind=ErrorKind.INVALID_ADDRESS) from exc
            return {"status_code": response.status_code, "id": response.headers.get("Location", "")}

        return send_to_each(
            [Destination(url=d.token, keys=d.keys, device_id=d.pk) for d in devices],
            push,
        )
