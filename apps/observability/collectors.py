"""Gauges computed when Prometheus scrapes: a fixed handful of cheap, indexed queries.

Never on a hot path. Every ``/metrics`` scrape of every web process computes them, so in a
dashboard take ``max`` across instances, not ``sum`` (docs/operations.md).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

from django.utils import timezone
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from apps.delivery.gauges import circuits_not_closed
from apps.observability.health import broker_redis_url, redis_client, ticker_heartbeat_age
from apps.workflows.gauges import run_backlog

logger = logging.getLogger(__name__)


def queue_depth() -> int:
    """Tasks waiting in the broker: Redis ``LLEN`` (short timeout) or one count on the ORM queue."""
    from django_q.brokers import get_broker

    broker = get_broker()
    url = broker_redis_url()
    if url:
        return int(redis_client(url).llen(broker.list_key))
    return int(broker.queue_size() or 0)


class DatabaseCollector(Collector):
    """clarion_runs_waiting, clarion_runs_pending, clarion_runs_due_oldest_seconds,
    clarion_queue_depth, clarion_provider_circuit_open, and clarion_scrape_errors for a failed source."""

    def collect(self) -> Iterator[GaugeMetricFamily]:
        now = timezone.now()
        errors = GaugeMetricFamily(
            "clarion_scrape_errors", "1 when a source of the scrape-time gauges failed", labels=["source"]
        )
        try:
            backlog = run_backlog(now=now)
        except Exception:
            logger.warning("metrics: could not read the run backlog", exc_info=True)
            errors.add_metric(["runs"], 1)
        else:
            yield GaugeMetricFamily(
                "clarion_runs_waiting", "Runs waiting (delay, digest window)", value=backlog.waiting
            )
            yield GaugeMetricFamily(
                "clarion_runs_pending", "Runs ready to advance, waiting for a worker", value=backlog.pending
            )
            yield GaugeMetricFamily(
                "clarion_runs_due_oldest_seconds",
                "How long the oldest waiting run whose time came has been due (0: none is late)",
                value=backlog.due_oldest_seconds,
            )
        try:
            depth = queue_depth()
        except Exception:
            logger.warning("metrics: could not read the broker's queue depth", exc_info=True)
            errors.add_metric(["broker"], 1)
        else:
            yield GaugeMetricFamily("clarion_queue_depth", "Tasks waiting in the broker", value=depth)
        circuit = GaugeMetricFamily(
            "clarion_provider_circuit_open",
            "1 while an integration's circuit breaker is open, 0 while half-open; absent when closed",
            labels=["integration", "provider", "channel"],
        )
        try:
            for state in circuits_not_closed(now=now):
                circuit.add_metric([str(state.integration_id), state.provider, state.channel], 1 if state.open else 0)
        except Exception:
            logger.warning("metrics: could not read the circuit breakers", exc_info=True)
            errors.add_metric(["circuits"], 1)
        yield circuit
        age = ticker_heartbeat_age()  # a stat of this host's heartbeat file: no query
        if age is not None:
            yield GaugeMetricFamily(
                "clarion_ticker_heartbeat_age_seconds",
                "Seconds since this host's ticker last succeeded (written at most every 5 s)",
                value=age,
            )
        yield errors
