"""Inbox session tokens and the DRF authentication that reads them.

An inbox token is a short-lived, signed credential for one subscriber of one environment:
``django.core.signing`` with a purpose-specific salt over
``{"e": environment_id, "s": subscriber_pk, "v": session_version}``. Reading it needs no database
query.

Revocation: ``v`` is the environment's ``inbox_session_version`` when the token was issued.
Revoking a key of the environment or rotating its HMAC secret bumps that version, and deleting
the subscriber removes its row, so ``inbox_session_current`` (one indexed query) fails from then
on; open sockets are closed with ``4401`` through the channel layer
(``apps.inbox.realtime.publish_sessions_revoked``). So that neither a REST call nor a websocket
handshake pays that query every time, each process remembers the sessions it has checked (or
issued) for ``SESSION_CHECK_SECONDS``: a revocation applies at once in the process that made it
(it forgets the environment's or subscriber's sessions) and within that time in the others. A
socket let in from that memory is checked against the database once when it runs out
(apps.inbox.consumers), so it cannot outlive a revocation it was not yet listening for.

Inbox endpoints accept only these tokens (never ``sk_`` / ``pk_`` keys) and the server API
(``SecretKeyAuthentication``) accepts only ``sk_`` keys, so neither credential works on the
other surface.
"""

from __future__ import annotations

import hashlib
import hmac
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, ClassVar, Protocol

from django.conf import settings
from django.core import signing
from django.utils import timezone
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework import authentication, exceptions, permissions
from rest_framework.request import Request

from apps.subscribers.models import Subscriber

INBOX_TOKEN_SALT = "clarion.inbox.session"
SESSION_CHECK_SECONDS = 10.0
_SESSIONS_REMEMBERED_MAX = 100_000

# (environment_id, subscriber_pk, session_version) -> _clock() until which it stands
_sessions: dict[tuple[int, int, int], float] = {}
_clock = time.monotonic  # tests replace it
_sessions_lock = threading.Lock()


class SubscriberRef(Protocol):
    """Anything naming one subscriber of one environment: a ``Subscriber`` or an ``InboxPrincipal``."""

    @property
    def pk(self) -> Any: ...

    @property
    def environment_id(self) -> Any: ...


@dataclass(frozen=True)
class InboxPrincipal:
    """The caller of the inbox API: one subscriber, proven by a signed session token."""

    # Which rate limits count this caller's requests (apps.core.throttling).
    throttle_kind: ClassVar[str] = "inbox"

    environment_id: int
    subscriber_pk: int
    session_version: int = 1
    is_authenticated: bool = True
    is_anonymous: bool = False

    @property
    def pk(self) -> int:
        return self.subscriber_pk


def subscriber_hash_compute(*, secret: str, subscriber_id: str) -> str:
    """The subscriber proof: hex HMAC-SHA256(environment.inbox_hmac_secret, subscriber_id)."""
    return hmac.new(secret.encode(), subscriber_id.encode(), hashlib.sha256).hexdigest()


def inbox_token_max_age() -> int:
    return int(settings.CLARION["INBOX_TOKEN_MAX_AGE"])


@dataclass(frozen=True)
class InboxTokenClaims:
    environment_id: int
    subscriber_pk: int
    session_version: int


def inbox_token_issue(*, environment: Any, subscriber: Any, ttl_seconds: int | None = None) -> str:
    """A signed session token for ``subscriber``: valid for ``INBOX_TOKEN_MAX_AGE`` seconds, or for
    ``ttl_seconds`` when shorter (a server-minted token carries its own expiry, ``x``). It carries
    the environment's current session version (``v``): read from ``environment``, no query."""
    payload: dict[str, int] = {"e": environment.pk, "s": subscriber.pk, "v": environment.inbox_session_version}
    _remember((environment.pk, subscriber.pk, environment.inbox_session_version))
    if ttl_seconds is not None and ttl_seconds < inbox_token_max_age():
        payload["x"] = int(time.time()) + max(1, int(ttl_seconds))
    return signing.dumps(payload, salt=INBOX_TOKEN_SALT)


def inbox_token_expires_at(*, issued_at: datetime | None = None, ttl_seconds: int | None = None) -> datetime:
    seconds = inbox_token_max_age() if ttl_seconds is None else min(int(ttl_seconds), inbox_token_max_age())
    return (issued_at or timezone.now()) + timedelta(seconds=seconds)


def inbox_token_claims(token: str | None) -> InboxTokenClaims | None:
    """The claims of a validly signed, unexpired token; ``None`` otherwise. No DB: whether the
    session was revoked since is ``inbox_session_current``'s question."""
    if not token or not isinstance(token, str) or len(token) > 500:
        return None
    try:
        data = signing.loads(token, salt=INBOX_TOKEN_SALT, max_age=inbox_token_max_age())
    except (signing.BadSignature, ValueError, TypeError):  # SignatureExpired is a BadSignature
        return None
    if not isinstance(data, dict):
        return None
    environment_id, subscriber_pk, expires = data.get("e"), data.get("s"), data.get("x")
    # Tokens issued before versions existed carry none: they stand for the first version.
    version = data.get("v", 1)
    if type(environment_id) is not int or type(subscriber_pk) is not int or type(version) is not int:
        return None
    if expires is not None and (type(expires) is not int or expires < time.time()):
        return None
    return InboxTokenClaims(environment_id=environment_id, subscriber_pk=subscriber_pk, session_version=version)


def inbox_token_read(token: str | None) -> tuple[int, int] | None:
    """``(environment_id, subscriber_pk)`` for a valid, unexpired token; ``None`` otherwise. No DB."""
    claims = inbox_token_claims(token)
    return None if claims is None else (claims.environment_id, claims.subscriber_pk)


def _remember(key: tuple[int, int, int]) -> None:
    now = _clock()
    with _sessions_lock:
        if len(_sessions) >= _SESSIONS_REMEMBERED_MAX:
            for stale in [k for k, until in _sessions.items() if until <= now]:
                del _sessions[stale]
            if len(_sessions) >= _SESSIONS_REMEMBERED_MAX:
                _sessions.clear()
        _sessions[key] = now + SESSION_CHECK_SECONDS


def inbox_session_remembered(*, environment_id: int, subscriber_pk: int, session_version: int) -> float | None:
    """For how many more seconds this process knows the session stands; ``None`` if it does not.
    No database."""
    left = _sessions.get((environment_id, subscriber_pk, session_version), 0.0) - _clock()
    return left if left > 0 else None


def inbox_session_current(
    *, environment_id: int, subscriber_pk: int, session_version: int, remembered: bool = True
) -> bool:
    """Whether a session still stands: its subscriber exists and its environment's session
    version is the token's (no key revoked, no HMAC secret rotated since). One indexed query,
    unless this process checked or issued the session within ``SESSION_CHECK_SECONDS`` and
    ``remembered`` allows that answer."""
    key = (environment_id, subscriber_pk, session_version)
    if remembered and inbox_session_remembered(
        environment_id=environment_id, subscriber_pk=subscriber_pk, session_version=session_version
    ):
        return True
    current = Subscriber.objects.filter(
        pk=subscriber_pk, environment_id=environment_id, environment__inbox_session_version=session_version
    ).exists()
    if current:
        _remember(key)
    return current


def inbox_sessions_forget(*, environment_id: int | None = None, subscriber_pk: int | None = None) -> None:
    """Forget the remembered sessions of an environment (or of one of its subscribers, or all):
    after a revocation is committed, and in tests."""
    with _sessions_lock:
        if environment_id is None:
            _sessions.clear()
            return
        for key in [k for k in _sessions if k[0] == environment_id and subscriber_pk in (None, k[1])]:
            del _sessions[key]


class InboxTokenAuthentication(authentication.BaseAuthentication):
    """``Authorization: Bearer <inbox token>`` from ``POST /api/v1/inbox/session``."""

    keyword = "Bearer"

    def authenticate(self, request: Request) -> tuple[InboxPrincipal, None] | None:
        header = authentication.get_authorization_header(request).decode("latin-1")
        if not header:
            return None
        parts = header.split()
        if len(parts) != 2 or parts[0] != self.keyword:
            raise exceptions.AuthenticationFailed("Use the header 'Authorization: Bearer <inbox session token>'.")
        raw = parts[1]
        if raw.startswith(("sk_", "pk_")):
            raise exceptions.AuthenticationFailed(
                "The inbox API takes an inbox session token from POST /api/v1/inbox/session, not an API key."
            )
        claims = inbox_token_claims(raw)
        if claims is None:
            raise exceptions.AuthenticationFailed("The inbox session token is invalid or has expired.")
        if not inbox_session_current(
            environment_id=claims.environment_id,
            subscriber_pk=claims.subscriber_pk,
            session_version=claims.session_version,
        ):
            raise exceptions.AuthenticationFailed("The inbox session was revoked. Open a new session.")
        principal = InboxPrincipal(
            environment_id=claims.environment_id,
            subscriber_pk=claims.subscriber_pk,
            session_version=claims.session_version,
        )
        return principal, None

    def authenticate_header(self, request: Request) -> str:
        return 'Bearer realm="clarion-inbox"'


class IsInboxSubscriber(permissions.BasePermission):
    def has_permission(self, request: Request, view: Any) -> bool:
        return isinstance(request.user, InboxPrincipal)


def request_inbox_principal(request: Request) -> InboxPrincipal:
    principal = request.user
    if not isinstance(principal, InboxPrincipal):
        raise exceptions.NotAuthenticated()
    return principal


class InboxTokenAuthenticationScheme(OpenApiAuthenticationExtension):
    """Documents the inbox token for drf-spectacular."""

    target_class = "apps.inbox.auth.InboxTokenAuthentication"
    name = "inboxToken"

    def get_security_definition(self, auto_schema: Any) -> dict[str, Any]:
        return {
            "type": "http",
            "scheme": "bearer",
            "description": "Inbox session token from POST /api/v1/inbox/session (never an sk_/pk_ key).",
        }
