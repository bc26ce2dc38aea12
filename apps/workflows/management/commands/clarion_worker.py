"""``manage.py clarion_worker``: the django-q2 cluster (the workers) plus Clarion's ticker.

The cluster's sentinel is forked before the ticker thread starts, so workers (forked by the
sentinel) never inherit the thread or its connection. Stop it with SIGTERM or SIGINT; a
supervisor must send signals to the whole process group (see docs/deployment.md).
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser
from django_q.cluster import Cluster

from apps.workflows.ticker import Ticker


class Command(BaseCommand):
    help = "Run the task workers (django-q2 qcluster) and the ticker that starts due work every second."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--no-ticker", action="store_true", help="Run the workers only (another host runs the ticker)."
        )

    def handle(self, *args: Any, **options: Any) -> None:
        settings.SECRET_KEY  # noqa: B018 - fail now, as qcluster does, if there is none
        cluster = Cluster()
        cluster.start()
        ticker = None
        if not options["no_ticker"]:
            ticker = Ticker(interval=float(settings.CLARION["TICK_SECONDS"]))
            ticker.start()
        try:
            while cluster.sentinel is not None and cluster.sentinel.is_alive():
                cluster.sentinel.join(timeout=1)
        finally:
            if ticker is not None:
                ticker.stop()
