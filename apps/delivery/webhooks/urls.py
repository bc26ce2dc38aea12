"""The inbound webhook URLs of an integration, as the provider must be told them."""

from __future__ import annotations

from django.conf import settings
from django.urls import reverse

from apps.delivery.models import Integration
from apps.delivery.webhooks.anymail import TRACKING_VIEWS


def webhook_urls(integration: Integration) -> dict[str, str]:
    """Name → absolute URL (``CLARION_PUBLIC_URL`` based). Empty for providers without callbacks."""
    key = integration.webhook_key
    if integration.channel == "email" and integration.provider in TRACKING_VIEWS:
        path = reverse("delivery-webhook-email-tracking", kwargs={"key": key})
        return {"tracking": f"{settings.PUBLIC_URL}{path}"}
    if integration.provider == "twilio":
        path = reverse("delivery-webhook-twilio-status", kwargs={"key": key})
        return {"status_callback": f"{settings.PUBLIC_URL}{path}"}
    return {}
