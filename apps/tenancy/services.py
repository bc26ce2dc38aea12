from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass

from django.db import transaction
from django.utils import timezone
from django.utils.text import slugify

from apps.tenancy.models import ApiKey, Environment, Project

KEY_PREFIXES = {ApiKey.Kind.SECRET: "sk_", ApiKey.Kind.PUBLISHABLE: "pk_"}


def hash_key(raw_key: str) -> str:
    return hashlib.sha256(raw_key.encode()).hexdigest()


@dataclass(frozen=True)
class IssuedKey:
    api_key: ApiKey
    raw: str  # shown once, never stored


@dataclass(frozen=True)
class CreatedEnvironment:
    environment: Environment
    secret_key: IssuedKey
    publishable_key: IssuedKey


def api_key_create(*, environment: Environment, kind: str, name: str = "") -> IssuedKey:
    raw = KEY_PREFIXES[ApiKey.Kind(kind)] + secrets.token_urlsafe(32)
    api_key = ApiKey.objects.create(
        environment=environment,
        kind=kind,
        name=name,
        prefix=raw[:10],
        last_four=raw[-4:],
        key_hash=hash_key(raw),
    )
    return IssuedKey(api_key=api_key, raw=raw)


def api_key_revoke(*, api_key: ApiKey) -> ApiKey:
    if api_key.revoked_at is None:
        api_key.revoked_at = timezone.now()
        api_key.save(update_fields=["revoked_at"])
    return api_key


def _unique_slug(model: type[Project] | type[Environment], base: str) -> str:
    root = slugify(base)[:80] or "env"
    slug, n = root, 1
    while model.objects.filter(slug=slug).exists():
        n += 1
        slug = f"{root}-{n}"
    return slug


@transaction.atomic
def environment_create(*, name: str, project_name: str | None = None) -> CreatedEnvironment:
    project_name = project_name or name
    project = Project.objects.filter(name=project_name).first()
    if project is None:
        project = Project.objects.create(name=project_name, slug=_unique_slug(Project, project_name))
    environment = Environment.objects.create(
        project=project, name=name, slug=_unique_slug(Environment, f"{project_name}-{name}")
    )
    return CreatedEnvironment(
        environment=environment,
        secret_key=api_key_create(environment=environment, kind=ApiKey.Kind.SECRET, name="Default secret key"),
        publishable_key=api_key_create(
            environment=environment, kind=ApiKey.Kind.PUBLISHABLE, name="Default publishable key"
        ),
    )
