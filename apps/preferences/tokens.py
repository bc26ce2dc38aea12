"""Signed tokens for the links in messages: the hosted preference center and one-click unsubscribe.

A token is ``django.core.signing.dumps`` of ``{"e": environment pk, "s": subscriber pk, ...}``
with a salt per purpose, so a preference-center token cannot unsubscribe anyone and neither
opens an inbox session (``apps.inbox.auth`` uses a salt of its own). Tokens carry a timestamp;
links older than ``CLARION["PREFERENCE_LINK_MAX_AGE"]`` seconds (default one year: emails sit in
mailboxes for a long time) are refused as expired. Rotating ``SECRET_KEY`` (or adding the old
key to ``SECRET_KEY_FALLBACKS`` while links age out) invalidates every link.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.core import signing

from apps.subscribers.models import Subscriber

PAGE_SALT = "clarion.preferences.page"
UNSUBSCRIBE_SALT = "clarion.preferences.unsubscribe"
SALTS = {"page": PAGE_SALT, "unsubscribe": UNSUBSCRIBE_SALT}
DEFAULT_MAX_AGE = 365 * 24 * 60 * 60


class TokenError(Exception):
    """The link can't be used; ``reason`` is ``invalid``, ``expired`` or ``unknown_subscriber``."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class LinkToken:
    environment_id: int
    subscriber_pk: int
    category_key: str | None = None  # unsubscribe: None means everything non-critical
    channel: str | None = None  # unsubscribe: the channel of that category (None: all channels)


def max_age() -> int:
    return int(getattr(settings, "CLARION", {}).get("PREFERENCE_LINK_MAX_AGE", DEFAULT_MAX_AGE))


def preference_token(*, subscriber: Subscriber) -> str:
    return signing.dumps({"e": subscriber.environment_id, "s": subscriber.pk}, salt=PAGE_SALT, compress=True)


def unsubscribe_token(*, subscriber: Subscriber, category_key: str | None, channel: str | None = "email") -> str:
    """One-click unsubscribe from ``channel`` of ``category_key``; from everything non-critical
    when ``category_key`` is None."""
    payload: dict[str, Any] = {"e": subscriber.environment_id, "s": subscriber.pk}
    if category_key:
        payload["c"] = category_key
        if channel:
            payload["ch"] = channel
    return signing.dumps(payload, salt=UNSUBSCRIBE_SALT, compress=True)


def token_read(token: str, *, purpose: str) -> LinkToken:
    """The token's content, or ``TokenError``: forged, tampered, for another purpose, or expired."""
    try:
        data = signing.loads(token, salt=SALTS[purpose], max_age=max_age())
    except signing.SignatureExpired as exc:
        raise TokenError("expired") from exc
    except (signing.BadSignature, ValueError, TypeError) as exc:
        raise TokenError("invalid") from exc
    if not isinstance(data, dict) or not isinstance(data.get("e"), int) or not isinstance(data.get("s"), int):
        raise TokenError("invalid")
    category_key = data.get("c")
    channel = data.get("ch")
    if category_key is not None and not isinstance(category_key, str):
        raise TokenError("invalid")
    if channel is not None and not isinstance(channel, str):
        raise TokenError("invalid")
    return LinkToken(environment_id=data["e"], subscriber_pk=data["s"], category_key=category_key, channel=channel)


def token_subscriber(token: str, *, purpose: str) -> tuple[LinkToken, Subscriber]:
    """Read the token and load its subscriber, scoped to the token's environment."""
    link = token_read(token, purpose=purpose)
    subscriber = (
        Subscriber.objects.select_related("environment")
        .filter(pk=link.subscriber_pk, environment_id=link.environment_id)
        .first()
    )
    if subscriber is None:
        raise TokenError("unknown_subscriber")
    return link, subscriber
