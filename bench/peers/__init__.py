"""Peers measured in the same run as Clarion: django-notifications-hq's fan-out.

``run_notifications_hq(database_url, recipients)`` runs ``bench/peers/run_hq.py`` with the peer's
own virtualenv (``bench/peers/.venv``, Django 4.2 + django-notifications-hq, pinned in
``bench/peers/requirements.txt``; made on first use with pip, about a minute) against a
throwaway database ``<run database>_hq`` on the same PostgreSQL server, dropped afterwards.
The peer's backends serve a database whose name starts with the run's, so a
``bench.procs.CpuMeter`` of the run counts them under ``postgres``; pass ``on_start`` to add the
peer process itself to a meter (``meter.roots.setdefault("peer", []).append(pid)``).

Used by ``bench/fanout.py`` (H4) for the "≥ 7× django-notifications-hq" row.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

PEERS_DIR = Path(__file__).resolve().parent
VENV = PEERS_DIR / ".venv"
REQUIREMENTS = PEERS_DIR / "requirements.txt"


def _log(message: str) -> None:
    print(f"[bench peers] {message}", file=sys.stderr, flush=True)


def venv_python() -> Path:
    return VENV / "bin" / "python"


def ensure_venv() -> Path:
    """The peer's virtualenv, created or updated when requirements.txt changed; its Python."""
    digest = hashlib.sha256(REQUIREMENTS.read_bytes()).hexdigest()
    stamp = VENV / ".requirements-sha256"
    if venv_python().exists() and stamp.exists() and stamp.read_text().strip() == digest:
        return venv_python()
    _log(f"creating {VENV} (django-notifications-hq, pinned in {REQUIREMENTS.name})")
    if not venv_python().exists():
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    subprocess.run(
        [str(venv_python()), "-m", "pip", "install", "-q", "--disable-pip-version-check", "-r", str(REQUIREMENTS)],
        check=True,
    )
    stamp.write_text(digest)
    return venv_python()


def _admin(database_url: str) -> str:
    return urlsplit(database_url)._replace(path="/postgres").geturl()


def run_notifications_hq(
    database_url: str,
    recipients: int,
    *,
    repeats: int = 1,
    on_start: Callable[[int], None] | None = None,
    timeout: float = 3600,
) -> dict[str, Any]:
    """``notify.send`` to ``recipients`` users, ``repeats`` times; the peer's JSON result.

    ``database_url`` is the run's PostgreSQL database; the peer gets ``<its name>_hq`` beside it.
    Result: ``seconds`` (median), ``notifications_per_s``, ``runs`` (seconds and the peer
    process's CPU each), versions, and ``wall_seconds`` of the whole call (setup included).
    """
    if not database_url.startswith(("postgres://", "postgresql://")):
        raise RuntimeError("the django-notifications-hq peer runs on PostgreSQL (set DATABASE_URL)")
    import psycopg

    python = ensure_venv()
    parts = urlsplit(database_url)
    name = f"{parts.path.lstrip('/')}_hq"
    peer_url = parts._replace(path=f"/{name}").geturl()
    with psycopg.connect(_admin(database_url), autocommit=True, connect_timeout=10) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    started = time.monotonic()
    try:
        env = {k: v for k, v in os.environ.items() if k not in ("DJANGO_SETTINGS_MODULE", "PYTHONPATH")}
        env["PEER_DATABASE_URL"] = peer_url
        proc = subprocess.Popen(
            [str(python), str(PEERS_DIR / "run_hq.py"), "--recipients", str(recipients), "--repeats", str(repeats)],
            cwd=PEERS_DIR,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        if on_start is not None:
            on_start(proc.pid)
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            raise RuntimeError(f"django-notifications-hq did not finish in {timeout:.0f} s") from None
        if proc.returncode != 0:
            raise RuntimeError(f"django-notifications-hq failed ({proc.returncode}):\n{err[-3000:]}")
        result = dict(json.loads(out.strip().splitlines()[-1]))
    finally:
        with (
            contextlib.suppress(Exception),
            psycopg.connect(_admin(database_url), autocommit=True, connect_timeout=10) as conn,
        ):
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    result["wall_seconds"] = round(time.monotonic() - started, 1)
    return result


def main(argv: list[str] | None = None) -> int:
    """``python -m bench.peers N`` with DATABASE_URL: one peer run, JSON on stdout (a self-check)."""
    args = sys.argv[1:] if argv is None else argv
    recipients = int(args[0]) if args else 1000
    from bench.common import Installation

    installation = Installation.create()
    try:
        print(json.dumps(run_notifications_hq(installation.database_url, recipients), indent=2))
    finally:
        installation.cleanup()
    return 0
