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
    if run.dry_run or run.out_of_time():
        return
    # One statement per batch, each its own transaction.
    clear_all(
        run,
        InboxMessage.objects.filter(
            environment_id=policy.environment_id, message_id__in=prunable_messages(policy, run.now).values("pk")
        ),
        "message",
        within_budget=True,
    )
