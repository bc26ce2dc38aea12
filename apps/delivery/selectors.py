"""Reads for delivery: where a subscriber can be reached."""

from __future__ import annotations

from collections.abc import Sequence

from apps.subscribers.models import Subscriber


def reachable_channels(*, subscribers: Sequence[Subscriber]) -> dict[int, set[str]]:
    """Subscriber pk → the channels that subscriber has a usable address for.

    The engine calls this once per chunk of runs and skips (with reason ``no_address``) a channel
    step whose channel is missing. In-app and webhook need no address of the subscriber's own.
    """
    reachable: dict[int, set[str]] = {}
    for subscriber in subscribers:
        channels = {"in_app", "webhook"}
        if subscriber.email:
            channels.add("email")
        if subscriber.phone:
            channels.add("sms")
        reachable[subscriber.pk] = channels
    return reachable
