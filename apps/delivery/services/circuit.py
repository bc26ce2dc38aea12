"""Per-integration circuit breaker and rate limit.

Both keep their state on the Integration row and change it only with conditional UPDATEs, so they
hold across worker processes on SQLite and PostgreSQL alike.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime, timedelta

from django.db.models import F, Q
from django.utils import timezone

from apps.delivery.models import Integration
from apps.delivery.providers.base import max_call_seconds
from apps.delivery.services.config import DeliveryConfig

logger = logging.getLogger(__name__)


# --- circuit breaker ----------------------------------------------------------------------------


def _circuit_allows(
    integration: Integration, now: datetime, cfg: DeliveryConfig, *, just_loaded: bool = False
) -> tuple[bool, datetime | None]:
    """(may send now, when to look again). Closed: yes. Open: no. Cooled down: one probe, across processes.

    ``just_loaded``: the row was read moments ago for this message, so its state is used as is.
    """
    if just_loaded:
        open_until = integration.circuit_open_until
    else:
        open_until = Integration.objects.filter(pk=integration.pk).values_list("circuit_open_until", flat=True).first()
    if open_until is None:
        return True, None
    if open_until > now:
        return False, open_until
    # Half-open: whoever moves the deadline first gets the single probe; the others wait.
    probe_until = now + timedelta(seconds=cfg.circuit_cooldown)
    won = Integration.objects.filter(pk=integration.pk, circuit_open_until=open_until).update(
        circuit_open_until=probe_until
    )
    return bool(won), None if won else probe_until


def _circuit_failure(integration: Integration, cfg: DeliveryConfig) -> None:
    Integration.objects.filter(pk=integration.pk).update(circuit_failures=F("circuit_failures") + 1)
    opened = Integration.objects.filter(pk=integration.pk, circuit_failures__gte=cfg.circuit_threshold).update(
        circuit_open_until=timezone.now() + timedelta(seconds=cfg.circuit_cooldown)
    )
    if opened:
        logger.warning("integration %s (%s): circuit open", integration.pk, integration.provider)


def _circuit_success(integration: Integration) -> None:
    Integration.objects.filter(pk=integration.pk).filter(
        Q(circuit_failures__gt=0) | Q(circuit_open_until__isnull=False)
    ).update(circuit_failures=0, circuit_open_until=None)


def integrations_circuit_close(*, integration_ids: list[int]) -> int:
    """Close these integrations' circuits now (an operator's "try the provider again"); how many changed."""
    return (
        Integration.objects.filter(pk__in=integration_ids)
        .filter(Q(circuit_failures__gt=0) | Q(circuit_open_until__isnull=False))
        .update(circuit_failures=0, circuit_open_until=None)
    )


# --- rate limit ---------------------------------------------------------------------------------


def _rate_limit_wait(integration: Integration, cfg: DeliveryConfig) -> tuple[datetime | None, bool]:
    """Reserve the integration's next send slot and sleep until it: ``(None, slept)`` means "send now".

    Slots are ``1 / rate_limit`` seconds apart and reserved with a compare-and-swap on
    ``rate_next_at``, so concurrent workers never share one. When the free slot is further away
    than the longest wait allowed, nothing is reserved and its time is returned: defer until then.
    """
    if not integration.rate_limit or integration.rate_limit <= 0:
        return None, False
    interval = timedelta(seconds=1.0 / integration.rate_limit)
    max_wait = _max_wait(cfg.rate_wait_max)
    for _ in range(50):
        now = timezone.now()
        current = Integration.objects.filter(pk=integration.pk).values_list("rate_next_at", flat=True).first()
        slot = max(now, current) if current else now
        wait = (slot - now).total_seconds()
        if wait > max_wait:
            return slot, False
        if Integration.objects.filter(pk=integration.pk, rate_next_at=current).update(rate_next_at=slot + interval):
            if wait > 0:
                time.sleep(wait)
            return None, wait > 0
    return timezone.now() + interval, False  # heavy contention: come back shortly


def _max_wait(configured: float) -> float:
    """A worker never sleeps long enough for its send to be presumed dead (a third of the heartbeat timeout)."""
    return min(configured, max_call_seconds())
