"""Inbox session tokens and the DRF authentication that reads them.

An inbox token is a short-lived, signed, *stateless* credential for one subscriber of one
environment: ``django.core.signing`` with a purpose-specific salt over
``{"e": environment_id, "s": subscriber_pk}``. Reading it needs no database query, so the
websocket consumer and the inbox REST views authenticate for free.

Inbox endpoints accept only these tokens (never ``sk_`` / ``pk_`` keys) and the server API
(``SecretKeyAuthentication``) accepts only ``sk_`` keys, so neither credential works on the
other surface.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

from django.conf import settings
from django.core import signing
from django.utils import timezone
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework import authentication, exceptions, permissions
from rest_framework.request import Request

INBOX_TOKEN_SALT = "clarion.inbox.session"


class SubscriberRef(Protocol):
    """Anything naming one subscriber of one environment: a ``Subscriber`` or an ``InboxPrincipal``."""

    @property
    def pk(self) -> Any: ...

    @property
    def environment_id(self) -> Any: ...


@dataclass(frozen=True)
class InboxPrincipal:
    """The caller of the inbox API: one subscriber, proven by a signed session token."""

    environment_id: int
    subscriber_pk: int
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


def inbox_token_issue(*, environment: Any, subscriber: Any, ttl_seconds: int | None = None) -> str:
    """A signed session token for ``subscriber``: valid for ``INBOX_TOKEN_MAX_AGE`` seconds, or for
    ``ttl_seconds`` when shorter (a server-minted token carries its own expiry, ``x``)."""
    payload: dict[str, int] = {"e": environment.pk, "s": subscriber.pk}
    if ttl_seconds is not None and ttl_seconds < inbox_token_max_age():
        payload["x"] = int(time.time()) + max(1, int(ttl_seconds))
    return signing.dumps(payload, salt=INBOX_TOKEN_SALT)


def inbox_token_expires_at(*, issued_at: datetime | None = None, ttl_seconds: int | None = None) -> datetime:
    seconds = inbox_token_max_age() if ttl_seconds is None else min(int(ttl_seconds), inbox_token_max_age())
    return (issued_at or timezone.now()) + timedelta(seconds=seconds)


def inbox_token_read(token: str | None) -> tuple[int, int] | None:
    """``(environment_id, subscriber_pk)`` for a valid, unexpired token; ``None`` otherwise. No DB."""
    if not token or not isinstance(token, str) or len(token) > 500:
        return None
    try:
        data = signing.loads(token, salt=INBOX_TOKEN_SALT, max_age=inbox_token_max_age())
    except (signing.BadSignature, ValueError, TypeError):  # SignatureExpired is a BadSignature
        return None
    if not isinstance(data, dict):
        return None
    environment_id, subscriber_pk, expires = data.get("e"), data.get("s"), data.get("x")
    if type(environment_id) is not int or type(subscriber_pk) is not int:
        return None
    if expires is not None and (type(expires) is not int or expires < time.time()):
        return None
    return environment_id, subscriber_pk


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
        identity = inbox_token_read(raw)
        if identity is None:
            raise exceptions.AuthenticationFailed("The inbox session token is invalid or has expired.")
        environment_id, subscriber_pk = identity
        return InboxPrincipal(environment_id=environment_id, subscriber_pk=subscriber_pk), None

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
