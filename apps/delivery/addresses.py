"""The address rule: where a subscriber is reached on a channel, and how addresses are compared.

One rule for the engine (a message's recipient), ``reachable_channels`` (whether a channel step
can send at all) and template test sends. Pure functions, no queries; ``apps.delivery.services``
re-exports them (this module stands apart so selectors can use it without importing services).
"""

from __future__ import annotations

from apps.subscribers.models import Subscriber

# Channels whose address is the subscriber's own, and which an address can be suppressed on.
SUPPRESSIBLE_CHANNELS = ("email", "sms")


def channel_address(*, subscriber: Subscriber, channel: str) -> str:
    """The subscriber's own address on ``channel`` (email address, phone number), or "" when it has
    none or the channel needs none of the subscriber's (in-app, push, chat, webhook)."""
    if channel == "email":
        return subscriber.email or ""
    if channel == "sms":
        return subscriber.phone or ""
    return ""


def subscriber_recipient(*, subscriber: Subscriber, channel: str) -> str:
    """What a message to ``subscriber`` on ``channel`` records as its recipient: the channel address,
    else the subscriber id (in-app, push, chat and webhook messages are addressed to the subscriber)."""
    return channel_address(subscriber=subscriber, channel=channel) or subscriber.subscriber_id


def address_normalize(*, channel: str, address: str) -> str:
    """An address as suppressions store and match it: trimmed, and lower-case for email."""
    address = address.strip()
    return address.lower() if channel == "email" else address
