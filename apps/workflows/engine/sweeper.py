"""The sweeper: every minute, re-drive what a lost task left behind (and what the ticker would)."""

from __future__ import annotations

import logging
from datetime import timedelta

from django.conf import settings
from django.utils import timezone

from apps.core.tasks import enqueue
from apps.workflows import digests
from apps.workflows.engine.category_digests import category_digests_send
from apps.workflows.engine.chunks import DELIVER_TASK
from apps.workflows.engine.fanout import chunk_size
from apps.workflows.limits import limit_hits_prune
from apps.workflows.models import DigestBucket

logger = logging.getLogger(__name__)

LIMIT_HIT_RETENTION_DAYS = 400


def sweep() -> dict[str, int]:
    """Re-drive whatever should be moving and is not: lost tasks, and (as every tick does) due
    delays, retries and dead workers' work, for deployments that run no ticker."""
    from apps.workflows.ticker import tick

    now = timezone.now()
    stall = now - timedelta(seconds=settings.CLARION["STALL_SECONDS"])
    ticked = tick(now=now)
    counts = {
        "events": ticked["events_orphaned"] + ticked["events_stalled"],
        "runs": ticked["runs_due"] + ticked["runs_orphaned"] + ticked["runs_stalled"],
        "messages": ticked["messages"],
        "digests": 0,
    }

    digests.digests_expire_leaderless(now=now)
    category_due = list(
        DigestBucket.objects.filter(status__in=digests.ACTIVE, workflow__isnull=True, closes_at__lte=now).values_list(
            "pk", flat=True
        )[:1000]
    )
    counts["digests"] = category_digests_send(bucket_pks=category_due)
    limit_hits_prune(older_than=now - timedelta(days=LIMIT_HIT_RETENTION_DAYS))

    from apps.delivery.services import messages_requeue_stalled

    message_ids = messages_requeue_stalled(stalled_before=stall)
    for start in range(0, len(message_ids), chunk_size()):
        enqueue(DELIVER_TASK, message_ids[start : start + chunk_size()])
    counts["messages"] += len(message_ids)
    if any(counts.values()):
        logger.info("sweep re-drove %s", counts)
    return counts
