"""Tasks the system tests enqueue into the real workers to see what a worker process sees."""

from __future__ import annotations

import json
import os
import time

from django.db import connection


def connection_identity(path: str, tag: str, pause: float = 0.0) -> None:
    """Append {pid, backend pid, tag} to ``path``: which PostgreSQL session this worker process uses."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        backend = int(cursor.fetchone()[0])
    time.sleep(pause)  # long enough for both workers to take some of a round
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps({"pid": os.getpid(), "backend": backend, "tag": tag}) + "\n")
