"""Thin django-q2 entry points: load by id, call a service."""

from __future__ import annotations

from apps.delivery.services import messages_deliver


def deliver_messages(message_ids: list[int]) -> None:
    messages_deliver(message_ids=message_ids)
