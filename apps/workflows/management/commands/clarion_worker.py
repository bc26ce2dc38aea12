"""``manage.py clarion_worker``: the django-q2 cluster (the workers) plus Clarion's ticker.

The cluster's sentinel is forked before the ticker thread starts, so workers (forked by the
sentinel) never inherit the thread or its connection. Stop it with SIGTERM or SIGINT; a
supervisor must send signals to the whole process group (see docs/deployment.md).
"""

from __future__ import annotations

import logging
import time
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser
from django.db import close_old_connections
from django_q.brokers import get_broker
from django_q.cluster import Cluster

from apps.observability.exporter import exporter_start
from apps.workflows import watchdog
from apps.workflows.ticker import Ticker

logger = logging.getLogger(__name__)

WATCH_INTERVAL = 5.0  # seconds between two looks at the cluster's progress


class Command(BaseCommand):
    help = "Run the task workers (django-q2 qcluster) and the ticker that starts due work every second."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--no-ticker", action="store_true", help="Run the workers only (another host runs the ticker)."
        )

    def handle(self, *args: Any, **options: Any) -> None:
        settings.SECRET_KEY  # noqa: B018 - fail now, as qcluster does, if there is none
        with_ticker = not options["no_ticker"]
        cluster, ticker = self._start(with_ticker)
        exporter_start()  # CLARION_METRICS_PORT: this host's metrics, for hosts without a web process
        limit = watchdog.wedge_seconds()
        broker = get_broker()
        next_check = time.monotonic() + WATCH_INTERVAL
        try:
            while cluster.sentinel is not None and cluster.sentinel.is_alive():
                cluster.sentinel.join(timeout=1)
                if time.monotonic() < next_check or not cluster.sentinel.is_alive():
                    continue
                next_check = time.monotonic() + WATCH_INTERVAL
                if self._wedged(broker, limit):
                    if ticker is not None:
                        ticker.stop()  # no thread of ours runs while the new sentinel is forked
                    watchdog.kill_tree(cluster.sentinel.pid or 0)
                    cluster.sentinel.join(timeout=10)
                    cluster, ticker = self._start(with_ticker)
        finally:
            if ticker is not None:
                ticker.stop()

    @staticmethod
    def _start(with_ticker: bool) -> tuple[Cluster, Ticker | None]:
        watchdog.mark_activity()
        cluster = Cluster()
        cluster.start()  # forks the sentinel first: the ticker thread below is never forked into workers
        ticker = None
        if with_ticker:
            ticker = Ticker(interval=float(settings.CLARION["TICK_SECONDS"]))
            ticker.start()
        return cluster, ticker

    @staticmethod
    def _wedged(broker: Any, limit: float) -> bool:
        try:
            waiting = int(broker.queue_size() or 0)
        except Exception:  # the broker is away: nothing to judge now; the ticker keeps the work
            return False
        finally:
            close_old_connections()  # the ORM broker counts with this thread's connection
        if not watchdog.is_wedged(waiting=waiting, now=time.time(), limit=limit):
            return False
        logger.error(
            "task cluster wedged: %d task(s) waiting and none started or finished for %.0f s; restarting it",
            waiting,
            limit,
        )
        return True
