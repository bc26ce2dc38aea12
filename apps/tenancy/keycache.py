"""Secret keys this process authenticated recently: a burst of server-API calls with one key pays
its lookup (a query joining the key and its environment) once per ``CLARION["API_KEY_CACHE_SECONDS"]``
(``CLARION_API_KEY_CACHE_SECONDS``, default 10 s; 0 turns the cache off).

Revocation and changes: the process that revokes, changes or deletes a key or an environment
forgets every remembered key when its transaction commits (``post_save`` / ``post_delete``), so
there a revoked key is refused by the next request. Other processes refuse it once their entry
runs out: within ``API_KEY_CACHE_SECONDS`` of the revocation (docs/security.md). Only successful
lookups are remembered: a new key works at once, an unknown key is looked up every time.

Each request gets its own ``ApiKey`` and ``Environment`` instances, built from the remembered
column values (JSON values copied), so nothing a view does to them reaches another request.
"""

from __future__ import annotations

import copy
import threading
import time
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models.signals import post_delete, post_save

from apps.tenancy.models import ApiKey, Environment
from apps.tenancy.selectors import api_key_for_raw
from apps.tenancy.services import KEY_USE_RECORD_SECONDS, hash_key

MAX_ENTRIES = 4096
_KEY_FIELDS = [f.attname for f in ApiKey._meta.concrete_fields]
_ENVIRONMENT_FIELDS = [f.attname for f in Environment._meta.concrete_fields]
_LAST_USED = _KEY_FIELDS.index("last_used_at")


def _copy(value: Any) -> Any:
    """JSON values (lists, dicts) are mutable: every holder gets its own."""
    return copy.deepcopy(value) if isinstance(value, dict | list) else value


class _Entry:
    __slots__ = ("db", "environment", "expires", "key")

    def __init__(self, api_key: ApiKey, expires: float) -> None:
        self.db = api_key._state.db or "default"
        self.key = [getattr(api_key, name) for name in _KEY_FIELDS]
        self.environment = [_copy(getattr(api_key.environment, name)) for name in _ENVIRONMENT_FIELDS]
        self.expires = expires

    def build(self) -> ApiKey:
        api_key = ApiKey.from_db(self.db, _KEY_FIELDS, list(self.key))
        values = [_copy(value) for value in self.environment]
        api_key.environment = Environment.from_db(self.db, _ENVIRONMENT_FIELDS, values)
        return api_key


_entries: dict[str, _Entry] = {}
_lock = threading.Lock()
clock = time.monotonic  # tests replace it


def forget_all() -> None:
    with _lock:
        _entries.clear()


def secret_key_for_raw(raw_key: str) -> ApiKey | None:
    """The active secret key matching ``raw_key`` (as ``api_key_for_raw``), from this process's
    memory when it was looked up less than ``API_KEY_CACHE_SECONDS`` ago."""
    ttl = float(settings.CLARION["API_KEY_CACHE_SECONDS"])
    if ttl <= 0 or not raw_key or len(raw_key) > 200:
        return api_key_for_raw(raw_key=raw_key, kind=ApiKey.Kind.SECRET)
    digest = hash_key(raw_key)
    entry = _entries.get(digest)
    now = clock()
    if entry is not None and entry.expires > now:
        return entry.build()
    api_key = api_key_for_raw(raw_key=raw_key, kind=ApiKey.Kind.SECRET)
    with _lock:
        if api_key is None:
            _entries.pop(digest, None)
        else:
            if len(_entries) >= MAX_ENTRIES:
                _entries.clear()
            _entries[digest] = _Entry(api_key, now + ttl)
    return api_key


def note_used(api_key: ApiKey, now: datetime) -> None:
    """After ``api_key_mark_used``: the key's row says it was used within the minute (this call or
    another process wrote it), so the remembered copy does too, and the next requests of this
    process skip the write as a freshly loaded row would let them."""
    entry = _entries.get(api_key.key_hash)
    if entry is None:
        return
    remembered = entry.key[_LAST_USED]
    if remembered is None or remembered < now - timedelta(seconds=KEY_USE_RECORD_SECONDS):
        entry.key[_LAST_USED] = now


def _changed(**kwargs: Any) -> None:
    transaction.on_commit(forget_all)


for _model in (ApiKey, Environment):
    post_save.connect(_changed, sender=_model, dispatch_uid=f"keycache-save-{_model.__name__}")
    post_delete.connect(_changed, sender=_model, dispatch_uid=f"keycache-delete-{_model.__name__}")
