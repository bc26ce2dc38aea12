"""Delivery tunables (``settings.CLARION_DELIVERY``)."""

from __future__ import annotations

from dataclasses import dataclass

from django.conf import settings


@dataclass(frozen=True)
class DeliveryConfig:
    """Tunables, overridable with ``settings.CLARION_DELIVERY = {"BACKOFF_BASE": 0.5, ...}``."""

    backoff_base: float = 1.0  # seconds before the first retry; doubles each time
    backoff_max: float = 300.0
    inline_wait_max: float = 2.0  # waits up to this long are slept in the worker; longer ones are deferred
    retry_after_max: float = 900.0  # a provider asking for a longer pause is failed over instead
    circuit_threshold: int = 5  # consecutive failures that open an integration's circuit
    circuit_cooldown: float = 60.0  # seconds a circuit stays open before one probe is let through
    rate_wait_max: float = 10.0  # longest wait for a rate-limit slot inside a worker
    task_budget: float = 200.0  # a delivery task hands what is left to a fresh task after this long
    message_ttl: float = 24 * 3600.0  # a message still undelivered after this long fails
    default_retries: int = 2  # retries on Django's default email backend (no integration)
    in_doubt_resends: int = 2  # resends of a message in doubt (same integration, same key) before it is held
    # Messages a delivery batch writes ahead together (recorded as possibly sent before their calls,
    # their outcomes recorded together after): the most a worker killed mid-batch leaves in doubt.
    send_window: int = 20


def delivery_config() -> DeliveryConfig:
    overrides = getattr(settings, "CLARION_DELIVERY", None) or {}
    return DeliveryConfig(**{key.lower(): value for key, value in overrides.items()})
