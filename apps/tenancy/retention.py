"""Each environment's retention policy, for the pruning in ``apps.core.retention``."""

from __future__ import annotations

from apps.core.retention import RetentionPolicy
from apps.tenancy.models import Environment


def retention_policies(*, slugs: list[str] | None = None) -> list[RetentionPolicy]:
    """The policies of every environment (or of those slugs), in id order."""
    environments = Environment.objects.order_by("pk")
    if slugs is not None:
        environments = environments.filter(slug__in=slugs)
    return [
        RetentionPolicy(
            environment_id=env_id,
            environment_slug=slug,
            trace_days=trace,
            messages_days=messages,
            delivery_days=delivery,
            inbox_days=inbox,
        )
        for env_id, slug, trace, messages, delivery, inbox in environments.values_list(
            "pk",
            "slug",
            "retention_trace_days",
            "retention_messages_days",
            "retention_delivery_days",
            "retention_inbox_days",
        )
    ]
