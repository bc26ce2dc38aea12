from __future__ import annotations

from typing import Any

import pytest
from django.db import connection
from django.db.migrations.loader import MigrationLoader
from django.db.migrations.recorder import MigrationRecorder

from apps.observability import health


@pytest.fixture(autouse=True)
def _fresh_health_state(monkeypatch: Any, settings: Any) -> None:
    """Each test decides whether migrations are applied (the check caches a pass per process), and
    the migration files are read for real (pytest-django's --no-migrations hides them otherwise)."""
    settings.MIGRATION_MODULES = {}
    monkeypatch.setattr(health, "_migrations_applied", False)
    monkeypatch.setattr(health, "_leaf_nodes", None)


@pytest.fixture
def migrations_applied(db: Any) -> None:
    """The test database is built without migrations (--no-migrations): record them all as applied."""
    recorder = MigrationRecorder(connection)
    if not recorder.has_table():  # inside the test's transaction: plain SQL (SQLite's schema editor refuses)
        key = "id integer PRIMARY KEY AUTOINCREMENT" if connection.vendor == "sqlite" else "id bigserial PRIMARY KEY"
        with connection.cursor() as cursor:
            cursor.execute(
                f"CREATE TABLE django_migrations ({key}, app varchar(255) NOT NULL, "
                "name varchar(255) NOT NULL, applied timestamp with time zone NOT NULL)"
            )
    applied = set(recorder.applied_migrations())
    nodes = MigrationLoader(None, ignore_no_migrations=True).graph.nodes
    assert len(nodes) > 20  # the real migration files
    for app, name in nodes:
        if (app, name) not in applied:
            recorder.record_applied(app, name)
