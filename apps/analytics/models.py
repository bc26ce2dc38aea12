"""Engagement and savings counts, kept as statuses change (see docs/analytics.md).

Writers never update a shared row: each status change adds a ``Counter`` row (a delta) in the
same transaction as the change, so a crash loses or doubles nothing and hot buckets see no lock
contention. ``analytics.services.counters_fold`` moves deltas into ``Rollup`` (one row per
bucket, dimensions and metric); readers sum ``Rollup`` and the deltas not folded yet.
"""

from __future__ import annotations

from django.db import models

from apps.tenancy.models import Environment


class _Bucketed(models.Model):
    environment = models.ForeignKey(Environment, on_delete=models.CASCADE, related_name="+")
    # The start of the UTC hour in which the counted thing happened.
    bucket = models.DateTimeField()
    workflow_key = models.CharField(max_length=100, blank=True)
    category_key = models.CharField(max_length=100, blank=True)
    channel = models.CharField(max_length=20, blank=True)
    template_key = models.CharField(max_length=100, blank=True)
    # "sent", "delivered", "opened", …, "skipped:<reason>", "avoided:<lever>", "latency_open:<le>"…
    metric = models.CharField(max_length=80)
    value = models.BigIntegerField()

    class Meta:
        abstract = True

    def __str__(self) -> str:
        return f"{self.metric} {self.value:+d} at {self.bucket:%Y-%m-%d %H:00}"


class Counter(_Bucketed):
    """A delta not folded into ``Rollup`` yet. Insert-only; ``counters_fold`` deletes what it folds."""

    class Meta:
        indexes = [models.Index(fields=["environment", "bucket"], name="analytics_counter_env_idx")]


class Rollup(_Bucketed):
    """The sum of every folded delta of one bucket, set of dimensions and metric."""

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["environment", "bucket", "workflow_key", "category_key", "channel", "template_key", "metric"],
                name="uniq_analytics_rollup",
            )
        ]
        indexes = [models.Index(fields=["environment", "bucket"], name="analytics_rollup_env_idx")]
