"""Model fields encrypted at rest with Fernet (AES-128-CBC + HMAC-SHA256), keys from the environment.

``CLARION_ENCRYPTION_KEYS`` holds one or more Fernet keys: the first encrypts, every one decrypts
(``MultiFernet``), so a new key goes first and the old ones stay until ``manage.py
rotate_encryption_key`` has re-encrypted every row with the new one.

The database holds only the token (a text column); Python code sees the plain value. Encryption
is randomised, so these fields cannot be filtered on: only ``isnull`` lookups are offered.
A value that no configured key decrypts is an error (``UndecryptableValue``), never plaintext
passed through.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterator, Sequence
from typing import Any

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import models
from django.db.models import Lookup


class UndecryptableValue(Exception):
    """A stored value that none of ``CLARION_ENCRYPTION_KEYS`` decrypts (a key is missing)."""


@functools.lru_cache(maxsize=8)
def _fernet(keys: tuple[str, ...]) -> MultiFernet:
    if not keys:
        raise ImproperlyConfigured("CLARION_ENCRYPTION_KEYS is not set")
    return MultiFernet([Fernet(key) for key in keys])


def fernet() -> MultiFernet:
    """The ``MultiFernet`` of the configured keys (read on every call, so settings overrides apply)."""
    return _fernet(tuple(k.strip() for k in settings.CLARION_ENCRYPTION_KEYS if k.strip()))


def encrypt_text(value: str) -> str:
    return fernet().encrypt(value.encode()).decode("ascii")


def decrypt_text(token: str) -> str:
    try:
        return fernet().decrypt(token.encode("ascii")).decode()
    except (InvalidToken, UnicodeEncodeError) as exc:
        raise UndecryptableValue(
            "a stored secret is not decryptable with CLARION_ENCRYPTION_KEYS (a key that encrypted it is missing)"
        ) from exc


def rotate_token(token: str) -> str:
    """The same plaintext encrypted with the first key (decrypted with whichever key can)."""
    try:
        return fernet().rotate(token.encode("ascii")).decode("ascii")
    except (InvalidToken, UnicodeEncodeError) as exc:
        raise UndecryptableValue("a stored secret is not decryptable with CLARION_ENCRYPTION_KEYS") from exc


class EncryptedMixin:
    """Stores ``encrypt(encode_plain(value))`` in a text column; ``decode_plain(decrypt(...))`` on read."""

    def encode_plain(self, value: Any) -> str:
        raise NotImplementedError

    def decode_plain(self, text: str) -> Any:
        raise NotImplementedError

    def get_internal_type(self) -> str:
        return "TextField"

    def get_db_prep_value(self, value: Any, connection: Any, prepared: bool = False) -> Any:
        if value is None:
            return None
        return encrypt_text(self.encode_plain(value))

    def from_db_value(self, value: Any, expression: Any, connection: Any) -> Any:
        if value is None:
            return None
        return self.decode_plain(decrypt_text(value))

    def get_lookup(self, lookup_name: str) -> type[Lookup] | None:
        if lookup_name != "isnull":
            return None  # equal plaintexts have different tokens: any comparison would be wrong
        return super().get_lookup(lookup_name)  # type: ignore[misc]

    def get_transform(self, name: str) -> Any:
        return None


class EncryptedTextField(EncryptedMixin, models.TextField):
    """A string secret (e.g. an HMAC key)."""

    def encode_plain(self, value: Any) -> str:
        return str(value)

    def decode_plain(self, text: str) -> str:
        return text

    def to_python(self, value: Any) -> Any:
        return value if value is None or isinstance(value, str) else str(value)


class EncryptedJSONField(EncryptedMixin, models.TextField):
    """A JSON value (e.g. provider credentials), encrypted whole: not even its keys are readable."""

    # For django-stubs: the attribute holds the decoded JSON value, not the TextField's str.
    _pyi_private_set_type: Any
    _pyi_private_get_type: Any

    def encode_plain(self, value: Any) -> str:
        return json.dumps(value, separators=(",", ":"), sort_keys=True)

    def decode_plain(self, text: str) -> Any:
        return json.loads(text)

    def to_python(self, value: Any) -> Any:
        return value

    def value_to_string(self, obj: models.Model) -> Any:
        return self.value_from_object(obj)  # dumpdata writes the plain value, as JSONField does

    def formfield(self, **kwargs: Any) -> Any:
        from django import forms

        return super().formfield(**{"form_class": forms.JSONField, **kwargs})


def encrypted_fields() -> Iterator[tuple[type[models.Model], list[str]]]:
    """Every installed model with encrypted fields, and those fields' names."""
    from django.apps import apps

    for model in apps.get_models():
        names = [f.name for f in model._meta.concrete_fields if isinstance(f, EncryptedMixin)]
        if names:
            yield model, names


def _concrete_field(model: type[models.Model], name: str) -> models.Field:
    field = model._meta.get_field(name)
    if not isinstance(field, models.Field):
        raise TypeError(f"{model.__name__}.{name} is a reverse relation, not a column")
    return field


def _rewrite_columns(connection: Any, model: type[models.Model], names: Sequence[str], rewrite: Any) -> int:
    """Apply ``rewrite(raw value) -> raw value`` to columns of every row, in batches, by raw SQL:
    no model code runs and ``auto_now`` fields keep their values. Returns the rows rewritten."""
    quote = connection.ops.quote_name
    table = quote(model._meta.db_table)
    pk = quote(model._meta.pk.column)
    columns = [quote(_concrete_field(model, name).column) for name in names]
    assignments = ", ".join(f"{column} = %s" for column in columns)
    rewritten = 0
    last: Any = None
    while True:
        with connection.cursor() as cursor:
            where = f"WHERE {pk} > %s " if last is not None else ""
            cursor.execute(
                f"SELECT {pk}, {', '.join(columns)} FROM {table} {where}ORDER BY {pk} LIMIT 500",
                [last] if last is not None else [],
            )
            rows = cursor.fetchall()
            for row in rows:
                values = [rewrite(value) if value is not None else None for value in row[1:]]
                if values != list(row[1:]):
                    cursor.execute(f"UPDATE {table} SET {assignments} WHERE {pk} = %s", [*values, row[0]])
                    rewritten += 1
        if not rows:
            return rewritten
        last = rows[-1][0]


def _encrypt_if_plain(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value)
    try:
        decrypt_text(text)
    except UndecryptableValue:
        return encrypt_text(text)
    return text  # already encrypted (a migration run twice)


def columns_encrypt(connection: Any, model: type[models.Model], names: Sequence[str]) -> int:
    """Data migrations: encrypt the plain values a column held before it became encrypted."""
    return _rewrite_columns(connection, model, names, _encrypt_if_plain)


def columns_decrypt(connection: Any, model: type[models.Model], names: Sequence[str]) -> int:
    """Reverse data migrations: back to the plain values."""
    return _rewrite_columns(connection, model, names, decrypt_text)


def encrypted_rows_rotate() -> int:
    """Re-encrypt every stored encrypted value with the first key; returns the rows rewritten."""
    from django.db import connections, router, transaction

    rewritten = 0
    for model, names in list(encrypted_fields()):
        alias = router.db_for_write(model)
        with transaction.atomic(using=alias):
            rewritten += _rewrite_columns(connections[alias], model, names, rotate_token)
    return rewritten
