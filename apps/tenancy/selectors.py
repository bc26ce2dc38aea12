from __future__ import annotations

from apps.tenancy.models import ApiKey
from apps.tenancy.services import hash_key


def api_key_for_raw(*, raw_key: str, kind: str) -> ApiKey | None:
    """The active key of that kind matching ``raw_key`` (looked up by hash, never by value)."""
    if not raw_key or len(raw_key) > 200:
        return None
    # key_hash is unique: no ORDER BY (``first()`` adds one, and compiling it was a tenth of a
    # trigger request's CPU).
    keys = ApiKey.objects.select_related("environment").filter(
        key_hash=hash_key(raw_key), kind=kind, revoked_at__isnull=True
    )[:1]
    return next(iter(keys), None)
