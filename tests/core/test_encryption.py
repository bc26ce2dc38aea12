"""Secrets at rest: integration credentials and inbox HMAC secrets are Fernet tokens in the database.

Raw values are read with SQL (the ORM would decrypt them), on whichever database the suite runs
on: SQLite under ``make test``, PostgreSQL under ``make test-services``.
"""

from __future__ import annotations

import base64
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
from cryptography.fernet import Fernet
from django.conf import settings as django_settings
from django.core.exceptions import FieldError
from django.core.management import call_command
from django.db import connection

from apps.core.fields import UndecryptableValue
from apps.delivery.models import Integration
from apps.tenancy.models import Environment
from apps.tenancy.services import environment_create
from tests.factories import IntegrationFactory

ROOT = Path(django_settings.BASE_DIR)
CREDENTIALS = {"url": "https://sms.example.com/send", "auth_token": "tok-7c1d-do-not-store-plain", "retries": 3}


def new_key() -> str:
    return base64.urlsafe_b64encode(os.urandom(32)).decode()


def raw(table: str, column: str, pk: int) -> str:
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT {column} FROM {table} WHERE id = %s", [pk])
        return cursor.fetchone()[0]


@pytest.fixture
def keys(settings: Any) -> list[str]:
    """Two keys of this test's own; the first encrypts."""
    settings.CLARION_ENCRYPTION_KEYS = [new_key(), new_key()]
    return settings.CLARION_ENCRYPTION_KEYS


@pytest.mark.django_db
def test_credentials_are_a_token_in_the_database_and_plain_in_python(tenant: Any, keys: list[str]) -> None:
    integration = IntegrationFactory(
        environment=tenant.environment, channel="sms", provider="http", credentials=CREDENTIALS
    )
    stored = raw("delivery_integration", "credentials", integration.pk)
    assert "tok-7c1d" not in stored and "auth_token" not in stored and "sms.example.com" not in stored
    assert json.loads(Fernet(keys[0]).decrypt(stored.encode())) == CREDENTIALS
    assert Integration.objects.get(pk=integration.pk).credentials == CREDENTIALS


@pytest.mark.django_db
def test_the_inbox_hmac_secret_is_a_token_in_the_database(keys: list[str]) -> None:
    environment = environment_create(name="acme", project_name="acme").environment
    secret = environment.inbox_hmac_secret
    stored = raw("tenancy_environment", "inbox_hmac_secret", environment.pk)
    assert secret not in stored
    assert Fernet(keys[0]).decrypt(stored.encode()).decode() == secret
    assert Environment.objects.get(pk=environment.pk).inbox_hmac_secret == secret


@pytest.mark.django_db
def test_same_plaintext_different_tokens_and_no_lookups(tenant: Any, keys: list[str]) -> None:
    first = IntegrationFactory(environment=tenant.environment, channel="sms", provider="http", credentials=CREDENTIALS)
    second = IntegrationFactory(environment=tenant.environment, channel="sms", provider="http", credentials=CREDENTIALS)
    assert raw("delivery_integration", "credentials", first.pk) != raw("delivery_integration", "credentials", second.pk)
    with pytest.raises(FieldError):
        Integration.objects.filter(credentials=CREDENTIALS).count()
    assert Integration.objects.filter(credentials__isnull=False).count() == 2


@pytest.mark.django_db
def test_a_value_no_key_decrypts_is_an_error_not_plaintext(tenant: Any, settings: Any) -> None:
    settings.CLARION_ENCRYPTION_KEYS = [new_key()]
    integration = IntegrationFactory(environment=tenant.environment, credentials={"host": "smtp.example.com"})
    settings.CLARION_ENCRYPTION_KEYS = [new_key()]
    with pytest.raises(UndecryptableValue, match="CLARION_ENCRYPTION_KEYS"):
        Integration.objects.get(pk=integration.pk)


@pytest.mark.django_db
def test_rotation_re_encrypts_every_row_with_the_first_key(settings: Any) -> None:
    old, new = new_key(), new_key()
    settings.CLARION_ENCRYPTION_KEYS = [old]
    environments = [environment_create(name=n, project_name=n).environment for n in ("acme", "globex")]
    integration = IntegrationFactory(
        environment=environments[0], channel="sms", provider="http", credentials=CREDENTIALS
    )
    secrets = {e.pk: e.inbox_hmac_secret for e in environments}
    touched = Integration.objects.get(pk=integration.pk).updated_at

    settings.CLARION_ENCRYPTION_KEYS = [new, old]  # the new key first, the old one still decrypts
    out = _call("rotate_encryption_key")

    assert f"Re-encrypted {1 + len(environments)} rows" in out
    assert json.loads(Fernet(new).decrypt(raw("delivery_integration", "credentials", integration.pk).encode())) == (
        CREDENTIALS
    )
    for pk, secret in secrets.items():
        assert Fernet(new).decrypt(raw("tenancy_environment", "inbox_hmac_secret", pk).encode()).decode() == secret

    settings.CLARION_ENCRYPTION_KEYS = [new]  # the old key is gone: everything still reads
    reloaded = Integration.objects.get(pk=integration.pk)
    assert reloaded.credentials == CREDENTIALS
    assert reloaded.updated_at == touched  # a raw rewrite: no model code ran
    assert {e.pk: e.inbox_hmac_secret for e in Environment.objects.all()} == secrets


def _call(*args: str) -> str:
    from io import StringIO

    out = StringIO()
    call_command(*args, stdout=out)
    return out.getvalue()


# --- settings ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "complaint"),
    [(None, "CLARION_ENCRYPTION_KEYS is not set"), ("", "is not set"), ("not-a-key", "not a list of Fernet keys")],
    ids=["unset", "empty", "not a key"],
)
def test_settings_refuse_to_start_without_a_valid_key(tmp_path: Path, value: str | None, complaint: str) -> None:
    env = {k: v for k, v in os.environ.items() if k not in {"CLARION_ENCRYPTION_KEYS", "DJANGO_SETTINGS_MODULE"}}
    env["CLARION_VAR_DIR"] = str(tmp_path)
    if value is not None:
        env["CLARION_ENCRYPTION_KEYS"] = value
    result = subprocess.run(
        [sys.executable, "-c", "import config.settings"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode != 0
    assert "ImproperlyConfigured" in result.stderr and complaint in result.stderr


# --- the data migrations --------------------------------------------------------------------------


def _postgres_url() -> str | None:
    url = os.environ.get("DATABASE_URL", "")
    return url if url.startswith(("postgres://", "postgresql://")) else None


@pytest.fixture(params=["sqlite", "postgresql"])
def migration_database(request: Any, tmp_path: Path) -> Any:
    """A database of its own for ``manage.py migrate`` (never the test database)."""
    if request.param == "sqlite":
        path = tmp_path / "migrations.sqlite3"
        yield f"sqlite:///{path}", lambda: sqlite3.connect(path)
        return
    base = _postgres_url()
    if base is None:
        pytest.skip("PostgreSQL: runs under make test-services (DATABASE_URL)")
    import psycopg

    parts = urlsplit(base)
    name = f"{parts.path.lstrip('/') or 'clarion'}_encryption_migrations"
    admin_url = urlunsplit(parts._replace(path="/postgres"))
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}"')
        admin.execute(f'CREATE DATABASE "{name}"')
    url = urlunsplit(parts._replace(path=f"/{name}"))
    yield url, lambda: psycopg.connect(url, autocommit=True)
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _manage(database_url: str, key: str, tmp_path: Path, *args: str) -> None:
    env = {k: v for k, v in os.environ.items() if k not in {"DJANGO_SETTINGS_MODULE", "REDIS_URL"}}
    env.update({"DATABASE_URL": database_url, "CLARION_ENCRYPTION_KEYS": key, "CLARION_VAR_DIR": str(tmp_path)})
    result = subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


def test_migrations_encrypt_existing_rows_and_reverse(migration_database: Any, tmp_path: Path) -> None:
    url, connect = migration_database
    key = new_key()
    _manage(url, key, tmp_path, "migrate", "--noinput", "tenancy", "0002")
    _manage(url, key, tmp_path, "migrate", "--noinput", "delivery", "0006")
    db = connect()
    ph = "?" if isinstance(db, sqlite3.Connection) else "%s"
    now = "2026-01-01 00:00:00+00:00"
    db.execute(f"INSERT INTO tenancy_project (name, slug, created_at) VALUES ({ph}, {ph}, {ph})", ["P", "p", now])
    db.execute(
        "INSERT INTO tenancy_environment (project_id, name, slug, inbox_hmac_secret, allowed_origins, "
        f"inbox_session_version, branding, created_at) VALUES (1, 'E', 'e', {ph}, '[]', 1, '{{}}', {ph})",
        ["plain-hmac-secret", now],
    )
    db.execute(
        "INSERT INTO delivery_integration (environment_id, channel, provider, name, credentials, settings, priority, "
        "active, retries, webhook_key, circuit_failures, created_at, updated_at) "
        f"VALUES (1, 'sms', 'http', '', {ph}, '{{}}', 0, {'1' if ph == '?' else 'true'}, 2, 'wk', 0, {ph}, {ph})",
        [json.dumps(CREDENTIALS), now, now],
    )
    if isinstance(db, sqlite3.Connection):
        db.commit()

    _manage(url, key, tmp_path, "migrate", "--noinput")

    secret = db.execute("SELECT inbox_hmac_secret FROM tenancy_environment").fetchone()[0]
    credentials = db.execute("SELECT credentials FROM delivery_integration").fetchone()[0]
    assert "plain-hmac-secret" not in secret and "tok-7c1d" not in credentials
    assert Fernet(key).decrypt(secret.encode()) == b"plain-hmac-secret"
    assert json.loads(Fernet(key).decrypt(credentials.encode())) == CREDENTIALS

    _manage(url, key, tmp_path, "migrate", "--noinput", "delivery", "0006")
    _manage(url, key, tmp_path, "migrate", "--noinput", "tenancy", "0002")

    assert db.execute("SELECT inbox_hmac_secret FROM tenancy_environment").fetchone()[0] == "plain-hmac-secret"
    restored = db.execute("SELECT credentials FROM delivery_integration").fetchone()[0]
    assert (restored if isinstance(restored, dict) else json.loads(restored)) == CREDENTIALS
    db.close()
