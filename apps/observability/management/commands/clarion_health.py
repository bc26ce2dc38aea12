"""``manage.py clarion_health``: readiness of a worker host, for a liveness probe (exit 0 or 1).

The same checks as ``GET /readyz`` (database, task broker, channel layer, migrations), plus this
host's ticker (its heartbeat file is fresh) and the minute sweeper (its schedule is not overdue,
so some cluster's scheduler fires it).
"""

from __future__ import annotations

import json
from functools import partial
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser

from apps.observability.health import READINESS_CHECKS, check_sweeper, check_ticker, run_checks


class Command(BaseCommand):
    help = (
        "Check the database, broker, channel layer, migrations, this host's ticker and the sweeper; "
        "exit 1 if any fails."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        tick = float(settings.CLARION["TICK_SECONDS"])
        parser.add_argument(
            "--ticker-max-age",
            type=float,
            default=max(30.0, 10 * tick),
            help="Seconds since this host's ticker last succeeded before it counts as stuck (default %(default)s).",
        )
        parser.add_argument(
            "--no-ticker", action="store_true", help="This host runs clarion_worker --no-ticker: skip the ticker."
        )
        parser.add_argument(
            "--sweeper-max-late",
            type=float,
            default=300.0,
            help="Seconds the minute sweeper may be overdue (no cluster's scheduler running) (default %(default)s).",
        )
        parser.add_argument("--json", action="store_true", help="Print the results as one JSON object.")

    def handle(self, *args: Any, **options: Any) -> None:
        checks = dict(READINESS_CHECKS)
        if not options["no_ticker"]:
            checks["ticker"] = partial(check_ticker, options["ticker_max_age"])
        checks["sweeper"] = partial(check_sweeper, options["sweeper_max_late"])
        results = run_checks(checks)
        failing = [name for name, reason in results.items() if reason is not None]
        if options["json"]:
            payload = {
                "status": "unavailable" if failing else "ok",
                "failing": failing,
                "checks": {name: reason or "ok" for name, reason in results.items()},
            }
            self.stdout.write(json.dumps(payload))
        else:
            for name, reason in results.items():
                self.stdout.write(f"{name}: {reason or 'ok'}")
        if failing:
            raise SystemExit(1)
