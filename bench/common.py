"""What both benchmarks share: the installation they run against, the machine, small statistics."""

from __future__ import annotations

import base64
import hashlib
import math
import os
import platform
import secrets
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent
SETTINGS_MODULE = "bench.settings"


def log(message: str) -> None:
    """Progress goes to stderr so that ``--json`` output on stdout stays clean."""
    print(f"[bench] {message}", file=sys.stderr, flush=True)


@dataclass
class Installation:
    """The database / broker the benchmarks run against.

    Embedded default (no ``DATABASE_URL``): a fresh temporary ``CLARION_VAR_DIR`` with a new
    SQLite database and the django-q2 ORM broker, removed at the end. Services: a *throwaway*
    database created on the server of ``DATABASE_URL`` (named after it, plus a random suffix;
    dropped by :meth:`cleanup`, so no pending event is left for a later worker's sweeper) and,
    with ``REDIS_URL``, the django-q2 Redis broker on that Redis database, which :meth:`cleanup`
    flushes (point it at a spare database: ``redis://127.0.0.1:6379/N``, N > 0).
    """

    var_dir: Path
    database_url: str = ""
    redis_url: str = ""
    secret_key: str = field(default_factory=lambda: "bench-" + secrets.token_urlsafe(32))
    encryption_key: str = field(default_factory=lambda: base64.urlsafe_b64encode(secrets.token_bytes(32)).decode())
    _django_ready: bool = False
    _migrated: bool = False
    created_database: str = ""  # the throwaway database this run created (dropped by cleanup)
    base_database_url: str = ""  # DATABASE_URL as given (the throwaway database is named after it)

    @classmethod
    def create(cls, *, embedded: bool = False, throwaway: bool = True) -> Installation:
        """The run's installation; ``embedded=True`` ignores DATABASE_URL / REDIS_URL (SQLite + ORM broker)."""
        var_dir = Path(tempfile.mkdtemp(prefix="clarion-bench-"))
        database_url = "" if embedded else os.environ.get("DATABASE_URL", "")
        redis_url = "" if embedded else os.environ.get("REDIS_URL", "")
        if redis_url and urlsplit(redis_url).path.strip("/") in ("", "0"):
            raise RuntimeError("REDIS_URL must name a spare Redis database (not 0): the bench flushes it at the end")
        installation = cls(
            var_dir=var_dir, database_url=database_url, redis_url=redis_url, base_database_url=database_url
        )
        if throwaway and installation.database == "postgresql":
            installation._create_throwaway_database()
        return installation

    def fresh(self) -> Installation:
        """A new installation like this one: a new throwaway database (or SQLite file) and the
        Redis database flushed now, so nothing another section left queued reaches its workers."""
        var_dir = Path(tempfile.mkdtemp(prefix="clarion-bench-"))
        other = type(self)(
            var_dir=var_dir,
            database_url=self.base_database_url,
            redis_url=self.redis_url,
            base_database_url=self.base_database_url,
        )
        if other.database == "postgresql":
            other._create_throwaway_database()
        other._flush_redis()
        return other

    @property
    def database_name(self) -> str:
        if self.database != "postgresql":
            return ""
        return urlsplit(self.database_url).path.lstrip("/")

    def _admin_url(self) -> str:
        return urlsplit(self.database_url)._replace(path="/postgres").geturl()

    def _create_throwaway_database(self) -> None:
        import psycopg

        parts = urlsplit(self.database_url)
        name = f"{parts.path.lstrip('/') or 'clarion_bench'}_{secrets.token_hex(3)}"
        with psycopg.connect(self._admin_url(), autocommit=True, connect_timeout=10) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        self.created_database = name
        self.database_url = parts._replace(path=f"/{name}").geturl()

    def _drop_throwaway_database(self) -> None:
        if not self.created_database:
            return
        import psycopg

        with psycopg.connect(self._admin_url(), autocommit=True, connect_timeout=10) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{self.created_database}" WITH (FORCE)')
        self.created_database = ""

    def _flush_redis(self) -> None:
        if not self.redis_url:
            return
        import redis

        client = redis.Redis.from_url(self.redis_url, socket_timeout=10)
        try:
            client.flushdb()
        finally:
            client.close()

    def postmaster(self) -> int | None:
        """The pid of the PostgreSQL cluster's postmaster (for the CPU meter), or None."""
        if self.database != "postgresql":
            return None
        from bench.procs import postmaster_pid

        return postmaster_pid(self.database_url)

    def migrate(self) -> None:
        """``manage.py migrate`` (and the channels-lite database on the embedded default), once.

        On SQLite the migrated, still empty files are kept in a cache keyed by every migration's
        content and the packages' versions, and copied on the next run: the same schema, without
        the 10-20 s of migrating each temporary installation again."""
        if self._migrated or self._django_ready:
            return
        cache = _schema_cache() if self.database == "sqlite" else None
        files = ("clarion.sqlite3", "channels.sqlite3")
        if (
            cache is not None
            and all((cache / name).exists() for name in files)
            and not any((self.var_dir / name).exists() for name in files)
        ):
            for name in files:
                shutil.copyfile(cache / name, self.var_dir / name)
            self._migrated = True
            return
        # only a database this call creates from nothing is a clean schema worth caching
        brand_new = not any((self.var_dir / name).exists() for name in files)
        self.manage("migrate", "--noinput")
        if self.database == "sqlite":
            self.manage("migrate", "--database", "channels", "--noinput")
            if cache is not None and brand_new:
                _fill_schema_cache(cache, [self.var_dir / name for name in files])
        self._migrated = True

    @property
    def database(self) -> str:
        return "postgresql" if self.database_url.startswith(("postgres://", "postgresql://")) else "sqlite"

    @property
    def broker(self) -> str:
        return "redis" if self.redis_url else "orm"

    def describe_database(self) -> str:
        if self.database == "sqlite":
            return f"SQLite (embedded default) in {self.var_dir}"
        parts = urlsplit(self.database_url)
        return f"PostgreSQL {parts.hostname}:{parts.port or 5432}{parts.path}"

    def process_env(self, **extra: str) -> dict[str, str]:
        """Environment for the processes the benchmarks start (server, manage.py)."""
        drop = {"DATABASE_URL", "REDIS_URL", "CLARION_TASKS_EAGER", "CLARION_BENCH_DJANGO_DATABASE"}
        env = {k: v for k, v in os.environ.items() if k not in drop}
        env.update(
            {
                "DJANGO_SETTINGS_MODULE": SETTINGS_MODULE,
                "CLARION_VAR_DIR": str(self.var_dir),
                "DEBUG": "0",
                "SECRET_KEY": self.secret_key,
                "CLARION_ENCRYPTION_KEYS": self.encryption_key,
                "CLARION_ALLOWED_PRIVATE_NETWORKS": "127.0.0.0/8,::1/128",  # fakes on loopback
                "ALLOWED_HOSTS": "127.0.0.1,localhost,testserver",
                "LOG_LEVEL": "WARNING",
                "PYTHONUNBUFFERED": "1",
            }
        )
        if self.database_url:
            env["DATABASE_URL"] = self.database_url
        else:
            # Explicit, so that a DATABASE_URL in a developer's .env cannot redirect the bench.
            env["DATABASE_URL"] = f"sqlite:///{self.var_dir / 'clarion.sqlite3'}"
        # Empty means "no Redis" to the settings, and also shadows a REDIS_URL in .env.
        env["REDIS_URL"] = self.redis_url
        env.update(extra)
        return env

    def manage(self, *args: str, timeout: float = 300) -> str:
        result = subprocess.run(
            [sys.executable, "manage.py", *args],
            cwd=ROOT,
            env=self.process_env(),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if result.returncode != 0:
            raise RuntimeError(
                f"manage.py {' '.join(args)} exited {result.returncode}\n"
                f"{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
            )
        return result.stdout

    def setup_django(self) -> None:
        """Configure Django in this process against the same installation, and migrate it."""
        if self._django_ready:
            return
        bound = os.environ.get("CLARION_BENCH_DJANGO_DATABASE")
        if bound is not None and bound != self.process_env()["DATABASE_URL"]:
            # Django's settings and connections are configured once per process: they cannot be
            # pointed at a second installation's database (a fresh() one) afterwards.
            raise RuntimeError(
                "in-process Django is already bound to another installation's database "
                f"({bound}); use that installation, or do this installation's in-process work in a "
                "subprocess (Installation.manage, or the API)"
            )
        os.environ.update(self.process_env())
        os.environ["CLARION_BENCH_DJANGO_DATABASE"] = self.process_env()["DATABASE_URL"]
        os.environ.pop("CLARION_TASKS_EAGER", None)
        import django

        if os.environ["DJANGO_SETTINGS_MODULE"] != SETTINGS_MODULE:
            raise RuntimeError("DJANGO_SETTINGS_MODULE must be bench.settings")
        self.migrate()  # in a subprocess, before this process opens the database
        django.setup()
        from django.conf import settings
        from django.core.management import call_command

        if settings.ROOT_URLCONF != "bench.urls":
            raise RuntimeError("Django was already configured with other settings; run `python -m bench`")
        if not self._migrated:
            call_command("migrate", verbosity=0, interactive=False)
        self._django_ready = True

    def cleanup(self) -> None:
        """Drop the throwaway database, flush the Redis database, remove the var dir."""
        try:
            if self._django_ready:
                from django.db import connections

                connections.close_all()
            self._drop_throwaway_database()
            self._flush_redis()
        finally:
            shutil.rmtree(self.var_dir, ignore_errors=True)


def _schema_cache() -> Path | None:
    """The cache folder for this schema: migrations' content + Django, django-q2, channels-lite versions."""
    from importlib import metadata

    digest = hashlib.sha256()
    for path in sorted(ROOT.glob("apps/*/migrations/*.py")):
        digest.update(str(path.relative_to(ROOT)).encode())
        digest.update(path.read_bytes())
    for package in ("django", "django-q2", "channels-lite"):
        try:
            digest.update(f"{package}=={metadata.version(package)}".encode())
        except metadata.PackageNotFoundError:
            digest.update(package.encode())
    return Path(tempfile.gettempdir()) / "clarion-bench-schema" / digest.hexdigest()[:16]


def _fill_schema_cache(cache: Path, files: list[Path]) -> None:
    """Copy freshly migrated SQLite files into the cache, atomically (runs may race: first one wins)."""
    if not all(f.exists() for f in files) or any(f.with_name(f.name + "-wal").exists() for f in files):
        return  # a WAL still holds part of the schema: not a self-contained copy
    cache.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix="staging-", dir=cache.parent))
    try:
        for f in files:
            shutil.copyfile(f, staging / f.name)
        os.rename(staging, cache)
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)


def machine_info(installation: Installation | None = None) -> dict[str, Any]:
    model = ""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
                break
    except (OSError, subprocess.SubprocessError):
        pass
    memory_gb = 0.0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory_gb = round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    info: dict[str, Any] = {
        "cpus": os.cpu_count(),
        "cpu_model": model or platform.processor() or "unknown",
        "memory_gb": memory_gb,
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        # Other processes share the machine: the 1-minute load average before the run says how much.
        "load_average_at_start": round(os.getloadavg()[0], 2),
    }
    try:
        import django

        info["django"] = django.get_version()
    except ImportError:
        pass
    if installation is not None:
        info["database"] = installation.database
        info["broker"] = installation.broker
        info.update(_service_versions(installation))
    return info


def _service_versions(installation: Installation) -> dict[str, str]:
    versions: dict[str, str] = {}
    if installation.database == "postgresql":
        try:
            import psycopg

            with psycopg.connect(installation.database_url, connect_timeout=5) as conn:
                row = conn.execute("SHOW server_version").fetchone()
                versions["postgresql"] = str(row[0]) if row else "?"
        except Exception as exc:  # informational only
            versions["postgresql"] = f"unknown ({type(exc).__name__})"
    if installation.redis_url:
        try:
            import redis

            client = redis.Redis.from_url(installation.redis_url, socket_timeout=5)
            try:
                versions["redis"] = str(client.info("server").get("redis_version", "?"))
            finally:
                client.close()
        except Exception as exc:  # informational only
            versions["redis"] = f"unknown ({type(exc).__name__})"
    return versions


def database_connections() -> str:
    """How Django connects, as configured in this process (the same settings as the server)."""
    from django.conf import settings

    default = settings.DATABASES["default"]
    pool = default.get("OPTIONS", {}).get("pool")
    parts = [f"CONN_MAX_AGE={default.get('CONN_MAX_AGE', 0)}"]
    if pool:
        parts.append(f"pool={pool}")
    return ", ".join(parts)


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an already sorted list (``q`` in 0..100)."""
    if not sorted_values:
        return 0.0
    rank = max(1, min(len(sorted_values), math.ceil(q / 100 * len(sorted_values))))
    return sorted_values[rank - 1]


def median(values: list[float]) -> float:
    return statistics.median(values) if values else 0.0
