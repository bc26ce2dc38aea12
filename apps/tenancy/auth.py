"""API-key authentication for the server API (``Authorization: Bearer sk_...``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from django.utils import timezone
from rest_framework import authentication, exceptions, permissions
from rest_framework.request import Request

from apps.tenancy import keycache
from apps.tenancy.models import ApiKey, Environment
from apps.tenancy.services import api_key_mark_used


@dataclass(frozen=True)
class EnvironmentPrincipal:
    """The caller of the server API: an environment, acting through one key."""

    # Which rate limits count this caller's requests (apps.core.throttling).
    throttle_kind: ClassVar[str] = "server"

    environment: Environment
    api_key_id: int
    is_authenticated: bool = True
    is_anonymous: bool = False

    @property
    def pk(self) -> str:
        return f"env:{self.environment.pk}"

    @property
    def environment_id(self) -> int:
        return self.environment.pk


class SecretKeyAuthentication(authentication.BaseAuthentication):
    keyword = "Bearer"
    # The clock ``last_used_at`` is written with (tests replace it).
    now: ClassVar[Any] = staticmethod(timezone.now)

    def authenticate(self, request: Request) -> tuple[EnvironmentPrincipal, ApiKey] | None:
        header = authentication.get_authorization_header(request).decode("latin-1")
        if not header:
            return None
        parts = header.split()
        if len(parts) != 2 or parts[0] != self.keyword:
            raise exceptions.AuthenticationFailed("Use the header 'Authorization: Bearer sk_...'.")
        raw = parts[1]
        if not raw.startswith("sk_"):
            raise exceptions.AuthenticationFailed("The server API takes a secret key (sk_...).")
        api_key = keycache.secret_key_for_raw(raw)  # remembered for a few seconds (keycache's docstring)
        if api_key is None:
            raise exceptions.AuthenticationFailed("The API key is invalid or has been revoked.")
        now = self.now()
        api_key_mark_used(api_key=api_key, now=now)
        keycache.note_used(api_key, now)
        return EnvironmentPrincipal(environment=api_key.environment, api_key_id=api_key.pk), api_key

    def authenticate_header(self, request: Request) -> str:
        return 'Bearer realm="clarion"'


class HasEnvironment(permissions.BasePermission):
    def has_permission(self, request: Request, view: Any) -> bool:
        return isinstance(request.user, EnvironmentPrincipal)


def request_environment(request: Request) -> Environment:
    principal = request.user
    if not isinstance(principal, EnvironmentPrincipal):
        raise exceptions.NotAuthenticated()
    return principal.environment
