"""Suppressions: email addresses and phone numbers made inactive (hard bounce, complaint, invalid number)."""

from __future__ import annotations

import logging

from apps.delivery.addresses import SUPPRESSIBLE_CHANNELS, address_normalize
from apps.delivery.models import Message, Suppression

logger = logging.getLogger(__name__)


def address_suppress(
    *, environment_id: int, channel: str, address: str, reason: str, detail: str = "", message: Message | None = None
) -> bool:
    """Mark an email address or phone number inactive in the environment. Returns whether it was new."""
    if channel not in SUPPRESSIBLE_CHANNELS or not address:
        return False
    _, created = Suppression.objects.get_or_create(
        environment_id=environment_id,
        channel=channel,
        address=address_normalize(channel=channel, address=address)[:320],
        defaults={"reason": reason, "detail": detail[:2000], "message": message},
    )
    if created:
        logger.info("%s address suppressed in environment %s: %s", channel, environment_id, reason)
    return created


def _suppression_of(message: Message) -> Suppression | None:
    if message.channel not in SUPPRESSIBLE_CHANNELS:
        return None
    return Suppression.objects.filter(
        environment_id=message.environment_id,
        channel=message.channel,
        address=address_normalize(channel=message.channel, address=message.recipient),
    ).first()
