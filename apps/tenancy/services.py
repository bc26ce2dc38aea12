from __future__ import annotations

import hashlib
import html
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.db import transaction
from django.db.models import F, Q
from django.utils import timezone
from django.utils.text import slugify

from apps.tenancy.models import ApiKey, Environment, Project, _new_inbox_secret

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


def environment_inbox_sessions_revoke(*, environment_id: int, reason: str) -> int:
    """End every open inbox session of the environment: bump its session version (tokens carry
    the version they were issued under) and, after commit, close its open sockets. Returns the
    new version. Widgets open a new session by themselves (with a key and HMAC that still work)."""
    # Imported here: the inbox app builds on tenancy (tenancy.auth is loaded with DRF's settings).
    from apps.inbox.realtime import publish_sessions_revoked

    Environment.objects.filter(pk=environment_id).update(inbox_session_version=F("inbox_session_version") + 1)
    version = Environment.objects.filter(pk=environment_id).values_list("inbox_session_version", flat=True).get()
    transaction.on_commit(
        lambda: publish_sessions_revoked(environment_id=environment_id, version=version, reason=reason)
    )
    return version


# ``ApiKey.last_used_at`` is precise to this: a key in constant use costs one UPDATE a minute.
KEY_USE_RECORD_SECONDS = 60


def api_key_mark_used(*, api_key: ApiKey, now: datetime) -> bool:
    """Record that ``api_key`` (as just loaded by the caller) was used at ``now``, at most once a minute.

    The loaded row says when it was last written, so a key used within the minute costs nothing
    more. Otherwise one conditional UPDATE: concurrent requests (here or in other processes) all
    try, and the condition lets exactly one of them write. Returns whether this call wrote."""
    stale_before = now - timedelta(seconds=KEY_USE_RECORD_SECONDS)
    if api_key.last_used_at is not None and api_key.last_used_at >= stale_before:
        return False
    written = (
        ApiKey.objects.filter(pk=api_key.pk)
        .filter(Q(last_used_at__isnull=True) | Q(last_used_at__lt=stale_before))
        .update(last_used_at=now)
    )
    if written:
        api_key.last_used_at = now
    return bool(written)


@transaction.atomic
def api_key_revoke(*, api_key: ApiKey) -> ApiKey:
    """Revoke the key. Any key ends the environment's inbox sessions: a publishable key opened
    them, and a secret key can mint inbox tokens (``POST /api/v1/inbox/tokens``)."""
    if api_key.revoked_at is None:
        api_key.revoked_at = timezone.now()
        api_key.save(update_fields=["revoked_at"])
        environment_inbox_sessions_revoke(environment_id=api_key.environment_id, reason="api_key_revoked")
    return api_key


@transaction.atomic
def environment_inbox_secret_rotate(*, environment: Environment) -> Environment:
    """A new inbox HMAC secret: subscriber hashes made with the old one stop opening sessions,
    and the sessions they opened end now. The customer's backend must sign with the new one."""
    environment.inbox_hmac_secret = _new_inbox_secret()
    environment.save(update_fields=["inbox_hmac_secret"])
    environment.inbox_session_version = environment_inbox_sessions_revoke(
        environment_id=environment.pk, reason="inbox_secret_rotated"
    )
    return environment


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
    environment_default_layout_create(environment=environment)
    return CreatedEnvironment(
        environment=environment,
        secret_key=api_key_create(environment=environment, kind=ApiKey.Kind.SECRET, name="Default secret key"),
        publishable_key=api_key_create(
            environment=environment, kind=ApiKey.Kind.PUBLISHABLE, name="Default publishable key"
        ),
    )


_HEX_COLOR = re.compile(r"^#(?:[0-9a-fA-F]{3}|[0-9a-fA-F]{6})$")
NEUTRAL_FOOTER = {
    "en": "You receive this email from {product}.",
    "fr": "Vous recevez cet e-mail de la part de {product}.",
    "de": "Sie erhalten diese E-Mail von {product}.",
}


def _layout_text(value: str) -> str:
    """Plain text made safe inside a layout, which is HTML and sandboxed Jinja: no markup, no tags."""
    return html.escape(value).replace("{", "&#123;").replace("}", "&#125;")


def environment_default_layout_create(*, environment: Environment) -> None:
    """Give a new environment a neutral default email layout with its own branding (``branding``'s
    product name, logo and colour, else the project's name): its emails never borrow another
    environment's header or footer, and always carry the preference and unsubscribe links."""
    # Imported here: the templates app builds on tenancy (EmailLayout belongs to an Environment).
    from apps.templates.rendering import supported_languages
    from apps.templates.services import layout_upsert

    branding = environment.branding if isinstance(environment.branding, dict) else {}
    product = str(branding.get("product_name") or branding.get("name") or environment.project.name)[:120]
    color = str(branding.get("primary_color") or branding.get("color") or "")
    logo = str(branding.get("logo_url") or branding.get("logo") or "")
    languages = supported_languages()
    layout_upsert(
        environment=environment,
        key="default",
        name="Default layout",
        header={"en": f"<strong>{_layout_text(product)}</strong>"},
        footer={
            language: text.format(product=_layout_text(product))
            for language, text in NEUTRAL_FOOTER.items()
            if language in languages
        },
        brand_color=color if _HEX_COLOR.match(color) else None,
        logo_url=logo if logo.startswith(("https://", "http://")) and len(logo) <= 2000 else None,
        show_unsubscribe=True,
        is_default=True,
    )
