"""Email tracking webhooks for every Anymail ESP, one URL per integration.

``POST /api/v1/webhooks/email/<webhook_key>/tracking``. The integration's credentials configure
Anymail's own view for that ESP: ``webhook_secret`` (HTTP basic auth ``user:password`` in the
URL registered with the ESP; required unless the ESP signs its webhooks and its key is set:
Mailgun ``webhook_signing_key``, Resend and MailerSend ``signing_secret``, SendGrid
``tracking_webhook_verification_key``). Anymail validates and parses; Clarion stores each event
raw and moves the message forward.
"""

from __future__ import annotations

import logging
import warnings
from typing import Any

from anymail.exceptions import (
    AnymailConfigurationError,
    AnymailError,
    AnymailWarning,
    AnymailWebhookValidationFailure,
)
from anymail.signals import AnymailTrackingEvent, EventType, RejectReason
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.utils.module_loading import import_string
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_http_methods

from apps.delivery.models import Integration, Message
from apps.delivery.selectors import integration_by_webhook_key
from apps.delivery.services import StatusEvent, message_events_record
from apps.delivery.webhooks import jsonable, payload_digest

logger = logging.getLogger(__name__)

TRACKING_VIEWS: dict[str, str] = {
    "sendgrid": "anymail.webhooks.sendgrid.SendGridTrackingWebhookView",
    "mailgun": "anymail.webhooks.mailgun.MailgunTrackingWebhookView",
    "postmark": "anymail.webhooks.postmark.PostmarkTrackingWebhookView",
    "ses": "anymail.webhooks.amazon_ses.AmazonSESTrackingWebhookView",
    "resend": "anymail.webhooks.resend.ResendTrackingWebhookView",
    "brevo": "anymail.webhooks.brevo.BrevoTrackingWebhookView",
    "mailjet": "anymail.webhooks.mailjet.MailjetTrackingWebhookView",
    "sparkpost": "anymail.webhooks.sparkpost.SparkPostTrackingWebhookView",
    "mailersend": "anymail.webhooks.mailersend.MailerSendTrackingWebhookView",
}
# Credential keys that let the ESP's own signature stand in for basic auth.
SIGNATURE_KEYS: dict[str, str] = {
    "mailgun": "webhook_signing_key",
    "resend": "signing_secret",
    "mailersend": "signing_secret",
    "sendgrid": "tracking_webhook_verification_key",
}

STATUS_FOR_EVENT: dict[str, str] = {
    EventType.SENT: Message.Status.SENT,
    EventType.DELIVERED: Message.Status.DELIVERED,
    EventType.BOUNCED: Message.Status.BOUNCED,
    EventType.REJECTED: Message.Status.FAILED,
    EventType.FAILED: Message.Status.FAILED,
    EventType.OPENED: Message.Status.OPENED,
    EventType.CLICKED: Message.Status.CLICKED,
}
# Reject reasons that say the address itself is bad.
SUPPRESSING_REJECTS = frozenset({RejectReason.INVALID, RejectReason.BOUNCED, RejectReason.SPAM})


def _view_kwargs(integration: Integration) -> dict[str, Any]:
    creds = integration.credentials
    kwargs: dict[str, Any] = {"webhook_secret": creds.get("webhook_secret") or []}
    signature_key = SIGNATURE_KEYS.get(integration.provider)
    if signature_key and creds.get(signature_key):
        kwargs[signature_key] = creds[signature_key]
    if integration.provider == "mailgun" and creds.get("api_key"):
        kwargs["api_key"] = creds["api_key"]
    if integration.provider == "ses":
        from apps.delivery.providers.email import backend_kwargs

        for name in ("session_params", "client_params"):
            value = backend_kwargs(integration).get(name)
            if value:
                kwargs[name] = value
    return kwargs


def is_secured(integration: Integration) -> bool:
    creds = integration.credentials
    signature_key = SIGNATURE_KEYS.get(integration.provider)
    return bool(creds.get("webhook_secret") or (signature_key and creds.get(signature_key)))


def _soft_bounce(provider: str, esp_event: Any) -> bool:
    """Anymail calls some temporary bounces "bounced": those must not make the address inactive."""
    if not isinstance(esp_event, dict):
        return False
    if provider == "postmark":
        return esp_event.get("Type") in ("SoftBounce", "Transient", "DnsError")
    if provider == "sendgrid":
        return esp_event.get("type") == "blocked"
    if provider == "ses":
        return (esp_event.get("bounce") or {}).get("bounceType") == "Transient"
    return False


def status_event(provider: str, event: AnymailTrackingEvent) -> StatusEvent:
    payload = jsonable(event.esp_event)
    suppress = ""
    if event.event_type == EventType.BOUNCED and not _soft_bounce(provider, event.esp_event):
        suppress = "bounced"
    elif event.event_type == EventType.COMPLAINED:
        suppress = "complained"
    elif event.event_type == EventType.REJECTED and event.reject_reason in SUPPRESSING_REJECTS:
        suppress = str(event.reject_reason)
    description = " ".join(filter(None, [event.description, event.mta_response])) or str(event.reject_reason or "")
    metadata = event.metadata if isinstance(event.metadata, dict) else {}
    return StatusEvent(
        provider=provider,
        provider_message_id=str(event.message_id or ""),
        event_type=str(event.event_type),
        status=STATUS_FOR_EVENT.get(event.event_type, ""),
        dedupe_key=(
            f"{event.event_type}:{event.event_id}:{event.recipient or ''}"
            if event.event_id
            else f"sha256:{payload_digest(payload)}"
        ),
        payload=payload if isinstance(payload, dict) else {"event": payload},
        recipient=str(event.recipient or ""),
        description=description,
        occurred_at=event.timestamp,
        suppress_reason=suppress,
        clarion_message_id=str(metadata.get("clarion_message_id", "")),
    )


@csrf_exempt
@require_http_methods(["POST", "HEAD"])
def email_tracking(request: HttpRequest, key: str) -> HttpResponse:
    integration = integration_by_webhook_key(key=key, providers=list(TRACKING_VIEWS))
    if integration is None:
        return JsonResponse({"error": {"code": "not_found", "message": "Unknown webhook."}}, status=404)
    if request.method == "HEAD":  # some ESPs check the URL when it is registered
        return HttpResponse()
    if not is_secured(integration):
        return JsonResponse(
            {"error": {"code": "webhook_not_secured", "message": "Set webhook_secret on the integration first."}},
            status=403,
        )
    view_class = import_string(TRACKING_VIEWS[integration.provider])
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", AnymailWarning)
            view = view_class(**_view_kwargs(integration))
    except AnymailConfigurationError as exc:
        return JsonResponse({"error": {"code": "webhook_misconfigured", "message": str(exc)}}, status=403)
    if view.basic_auth and not request.META.get("HTTP_AUTHORIZATION"):
        # A challenge, not a refusal: Amazon SNS only sends the credentials after a 401.
        response = JsonResponse({"error": {"code": "unauthorized", "message": "Basic auth required."}}, status=401)
        response["WWW-Authenticate"] = 'Basic realm="Clarion webhook"'
        return response
    try:
        view.setup(request, key=key)
        view.run_validators(request)
        # Parsing also confirms an Amazon SNS subscription (with the integration's AWS credentials).
        events = [e for e in view.parse_events(request) if isinstance(e, AnymailTrackingEvent)]
    except AnymailWebhookValidationFailure as exc:
        logger.warning("rejected %s webhook for integration %s: %s", integration.provider, integration.pk, exc)
        return JsonResponse({"error": {"code": "invalid_signature", "message": str(exc)}}, status=403)
    except (AnymailError, ValueError, KeyError, TypeError) as exc:  # a payload the ESP's parser cannot read
        return JsonResponse({"error": {"code": "invalid_payload", "message": str(exc)[:500]}}, status=400)
    message_events_record(integration=integration, events=[status_event(integration.provider, e) for e in events])
    return HttpResponse()
