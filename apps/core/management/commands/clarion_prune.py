"""``manage.py clarion_prune``: apply the environments' retention now (or count what would go)."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from apps.core.retention import DEFAULT_BATCH_SIZE, prune


class Command(BaseCommand):
    help = (
        "Delete what each environment's retention no longer keeps, in bounded batches (the clarion.prune "
        "schedule does this every few minutes). --dry-run counts the rows that would go and deletes nothing."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--dry-run", action="store_true", help="Count what would be deleted; delete nothing.")
        parser.add_argument(
            "--environment",
            action="append",
            dest="environments",
            metavar="SLUG",
            help="Only this environment (repeatable).",
        )
        parser.add_argument(
            "--batch-size", type=int, default=DEFAULT_BATCH_SIZE, help="Rows per statement (default 1000)."
        )
        parser.add_argument(
            "--budget",
            type=float,
            default=600.0,
            help="Stop after this many seconds; run again to continue (default 600).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        if options["batch_size"] < 1:
            self.stderr.write("--batch-size must be at least 1")
            raise SystemExit(2)
        run = prune(
            environments=options["environments"],
            dry_run=options["dry_run"],
            batch_size=options["batch_size"],
            budget_seconds=options["budget"],
        )
        verb = "would delete" if run.dry_run else "deleted"
        if not run.counts:
            self.stdout.write(f"Nothing to prune{' (dry run)' if run.dry_run else ''}.")
        for key, rows in sorted(run.counts.items()):
            environment, label = key.split(":", 1)
            self.stdout.write(f"{environment}: {verb} {rows} {label}")
        if run.dry_run:
            self.stdout.write(
                "Dry run: the counts are the top-level rows; their step runs, attempts and callbacks go with them."
            )
        else:
            self.stdout.write(f"{len(run.statements)} statement(s).")
        if not run.finished:
            self.stdout.write("Budget spent before everything due was pruned: run again to continue.")
        if run.failed:
            self.stderr.write(f"Failed (see the log): {', '.join(run.failed)}")
            raise SystemExit(1)
