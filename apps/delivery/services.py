from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from django.db.models import F, Q
from django.utils import timezone

from apps.delivery.models import DeliveryAttempt, Integration, Message
from apps.delivery.providers.email import ProviderError, send_email

logger = logging.getLogger(__name__)

SENDERS = {"email": send_email}


def integrations_for(*, environment_id: int, channel: str) -> list[Integration]:
    return list(Integration.objects.filter(environment_id=environment_id, channel=channel, active=True))


def _claim(message_id: int) -> bool:
    """queued → sending, once: a task that runs twice finds nothing to claim."""
    return bool(
        Message.objects.filter(pk=message_id, status=Message.Status.QUEUED).update(
            status=Message.Status.SENDING, attempts=F("attempts") + 1, updated_at=timezone.now()
        )
    )


def message_deliver(*, message_id: int) -> Message | None:
    """Send one queued message through the environment's integrations, in priority order.

    With no integration configured for email, Django's configured backend is used (the file
    backend on the embedded default). Each try writes a DeliveryAttempt.
    """
    if not _claim(message_id):
        return None
    message = Message.objects.select_related("subscriber").get(pk=message_id)
    sender = SENDERS.get(message.channel)
    if sender is None:
        message.status = Message.Status.FAILED
        message.error = f"no sender for channel {message.channel}"
        message.save(update_fields=["status", "error", "updated_at"])
        return message
    candidates: list[Integration | None] = list(
        integrations_for(environment_id=message.environment_id, channel=message.channel)
    ) or [None]
    last_error = ""
    for integration in candidates:
        provider = integration.provider if integration else "default"
        started = time.monotonic()
        try:
            result = sender(message, integration)
        except ProviderError as exc:
            last_error = str(exc)
            DeliveryAttempt.objects.create(
                message=message,
                integration=integration,
                provider=provider,
                status=DeliveryAttempt.Status.FAILED,
                response=exc.response,
                error=last_error,
                duration_ms=int((time.monotonic() - started) * 1000),
            )
            logger.warning("message %s: %s failed: %s", message.pk, provider, last_error)
            continue
        DeliveryAttempt.objects.create(
            message=message,
            integration=integration,
            provider=provider,
            status=DeliveryAttempt.Status.SUCCESS,
            response=result.response,
            duration_ms=int((time.monotonic() - started) * 1000),
        )
        message.status = Message.Status.SENT
        message.provider = provider
        message.provider_message_id = result.provider_message_id
        message.sent_at = timezone.now()
        message.error = ""
        message.save(update_fields=["status", "provider", "provider_message_id", "sent_at", "error", "updated_at"])
        return message
    message.status = Message.Status.FAILED
    message.error = last_error
    message.save(update_fields=["status", "error", "updated_at"])
    return message


def message_send_now(
    *,
    environment_id: int,
    channel: str,
    recipient: str,
    subject: str = "",
    body: str = "",
    data: dict[str, Any] | None = None,
    subscriber_id: int | None = None,
    template_version_id: int | None = None,
    locale: str = "",
) -> Message:
    """Send one message outside any workflow run (an admin test send), synchronously.

    The message and its attempts are recorded like any other; the returned message carries the
    final status and error.
    """
    message = Message.objects.create(
        environment_id=environment_id,
        channel=channel,
        recipient=recipient,
        subject=subject,
        body=body,
        data=data or {},
        subscriber_id=subscriber_id,
        template_version_id=template_version_id,
        locale=locale,
    )
    message_deliver(message_id=message.pk)
    message.refresh_from_db()
    return message


def messages_deliver(*, message_ids: Sequence[int]) -> None:
    for message_id in message_ids:
        message_deliver(message_id=message_id)


def messages_requeue_stalled(*, stalled_before: datetime) -> list[int]:
    """Queued messages whose task was lost, and sends interrupted by a dead worker.

    A message left in ``sending`` is put back to ``queued``: the worker died before recording
    the provider's answer, and a retry is preferable to a silent loss.
    """
    Message.objects.filter(status=Message.Status.SENDING, updated_at__lt=stalled_before).update(
        status=Message.Status.QUEUED, updated_at=timezone.now()
    )
    return list(
        Message.objects.filter(Q(status=Message.Status.QUEUED), created_at__lt=stalled_before)
        .exclude(channel="in_app")
        .values_list("pk", flat=True)[:5000]
    )
