"""Read-only figures about delivery for the metrics endpoint (apps.observability): computed when
Prometheus scrapes, never on the hot path."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from apps.delivery.models import Integration


@dataclass(frozen=True)
class CircuitState:
    integration_id: int
    provider: str
    channel: str
    open: bool  # False: half-open (a probe may be under way)


def circuits_not_closed(*, now: datetime) -> list[CircuitState]:
    """One query: the integrations whose circuit breaker is open or half-open (usually none)."""
    rows = Integration.objects.filter(circuit_open_until__isnull=False).values_list(
        "pk", "provider", "channel", "circuit_open_until"
    )
    return [
        CircuitState(pk, provider, channel, until is not None and until > now) for pk, provider, channel, until in rows
    ]
