"""Inbox's part of retention (``apps.core.retention``).

An inbox message is kept until the subscriber archived or deleted it, and then for the
environment's ``retention_inbox_days``; unread and read messages stay. Before delivery prunes a
settled message, the inbox row that showed it lets go of it (``message`` becomes empty): the
notification stays in the subscriber's inbox.
"""

from __future__ import annotations

from django.db.models import Q

from apps.core.retention import PruneRun, RetentionPolicy, clear_all, prune_batches
from apps.delivery.retention import prunable_messages
from apps.inbox.models import InboxMessage

DETACH_ROWS_PER_TICK = 20_000


def prune(policy: RetentionPolicy, run: PruneRun) -> None:
    cutoff = policy.cutoff(policy.inbox_days, run.now)
    if cutoff is not None:
        prune_batches(
            run,
            InboxMessage.objects.filter(
                Q(archived_at__lt=cutoff) | Q(deleted_at__lt=cutoff), environment_id=policy.environment_id
            ),
            written_before=("created_at", cutoff),
        )
    if run.dry_run:
        return
    # Let go of in-app messages delivery is about to prune, batch by batch from the oldest, as
    # many per tick as delivery prunes in the same tick (the rest wait for the next one).
    attached = (
        prunable_messages(policy, run.now)
        .filter(channel="in_app", inbox_message__isnull=False)
        .order_by("pk")
        .values_list("pk", flat=True)
    )
    last = 0
    for _ in range(max(1, DETACH_ROWS_PER_TICK // run.batch_size)):
        if run.out_of_time():
            break
        message_ids = list(attached.filter(pk__gt=last)[: run.batch_size])
        if not message_ids:
            break
        clear_all(run, InboxMessage.objects.filter(message_id__in=message_ids), "message")
        last = message_ids[-1]
