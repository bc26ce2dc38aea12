"""Integrations: the configured providers of an environment, and the admin's test send through one."""

from __future__ import annotations

from typing import Any

from apps.delivery.models import Integration, Message
from apps.delivery.services.sending import message_build, message_deliver, messages_create_bulk

INTEGRATION_FIELDS = ("name", "credentials", "settings", "priority", "active", "retries", "rate_limit")


def integration_create(*, environment: Any, channel: str, provider: str, **fields: Any) -> Integration:
    """Add an integration (callers validate the provider and its credentials)."""
    unknown = set(fields) - set(INTEGRATION_FIELDS)
    if unknown:
        raise ValueError(f"unknown integration fields: {sorted(unknown)}")
    return Integration.objects.create(environment=environment, channel=channel, provider=provider, **fields)


def integration_update(*, integration: Integration, **fields: Any) -> Integration:
    """Change the fields given. Changing credentials closes the circuit (the old failures are moot)."""
    allowed = {*INTEGRATION_FIELDS, "channel", "provider"}
    changed = [name for name, value in fields.items() if name in allowed and getattr(integration, name) != value]
    for name in changed:
        setattr(integration, name, fields[name])
    if "credentials" in changed or "provider" in changed:
        integration.circuit_failures, integration.circuit_open_until = 0, None
        changed += ["circuit_failures", "circuit_open_until"]
    if changed:
        integration.save(update_fields=[*changed, "updated_at"])
    return integration


def integration_delete(*, integration: Integration) -> None:
    """Delete the integration; messages and attempts keep their provider name."""
    integration.delete()


def integration_send_test(
    *, integration: Integration, recipient: str = "", subscriber_id: int | None = None
) -> Message:
    """A test message through this one integration (no failover), sent now; for the admin."""
    subject = f"Clarion test message ({integration.provider})"
    body = {
        "email": "<p>This is a test message from Clarion. Your integration works.</p>",
    }.get(integration.channel, "This is a test message from Clarion. Your integration works.")
    data: dict[str, Any] = {"test": True}
    if integration.channel == "webhook":
        data["payload"] = {"test": True}
    message = message_build(
        environment_id=integration.environment_id,
        channel=integration.channel,
        recipient=recipient,
        subject=subject,
        body=body,
        data=data,
        subscriber_id=subscriber_id,
    )
    messages_create_bulk(messages=[message])
    message_deliver(message_id=message.pk, only_integration=integration)
    message.refresh_from_db()
    return message
