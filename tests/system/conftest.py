"""System-test harness: the REAL web and worker processes, talked to over HTTP and websockets.

``clarion_system`` (session scope) prepares a throwaway installation and starts
``uvicorn config.asgi:application`` and ``manage.py clarion_worker`` (the qcluster plus the ticker) as subprocesses:

* embedded default (no ``DATABASE_URL`` in the test run's environment): SQLite files and
  channels-lite in a temporary ``CLARION_VAR_DIR``, the django-q2 ORM broker;
* services (the run has ``DATABASE_URL``, as under ``make test-services``): a dedicated
  PostgreSQL database ``clarion_system`` (dropped and created) on the same server, and Redis
  database 15 (flushed) on ``REDIS_URL``'s server, for the django-q2 broker and channels-redis.

It migrates, creates an environment with ``create_environment system --json``, waits until
``GET /api/schema/`` answers 200 and the cluster logs that it is running, and yields a
:class:`ClarionSystem`. Teardown sends SIGTERM to each process group, then SIGKILL. The
processes' output goes to log files; a failing system test gets their tails attached to its
report (section "clarion processes"), and a failed start raises with them.

``clarion_worker`` gives a test ``kill()`` (SIGKILL to the whole qcluster process group: a
crashed machine) and ``start()`` / ``restart()``; after the test the worker runs again.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT = float(os.environ.get("CLARION_SYSTEM_START_TIMEOUT", "90"))
SYSTEM_DB_NAME = os.environ.get("CLARION_SYSTEM_DB", "clarion_system")
SYSTEM_REDIS_DB = int(os.environ.get("CLARION_SYSTEM_REDIS_DB", "15"))
LOG_TAIL_CHARS = 12_000
WORKER_READY_MARK = "running."  # django-q2 logs "Q Cluster <name> running." once the sentinel is up


class SystemStartError(RuntimeError):
    pass


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class ManagedProcess:
    """One long-running subprocess in its own process group, output appended to ``log_path``."""

    name: str
    argv: list[str]
    env: dict[str, str]
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    log_offset: int = 0  # where the current incarnation's output starts in the log

    def start(self) -> None:
        if self.alive():
            raise RuntimeError(f"{self.name} is already running (pid {self.proc.pid})")  # type: ignore[union-attr]
        self.log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with self.log_path.open("ab") as log:
            log.write(f"\n===== starting {self.name}: {' '.join(self.argv)}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                self.argv,
                cwd=ROOT,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # own process group: signals reach qcluster's children too
            )

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def _signal_group(self, sig: int) -> None:
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def kill(self) -> None:
        """SIGKILL the whole process group at once: no graceful shutdown, as in a crash."""
        if self.proc is None:
            return
        self._signal_group(signal.SIGKILL)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM the process, wait up to ``timeout``, then SIGKILL whatever is left of its group.

        Only the leader gets SIGTERM: qcluster shuts its children down itself (in under a
        second), whereas SIGTERM to the whole group at once leaves it hanging."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                pass
        self._signal_group(signal.SIGKILL)  # stragglers (e.g. orphaned qcluster workers)
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass

    def output(self, *, since_start: bool = False, tail: int | None = LOG_TAIL_CHARS) -> str:
        if not self.log_path.exists():
            return ""
        data = self.log_path.read_bytes()
        if since_start:
            data = data[self.log_offset :]
        text = data.decode("utf-8", errors="replace")
        return text[-tail:] if tail else text


@dataclass
class ClarionSystem:
    """A running Clarion: web + worker processes and the keys of one environment."""

    mode: str  # "embedded" or "services"
    base_url: str
    ws_url: str
    environment: dict[str, Any]
    secret_key: str
    publishable_key: str
    inbox_hmac_secret: str
    env: dict[str, str]
    var_dir: Path
    web: ManagedProcess
    worker: ManagedProcess
    http: httpx.Client = field(repr=False)

    @property
    def keys(self) -> dict[str, str]:
        return {
            "secret": self.secret_key,
            "publishable": self.publishable_key,
            "inbox_hmac_secret": self.inbox_hmac_secret,
        }

    def api(
        self,
        method: str,
        path: str,
        json: Any = None,
        *,
        auth: bool = True,
        headers: dict[str, str] | None = None,
        timeout: float = 15.0,
    ) -> httpx.Response:
        """Call the HTTP API; ``auth`` sends ``Authorization: Bearer <secret key>``."""
        all_headers = dict(headers or {})
        if auth:
            all_headers.setdefault("Authorization", f"Bearer {self.secret_key}")
        return self.http.request(method, path, json=json, headers=all_headers, timeout=timeout)

    def subscriber_hash(self, subscriber_id: str) -> str:
        return hmac.new(self.inbox_hmac_secret.encode(), subscriber_id.encode(), hashlib.sha256).hexdigest()

    def manage(self, *args: str, check: bool = True, timeout: float = 180) -> subprocess.CompletedProcess[str]:
        """Run ``manage.py <args>`` against this installation (same environment as the processes)."""
        return _manage(self.env, *args, check=check, timeout=timeout)

    def start_worker(self) -> None:
        self.worker.start()
        _wait_worker_ready(self.worker)

    def kill_worker(self) -> None:
        self.worker.kill()

    def restart_worker(self) -> None:
        self.worker.stop()
        self.start_worker()

    def logs(self) -> str:
        parts = []
        for proc in (self.web, self.worker):
            state = "running" if proc.alive() else f"exited ({proc.proc.returncode if proc.proc else 'never started'})"
            parts.append(f"----- {proc.name} [{state}] log {proc.log_path} (tail) -----\n{proc.output()}")
        return "\n".join(parts)


def _manage(
    env: dict[str, str], *args: str, check: bool = True, timeout: float = 180
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and result.returncode != 0:
        raise SystemStartError(
            f"manage.py {' '.join(args)} exited {result.returncode}\n"
            f"--- stdout ---\n{result.stdout[-LOG_TAIL_CHARS:]}\n--- stderr ---\n{result.stderr[-LOG_TAIL_CHARS:]}"
        )
    return result


def _wait_web_ready(web: ManagedProcess, base_url: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    last_error = "no answer yet"
    with httpx.Client(base_url=base_url, timeout=5) as client:
        while time.monotonic() < deadline:
            if not web.alive():
                raise SystemStartError(f"web exited before it was ready\n{web.output()}")
            try:
                response = client.get("/api/schema/")
                if response.status_code == 200:
                    return
                last_error = f"GET /api/schema/ answered {response.status_code}: {response.text[:500]}"
            except httpx.HTTPError as exc:
                last_error = repr(exc)
            time.sleep(0.2)
    raise SystemStartError(f"web not ready after {START_TIMEOUT:.0f} s ({last_error})\n{web.output()}")


def _wait_worker_ready(worker: ManagedProcess) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if not worker.alive():
            raise SystemStartError(f"worker exited before it was ready\n{worker.output()}")
        if WORKER_READY_MARK in worker.output(since_start=True, tail=None):
            return
        time.sleep(0.2)
    raise SystemStartError(f"worker not ready after {START_TIMEOUT:.0f} s\n{worker.output()}")


def _with_path(url: str, path: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, path, parts.query, parts.fragment))


def _prepare_services(env: dict[str, str]) -> None:
    """Point ``env`` at a fresh PostgreSQL database and an empty Redis database."""
    import psycopg
    import redis

    database_url = os.environ["DATABASE_URL"]
    parts = urlsplit(database_url)
    conninfo = {
        "host": parts.hostname or "127.0.0.1",
        "port": parts.port or 5432,
        "user": parts.username or "postgres",
        "dbname": "postgres",
        "autocommit": True,
    }
    if parts.password:
        conninfo["password"] = parts.password
    with psycopg.connect(**conninfo) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{SYSTEM_DB_NAME}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{SYSTEM_DB_NAME}"')
    env["DATABASE_URL"] = _with_path(database_url, f"/{SYSTEM_DB_NAME}")

    redis_url = _with_path(os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/0", f"/{SYSTEM_REDIS_DB}")
    client = redis.Redis.from_url(redis_url)
    try:
        client.flushdb()
    finally:
        client.close()
    env["REDIS_URL"] = redis_url


def _process_env(var_dir: Path, port: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "REDIS_URL", "CLARION_TASKS_EAGER"}}
    env.update(
        {
            "DJANGO_SETTINGS_MODULE": "config.settings",
            "PYTHONUNBUFFERED": "1",
            "CLARION_VAR_DIR": str(var_dir),
            "DEBUG": "0",
            "SECRET_KEY": "system-test-" + secrets.token_urlsafe(32),
            "CLARION_ENCRYPTION_KEYS": base64.urlsafe_b64encode(secrets.token_bytes(32)).decode(),
            "CLARION_ALLOWED_PRIVATE_NETWORKS": "127.0.0.0/8,::1/128",  # the fake providers on loopback
            "ALLOWED_HOSTS": "127.0.0.1,localhost",
            "CLARION_PUBLIC_URL": f"http://127.0.0.1:{port}",
            "CLARION_STALL_SECONDS": "5",
            # A test that SIGKILLs a worker child can wedge django-q2's queue (the child held its
            # lock): the watchdog restarts the cluster after this long instead of 6 minutes.
            "CLARION_WORKER_WEDGE_SECONDS": "10",
            "CLARION_WORKERS": "2",
            "LOG_LEVEL": "INFO",
        }
    )
    return env


@pytest.fixture(scope="session")
def clarion_system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClarionSystem]:
    var_dir = tmp_path_factory.mktemp("clarion-system")
    port = _free_port()
    env = _process_env(var_dir, port)
    mode = "services" if os.environ.get("DATABASE_URL") else "embedded"
    if mode == "services":
        _prepare_services(env)

    _manage(env, "migrate", "--noinput")
    if mode == "embedded":
        _manage(env, "migrate", "--database", "channels", "--noinput")
    created = _manage(env, "create_environment", "system", "--json").stdout
    keys = json.loads(created[created.index("{") :])

    with running_system(
        mode=mode, env=env, var_dir=var_dir, port=port, environment=keys["environment"], keys=keys
    ) as system:
        yield system


@contextmanager
def running_system(
    *, mode: str, env: dict[str, str], var_dir: Path, port: int, environment: dict[str, Any], keys: dict[str, str]
) -> Iterator[ClarionSystem]:
    """Start uvicorn + the worker (clarion_worker) on a migrated installation; stop them after."""
    base_url = f"http://127.0.0.1:{port}"
    web = ManagedProcess(
        name="web",
        argv=[sys.executable, "-m", "uvicorn", "config.asgi:application", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        log_path=var_dir / "web.log",
    )
    worker = ManagedProcess(
        name="worker", argv=[sys.executable, "manage.py", "clarion_worker"], env=env, log_path=var_dir / "worker.log"
    )
    system = ClarionSystem(
        mode=mode,
        base_url=base_url,
        ws_url=f"ws://127.0.0.1:{port}",
        environment=environment,
        secret_key=keys["secret_key"],
        publishable_key=keys["publishable_key"],
        inbox_hmac_secret=keys["inbox_hmac_secret"],
        env=env,
        var_dir=var_dir,
        web=web,
        worker=worker,
        http=httpx.Client(base_url=base_url, timeout=15),
    )
    try:
        web.start()
        worker.start()
        _wait_web_ready(web, base_url)
        _wait_worker_ready(worker)
        yield system
    finally:
        system.http.close()
        worker.stop()
        web.stop()


@dataclass
class WorkerControl:
    system: ClarionSystem

    def kill(self) -> None:
        """kill -9 the worker (and every process it forked)."""
        self.system.kill_worker()

    def start(self) -> None:
        self.system.start_worker()

    def restart(self) -> None:
        self.system.restart_worker()

    def alive(self) -> bool:
        return self.system.worker.alive()


@pytest.fixture
def clarion_worker(clarion_system: ClarionSystem) -> Iterator[WorkerControl]:
    """Kill / restart the worker; whatever the test did, the worker runs again afterwards."""
    yield WorkerControl(clarion_system)
    if not clarion_system.worker.alive():
        clarion_system.start_worker()


@pytest.fixture(autouse=True)
def _services_marker(request: pytest.FixtureRequest) -> None:
    """A system test marked ``services`` needs PostgreSQL + Redis: skip it on the embedded run."""
    if request.node.get_closest_marker("services") and not os.environ.get("DATABASE_URL"):
        pytest.skip("needs PostgreSQL and Redis (make test-services)")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[Any]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    if not report.failed:
        return
    system = getattr(item, "funcargs", {}).get("clarion_system")
    if isinstance(system, ClarionSystem):
        report.sections.append(("clarion processes", system.logs()))
