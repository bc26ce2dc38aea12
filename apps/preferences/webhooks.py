"""Twilio inbound messages: STOP / START keywords switch a subscriber's SMS channel off and on.

Point the Twilio number's "A message comes in" webhook (HTTP POST) at
``{CLARION_PUBLIC_URL}/api/v1/webhooks/twilio/{webhook_key}/inbound`` — the same per-integration
key as the status callback. The request is verified with ``X-Twilio-Signature`` and the
integration's auth token (``apps.delivery.webhooks.twilio.verify_twilio_request``) before
anything is read. The sender (``From``) is matched to the subscribers of the integration's
environment by phone number; the change is recorded with source ``sms``.

The answer is an empty TwiML ``<Response/>``: Twilio's own opt-out handling already replies to
STOP / START, so Clarion sends nothing back.
"""

from __future__ import annotations

import logging

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from apps.delivery.selectors import integration_by_webhook_key
from apps.delivery.webhooks.twilio import verify_twilio_request
from apps.preferences.services import sms_keyword_apply

logger = logging.getLogger(__name__)

EMPTY_TWIML = '<?xml version="1.0" encoding="UTF-8"?><Response></Response>'


@csrf_exempt
@require_POST
def twilio_inbound(request: HttpRequest, key: str) -> HttpResponse:
    integration = integration_by_webhook_key(key=key, providers=["twilio"])
    if integration is None:
        return JsonResponse({"error": {"code": "not_found", "message": "Unknown webhook."}}, status=404)
    if not verify_twilio_request(request, integration):
        logger.warning("rejected Twilio inbound message for integration %s", integration.pk)
        return JsonResponse(
            {"error": {"code": "invalid_signature", "message": "X-Twilio-Signature is missing or wrong."}}, status=403
        )
    sender = request.POST.get("From", "")
    if not sender:
        return JsonResponse({"error": {"code": "validation_error", "message": "From is required."}}, status=400)
    keyword, changed = sms_keyword_apply(
        environment=integration.environment_id,
        phone=sender,
        body=request.POST.get("Body", ""),
        opt_out_type=request.POST.get("OptOutType", ""),
    )
    if keyword:
        logger.info(
            "SMS keyword %s from …%s: %d subscriber(s) changed (integration %s)",
            keyword,
            sender[-4:],
            changed,
            integration.pk,
        )
    return HttpResponse(EMPTY_TWIML, content_type="text/xml")
