"""Delivery's part of retention (``apps.core.retention``): attempts, callbacks, settled messages.

A message is *settled* once Clarion will do nothing more with it: sent (the provider has it; only
callbacks may still move it), delivered, engaged with, bounced or failed. Queued, sending and in
doubt messages are never pruned, nor the messages of a run that is still live (an escalation may
still read their state), nor a message an inbox row still points at (the inbox pruner, which runs
first, lets go of those). A callback that arrives for a pruned message is stored without one.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.db.models import Q, QuerySet

from apps.core.retention import PruneRun, RetentionPolicy, clear_all, delete_all, old_rows_bound, prune_batches
from apps.delivery.models import DeliveryAttempt, Message, MessageEvent, Suppression

SETTLED_STATUSES = (Message.Status.SENT, *Message.TERMINAL_STATUSES)
# Run.ACTIVE_STATUSES, spelled out: delivery filters through its own foreign key to the run and
# does not import the workflows app.
LIVE_RUN_STATUSES = ("pending", "running", "waiting")


def prunable_messages(policy: RetentionPolicy, now: datetime) -> QuerySet[Message]:
    """The environment's settled messages whose retention is over (none when kept forever)."""
    cutoff = policy.cutoff(policy.messages_days, now)
    if cutoff is None:
        return Message.objects.none()
    messages = Message.objects.filter(
        Q(run__isnull=True) | ~Q(run__status__in=LIVE_RUN_STATUSES),
        environment_id=policy.environment_id,
        status__in=SETTLED_STATUSES,
        updated_at__lt=cutoff,
    )
    bound = old_rows_bound(Message, "created_at", cutoff)  # a message changes after it is created
    return messages if bound is None else messages.filter(pk__lt=bound)


def _delete_message_children(run: PruneRun, message_ids: list[Any]) -> None:
    delete_all(run, DeliveryAttempt.objects.filter(message_id__in=message_ids))
    delete_all(run, MessageEvent.objects.filter(message_id__in=message_ids))
    clear_all(run, Suppression.objects.filter(message_id__in=message_ids), "message")


def prune(policy: RetentionPolicy, run: PruneRun) -> None:
    delivery_cutoff = policy.cutoff(policy.delivery_days, run.now)
    if delivery_cutoff is not None:
        # The audit of sends that are over; a message still being sent keeps its attempts.
        prune_batches(
            run,
            DeliveryAttempt.objects.filter(
                message__environment_id=policy.environment_id,
                message__status__in=SETTLED_STATUSES,
                created_at__lt=delivery_cutoff,
            ),
            written_before=("created_at", delivery_cutoff),
        )
        prune_batches(
            run,
            MessageEvent.objects.filter(environment_id=policy.environment_id, received_at__lt=delivery_cutoff),
            written_before=("received_at", delivery_cutoff),
        )
    messages = prunable_messages(policy, run.now)
    if not run.dry_run:  # a dry run detached nothing: count them all
        messages = messages.filter(inbox_message__isnull=True)
    prune_batches(run, messages, lambda ids: _delete_message_children(run, ids))
