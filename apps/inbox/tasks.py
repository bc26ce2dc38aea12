"""Thin django-q2 entry points for the inbox."""

from __future__ import annotations

from apps.inbox.services import inbox_snooze_wake


def inbox_snooze_wake_task(message_id: int, seq: int) -> bool:
    return inbox_snooze_wake(message_id=message_id, seq=seq)
