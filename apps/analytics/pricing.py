"""What one message costs, per channel, for the savings report (docs/analytics.md, "Prices").

The price of a channel is the price of the integration delivery tries first for it — the active
integration with the lowest priority number (then the oldest), as failover picks it — when that
integration has a price; otherwise the channel's default, ``CLARION["MESSAGE_PRICES"]``. An SMS is
priced per segment. Prices are in the environment's currency (``Environment.currency``).
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation

from django.conf import settings

from apps.core.channels import CHANNELS
from apps.delivery.selectors import integration_list
from apps.tenancy.models import Environment

# Sensible list prices when neither the settings nor an integration say otherwise: an email at
# a transactional ESP's pay-as-you-go rate, one SMS segment at a US carrier rate; Clarion's own
# channels (in-app) and the ones providers do not bill per message (push, chat, webhooks) are free.
DEFAULT_MESSAGE_PRICES: dict[str, str] = {
    "in_app": "0",
    "email": "0.0009",
    "sms": "0.0079",
    "push": "0",
    "chat": "0",
    "webhook": "0",
}


def default_prices() -> dict[str, Decimal]:
    """The default price of each channel: ``CLARION["MESSAGE_PRICES"]`` over the built-in ones."""
    configured = {**DEFAULT_MESSAGE_PRICES, **(settings.CLARION.get("MESSAGE_PRICES") or {})}
    prices: dict[str, Decimal] = {}
    for channel in CHANNELS:
        try:
            price = Decimal(str(configured.get(channel, "0")))
        except InvalidOperation:
            price = Decimal(DEFAULT_MESSAGE_PRICES.get(channel, "0"))
        prices[channel] = price if price.is_finite() and price >= 0 else Decimal(0)
    return prices


def channel_prices(*, environment: Environment) -> dict[str, Decimal]:
    """channel → the price of one message (one segment for SMS) in this environment. One query."""
    prices = default_prices()
    seen: set[str] = set()
    for channel, price in (
        integration_list(environment=environment)
        .filter(active=True)
        .order_by("channel", "priority", "pk")
        .values_list("channel", "price")
    ):
        if channel in seen:
            continue
        seen.add(channel)
        if price is not None:
            prices[channel] = Decimal(price)
    return prices
