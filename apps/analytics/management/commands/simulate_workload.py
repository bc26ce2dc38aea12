"""``manage.py simulate_workload``: the reference workload (apps.analytics.workload), then its
savings report. Progress goes to stderr, the report to stdout (``--json``: the raw report)."""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime, timedelta
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from apps.analytics.savings import savings_report
from apps.analytics.workload import DEFAULT_START, WorkloadSpec, critical_delivery, report_table, workload_run


class Command(BaseCommand):
    help = "Simulate a realistic week of notifications in a fresh environment and print the savings report."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--subscribers", type=int, default=10_000)
        parser.add_argument("--days", type=int, default=7)
        parser.add_argument("--seed", type=int, default=42)
        parser.add_argument(
            "--start", default=DEFAULT_START.date().isoformat(), help="first simulated day (UTC, YYYY-MM-DD)"
        )
        parser.add_argument("--step-minutes", type=int, default=5, help="how far the clock moves per step")
        parser.add_argument("--json", action="store_true", help="print the raw report as JSON")

    def handle(self, *args: Any, **options: Any) -> None:
        if options["subscribers"] < 1 or options["days"] < 1 or options["step_minutes"] < 1:
            raise CommandError("--subscribers, --days and --step-minutes must be at least 1")
        try:
            start = datetime.fromisoformat(options["start"]).replace(tzinfo=UTC)
        except ValueError as exc:
            raise CommandError(f"--start: {exc}") from exc
        spec = WorkloadSpec(
            subscribers=options["subscribers"],
            days=options["days"],
            seed=options["seed"],
            start=start,
            step=timedelta(minutes=options["step_minutes"]),
        )
        logging.disable(logging.INFO)  # the engine's per-request activity lines would drown the progress
        try:
            result = workload_run(spec, progress=lambda line: print(line, file=sys.stderr, flush=True))
        finally:
            logging.disable(logging.NOTSET)
        critical = critical_delivery(environment=result.environment)
        report = savings_report(environment=result.environment, start=spec.start, end=spec.end)
        print(
            f"workload: done in {result.seconds:.0f} s; environment {result.environment.slug}; "
            f"triggers {dict(result.triggers)}; engagement {dict(result.engagement)}; critical {json.dumps(critical)}",
            file=sys.stderr,
        )
        if options["json"]:
            self.stdout.write(json.dumps(report, indent=2, default=str))
            return
        sent = sum(critical["messages"].values())
        delivered = sum(critical["delivered"].values())
        self.stdout.write(
            f"Savings report, environment {result.environment.slug}, "
            f"{spec.start:%Y-%m-%d %H:%M} to {spec.end:%Y-%m-%d %H:%M} UTC "
            f"({spec.subscribers:,} subscribers, {spec.days} day(s), seed {spec.seed})\n"
            f"{report_table(report)}\n"
            f"  critical ({critical['runs']:,} runs): {delivered:,} of {sent:,} messages delivered; "
            f"not sent: {critical['not_sent'] or 'none'}"
        )
