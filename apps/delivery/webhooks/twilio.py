"""Twilio webhooks, one URL set per integration: status callbacks and inbound messages.

Every endpoint here first checks ``X-Twilio-Signature`` with the integration's auth token
(``verify_twilio_request``) before anything is read.

``status_callback`` (``…/webhooks/twilio/{webhook_key}/status``) moves messages through their
states. ``inbound`` (``…/webhooks/twilio/{webhook_key}/inbound``: point the Twilio number's "A
message comes in" webhook, HTTP POST, at it) hands STOP / START keywords to the preferences app
(``sms_keyword_apply``), which switches the SMS channel of the environment's subscribers with the
sender's number (``From``) off or on, recorded with source ``sms``. Its answer is an empty TwiML
``<Response/>``: Twilio's own opt-out handling already replies to STOP / START.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.utils.crypto import constant_time_compare
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST
from twilio.request_validator import RequestValidator

from apps.delivery.models import Integration, Message
from apps.delivery.providers.sms import TWILIO_INVALID_NUMBER_CODES
from apps.delivery.selectors import integration_by_webhook_key
from apps.delivery.services import StatusEvent, message_events_record
from apps.delivery.webhooks import jsonable
from apps.preferences.services import sms_keyword_apply

logger = logging.getLogger(__name__)

# Twilio MessageStatus → Clarion status ("" = informational, stored only).
STATUS_FOR_TWILIO: dict[str, str] = {
    "accepted": "",
    "scheduled": "",
    "queued": "",
    "sending": "",
    "sent": Message.Status.SENT,
    "delivered": Message.Status.DELIVERED,
    "read": Message.Status.OPENED,  # WhatsApp read receipts
    "undelivered": Message.Status.FAILED,
    "failed": Message.Status.FAILED,
    "canceled": Message.Status.FAILED,
}

EMPTY_TWIML = '<?xml version="1.0" encoding="UTF-8"?><Response></Response>'


def _candidate_urls(request: HttpRequest) -> Iterator[str]:
    """The URL Twilio signed: the public URL it was given, or what this request says it is."""
    yield f"{settings.PUBLIC_URL}{request.get_full_path()}"
    yield request.build_absolute_uri()


def verify_twilio_request(request: HttpRequest, integration: Integration) -> bool:
    token = integration.credentials.get("auth_token")
    signature = request.headers.get("X-Twilio-Signature", "")
    if not token or not signature:
        return False
    validator = RequestValidator(token)
    if not any(validator.validate(url, request.POST, signature) for url in _candidate_urls(request)):
        return False
    account_sid = request.POST.get("AccountSid", "")
    expected = integration.credentials.get("account_sid", "")
    return not (account_sid and expected) or constant_time_compare(account_sid, expected)


def _integration(key: str) -> Integration | None:
    return integration_by_webhook_key(key=key, providers=["twilio"])


def _forbidden() -> JsonResponse:
    return JsonResponse(
        {"error": {"code": "invalid_signature", "message": "X-Twilio-Signature is missing or wrong."}}, status=403
    )


@csrf_exempt
@require_POST
def status_callback(request: HttpRequest, key: str) -> HttpResponse:
    integration = _integration(key)
    if integration is None:
        return JsonResponse({"error": {"code": "not_found", "message": "Unknown webhook."}}, status=404)
    if not verify_twilio_request(request, integration):
        logger.warning("rejected Twilio status callback for integration %s", integration.pk)
        return _forbidden()
    post = request.POST
    sid = post.get("MessageSid") or post.get("SmsSid") or ""
    twilio_status = (post.get("MessageStatus") or post.get("SmsStatus") or "").lower()
    error_code = post.get("ErrorCode") or ""
    if not sid or not twilio_status:
        return JsonResponse(
            {"error": {"code": "validation_error", "message": "MessageSid and MessageStatus."}}, status=400
        )
    invalid_number = error_code.isdigit() and int(error_code) in TWILIO_INVALID_NUMBER_CODES
    description = f"Twilio error {error_code}" if error_code else ""
    if post.get("ErrorMessage"):
        description = f"{description}: {post['ErrorMessage']}" if description else post["ErrorMessage"]
    event = StatusEvent(
        provider="twilio",
        provider_message_id=sid,
        event_type=twilio_status,
        status=STATUS_FOR_TWILIO.get(twilio_status, ""),
        dedupe_key=f"{sid}:{twilio_status}:{error_code}",
        payload=jsonable(post),
        recipient=post.get("To", ""),
        description=description,
        suppress_reason="invalid_address" if invalid_number else "",
        # In the StatusCallback URL Clarion gave Twilio (signed with it): matches a message whose
        # send timed out before Twilio's answer (the Message SID) was recorded.
        clarion_message_id=request.GET.get("clarion_message_id", ""),
    )
    message_events_record(integration=integration, events=[event])
    return HttpResponse(status=204)


@csrf_exempt
@require_POST
def inbound(request: HttpRequest, key: str) -> HttpResponse:
    integration = _integration(key)
    if integration is None:
        return JsonResponse({"error": {"code": "not_found", "message": "Unknown webhook."}}, status=404)
    if not verify_twilio_request(request, integration):
        logger.warning("rejected Twilio inbound message for integration %s", integration.pk)
        return _forbidden()
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
