"""Sending one message to each of a subscriber's endpoints (push devices, chat webhooks)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from apps.delivery.providers.base import ErrorKind, ProviderError, SendResult, heartbeat
from apps.subscribers.selectors import devices_for, devices_for_subscribers

if TYPE_CHECKING:
    from apps.delivery.models import Message
    from apps.subscribers.models import Device

# A push service or chat webhook that says the endpoint is gone: remove it from the subscriber.
GONE_STATUSES = frozenset({404, 410})


@dataclass(frozen=True)
class Destination:
    url: str = ""
    token: str = ""
    keys: dict[str, Any] = field(default_factory=dict)
    device_id: int | None = None  # None: the integration's own destination, never removed


# Devices of the subscribers of a delivery batch, loaded at once: {(provider, subscriber id): devices}.
_prefetched: ContextVar[dict[tuple[str, int], list[Device]] | None] = ContextVar("clarion_devices", default=None)


@contextmanager
def prefetched_devices(messages: Sequence[Message], provider: str) -> Iterator[None]:
    """Load the devices of every subscriber of ``messages`` for ``provider`` in one query, for
    ``subscriber_devices`` inside the block (a delivery batch)."""
    ids = sorted({m.subscriber_id for m in messages if m.subscriber_id})
    if not ids:
        yield
        return
    found = devices_for_subscribers(subscriber_ids=ids, providers=[provider])
    cache = dict(_prefetched.get() or {})
    cache.update({(provider, pk): found.get(pk, []) for pk in ids})
    token = _prefetched.set(cache)
    try:
        yield
    finally:
        _prefetched.reset(token)


def subscriber_devices(message: Message, provider: str) -> list[Device]:
    """The message's subscriber's devices of ``provider`` (from the batch's prefetch when there is one)."""
    if not message.subscriber_id:
        return []
    cached = (_prefetched.get() or {}).get((provider, message.subscriber_id))
    if cached is not None:
        return cached
    return devices_for(subscriber_id=message.subscriber_id, providers=[provider])


class DeadDestination(ProviderError):
    """The endpoint no longer exists (HTTP 404/410, FCM UNREGISTERED)."""

    def __init__(self, message: str, **kwargs: Any) -> None:
        kwargs.setdefault("kind", ErrorKind.INVALID_ADDRESS)
        super().__init__(message, **kwargs)


def send_to_each(destinations: list[Destination], send_one: Callable[[Destination], dict[str, Any]]) -> SendResult:
    """Send to every destination. Success when at least one accepted; dead devices are reported.

    When none accepted, raise the error that decides what happens next: one in doubt if any (a
    device may have it), else a retryable one (so the whole message is retried), else the first
    terminal one. Between destinations the message's heartbeat is refreshed; if the message is no
    longer this worker's, the remaining destinations are left alone.
    """
    results: list[dict[str, Any]] = []
    errors: list[ProviderError] = []
    dead: list[int] = []
    provider_ids: list[str] = []
    tried = 0
    for destination in destinations:
        if tried and not heartbeat():
            break
        tried += 1
        try:
            outcome = send_one(destination)
        except ProviderError as exc:
            gone = isinstance(exc, DeadDestination) or exc.status_code in GONE_STATUSES
            if gone and destination.device_id is not None:
                dead.append(destination.device_id)
            errors.append(exc)
            results.append({"device": destination.device_id, "error": str(exc)[:300], "status_code": exc.status_code})
            continue
        results.append({"device": destination.device_id, **outcome})
        if outcome.get("id"):
            provider_ids.append(str(outcome["id"]))
    if len(errors) < tried:
        return SendResult(
            provider_message_id=",".join(provider_ids)[:255],
            response={"destinations": results},
            status_code=200,
            dead_devices=tuple(dead),
        )
    doubtful = [e for e in errors if e.in_doubt]
    retryable = [e for e in errors if e.retryable]
    chosen = doubtful[0] if doubtful else retryable[0] if retryable else errors[0]
    if not retryable and dead and len(dead) == len(destinations):
        chosen = ProviderError(
            f"every endpoint of the subscriber is gone: {errors[0]}",
            kind=ErrorKind.INVALID_ADDRESS,
            status_code=errors[0].status_code,
        )
    chosen.response = {**chosen.response, "destinations": results}
    chosen.dead_devices = tuple(dead)
    raise chosen
