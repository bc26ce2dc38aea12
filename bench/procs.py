"""Real components for a benchmark run, on 127.0.0.1, and the CPU of every process involved.

Use::

    from bench.common import Installation
    from bench.procs import Stack

    installation = Installation.create()          # throwaway database (+ Redis db) for this run
    with Stack(installation, web_processes=1, worker_processes=1) as stack:
        stack.start()                             # fake ESP, uvicorn, workers; waits until ready
        keys = stack.environment("bench")         # manage.py create_environment --json
        with stack.meter() as cpu:                # CPU (user+sys) of every process, sampled
            result = stack.loadgen([...])         # bench.loadgen in its own (measured) process
        print(cpu.result())                       # seconds per group: web, worker, esp, loadgen,
                                                  # postgres, postgres_cluster, redis, orchestrator
    installation.cleanup()                        # drops the database / flushes the Redis db

What runs (each in its own process group, killed with the group at the end):

* ``web``: ``uvicorn config.asgi:application --workers N`` (``bench.settings``, ``DEBUG=0``, no
  access log) — N server processes behind one socket, as ``scripts/run.sh`` would with more workers;
* ``worker``: M × ``manage.py clarion_worker`` (django-q2 cluster + ticker), each with
  ``CLARION_WORKERS`` cluster processes (``cluster_workers``, default the settings' 2);
* ``esp``: the fault suite's fake ESP (``bench.chaos.fake_esp``, Postmark's API, records every
  request to SQLite): :meth:`Stack.esp_accepted` counts what it took. Reused, not copied.

The meter (:class:`CpuMeter`) samples ``/proc`` every ``interval`` seconds in a thread and sums,
per process (keyed by pid + start time, so a reused pid is a new process), the user + system
time it used inside the window: processes that existed at the start count from their value then,
processes born inside the window count from zero, processes that die count up to their last
sample (at most one interval is lost per death; backends of a connection pool and django-q2's
workers live for the whole run). Groups:

* ``web`` / ``worker`` / ``esp`` / ``loadgen``: the process trees of what the stack started;
* ``postgres``: the cluster's backends serving *this run's database* plus the cluster's
  background processes (checkpointer, WAL writer, background writer, autovacuum, …);
* ``postgres_cluster``: every process of the cluster, including other databases' backends (on a
  shared machine that includes other people's work; on a quiet machine it equals ``postgres``);
* ``redis``: the ``redis-server`` process listening on ``REDIS_URL``'s port (all its databases);
* ``orchestrator``: this process (setup, sampling); reported, never part of ``system``.

``system`` = web + worker + esp + postgres + redis: what the system under test and its fakes
cost. ``total`` adds the load generator. Figures per event divide these by the events.

Ports: from ``BENCH_PORT_BASE`` upwards (e.g. 8600 for helper 6) when set, else free ports the
kernel hands out; everything binds 127.0.0.1 only.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

import httpx

from bench.chaos.infra import port_free, wait_port
from bench.common import ROOT, Installation, log

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
READY_TIMEOUT = 120.0
_port_lock = threading.Lock()
_next_port: int | None = None


def free_port() -> int:
    """A free TCP port on 127.0.0.1: from ``BENCH_PORT_BASE`` upwards if set, else the kernel's."""
    global _next_port
    base = os.environ.get("BENCH_PORT_BASE")
    with _port_lock:
        if base:
            if _next_port is None:
                _next_port = int(base)
            for _ in range(100):
                port, _next_port = _next_port, _next_port + 1
                if port_free(port):
                    return port
            raise RuntimeError(f"no free port in 100 from BENCH_PORT_BASE={base}")
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            return int(sock.getsockname()[1])


# --- /proc ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProcInfo:
    pid: int
    ppid: int
    start: int  # start time in clock ticks since boot: with the pid, identifies the process
    cpu_ticks: int  # utime + stime (not the children's: each child is counted on its own)
    comm: str


def read_proc(pid: int) -> ProcInfo | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    close = text.rindex(")")
    comm = text[text.index("(") + 1 : close]
    fields = text[close + 2 :].split()
    if fields[0] == "Z":
        return None
    return ProcInfo(pid, int(fields[1]), int(fields[19]), int(fields[11]) + int(fields[12]), comm)


def machine_busy_seconds() -> float:
    """CPU seconds the whole machine spent busy since boot (all cores; /proc/stat, idle and iowait excluded)."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    except OSError:
        return 0.0
    values = [int(v) for v in fields]
    busy = sum(values[:8]) - values[3] - values[4]  # user nice system idle iowait irq softirq steal
    return busy / CLOCK_TICKS


def all_procs() -> dict[int, ProcInfo]:
    found: dict[int, ProcInfo] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            info = read_proc(int(entry.name))
            if info is not None:
                found[info.pid] = info
    return found


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def descendants(root: int, procs: dict[int, ProcInfo]) -> set[int]:
    """``root`` and every live process below it."""
    children: dict[int, list[int]] = {}
    for info in procs.values():
        children.setdefault(info.ppid, []).append(info.pid)
    found = {root} if root in procs else set()
    frontier = [root]
    while frontier:
        for child in children.get(frontier.pop(), []):
            if child not in found:
                found.add(child)
                frontier.append(child)
    return found


def postmaster_pid(database_url: str) -> int | None:
    """The postmaster of the cluster behind ``database_url``: the parent of one of its backends."""
    import psycopg

    with psycopg.connect(database_url, connect_timeout=5) as conn:
        row = conn.execute("SELECT pg_backend_pid()").fetchone()
    if not row:
        return None
    info = read_proc(int(row[0]))
    return info.ppid if info else None


def redis_pid(redis_url: str) -> int | None:
    """The redis-server process listening on the URL's port (read from its command line)."""
    port = urlsplit(redis_url).port or 6379
    for info in all_procs().values():
        if info.comm.startswith("redis-server"):
            line = cmdline(info.pid)
            if f":{port}" in line or f"--port {port}" in line or (port == 6379 and ":" not in line):
                return info.pid
    return None


_CLIENT = re.compile(r"^(\[local\]|[0-9A-Fa-f.:]+\(\d+\))$")


def postgres_process_is_ours(line: str, database_name: str) -> bool:
    """Whether a postgres process (by its title) works for the run's database(s).

    Backends read ``postgres: [cluster: ]user database host(port) state``; autovacuum workers
    ``postgres: [cluster: ]autovacuum worker database``; the cluster's own processes
    (checkpointer, walwriter, …) name no database and count for every run. Databases named after
    the run's (the peer's ``<name>_hq``) count as the run's.
    """
    tokens = line.split()
    for i, token in enumerate(tokens):
        if _CLIENT.match(token) and i >= 2:
            return bool(database_name) and tokens[i - 1].startswith(database_name)
    if "autovacuum worker" in line and not line.rstrip().endswith("worker"):
        return bool(database_name) and tokens[-1].startswith(database_name)
    return True


# --- the meter -----------------------------------------------------------------------------------

SYSTEM_GROUPS = ("web", "worker", "esp", "postgres", "redis")


@dataclass
class CpuMeter:
    """Sums CPU seconds per group of processes over a window; see the module docstring."""

    roots: dict[str, list[int]]  # group -> pids whose whole trees belong to it (may grow while running)
    postmaster: int | None = None
    database_name: str = ""
    redis: int | None = None
    interval: float = 0.25
    reported: dict[int, float] = field(default_factory=dict)  # pid -> CPU seconds a process reported at its exit
    exclude: set[int] = field(default_factory=set)  # e.g. the backend of the orchestrator's own counting queries
    _first: dict[tuple[int, int], int] = field(default_factory=dict)
    _last: dict[tuple[int, int], int] = field(default_factory=dict)
    _group: dict[tuple[int, int], str] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _thread: threading.Thread | None = None
    _started_at: float = 0.0
    _seconds: float = 0.0
    _self_start: float = 0.0
    _self_cpu: float = 0.0
    _machine_start: float = 0.0
    _machine_busy: float = 0.0
    _samples: int = 0

    def _classify(self, procs: dict[int, ProcInfo]) -> dict[int, str]:
        groups: dict[int, str] = {}
        for group, pids in list(self.roots.items()):
            for root in list(pids):
                for pid in descendants(root, procs):
                    groups.setdefault(pid, group)
        if self.postmaster is not None:
            for pid in descendants(self.postmaster, procs):
                if pid in groups or pid in self.exclude:
                    continue
                ours = postgres_process_is_ours(cmdline(pid), self.database_name)
                groups[pid] = "postgres" if ours else "postgres_other"
        if self.redis is not None and self.redis in procs:
            groups.setdefault(self.redis, "redis")
        return groups

    def _sample(self, first: bool = False) -> None:
        with self._lock:
            self._sample_locked(first)

    def _sample_locked(self, first: bool) -> None:
        procs = all_procs()
        groups = self._classify(procs)
        for pid, group in groups.items():
            info = procs.get(pid)
            if info is None:
                continue
            key = (pid, info.start)
            if key not in self._first:
                # present at the start: count from now; born inside the window: count from zero
                self._first[key] = info.cpu_ticks if first else 0
                self._group[key] = group
            self._last[key] = info.cpu_ticks
        self._samples += 1

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def start(self) -> CpuMeter:
        self._sample(first=True)
        self._started_at = time.monotonic()
        self._self_start = time.process_time()
        self._machine_start = machine_busy_seconds()
        self._thread = threading.Thread(target=self._run, name="cpu-meter", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> dict[str, float]:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._sample()
        self._seconds = time.monotonic() - self._started_at
        self._self_cpu = time.process_time() - self._self_start
        self._machine_busy = machine_busy_seconds() - self._machine_start
        return self.result()

    def __enter__(self) -> CpuMeter:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        if not self._stop.is_set():
            self.stop()

    def snapshot(self) -> dict[str, float]:
        """The result so far, without stopping (e.g. at the end of the load, before a drain)."""
        self._sample()
        self._seconds = time.monotonic() - self._started_at
        self._self_cpu = time.process_time() - self._self_start
        self._machine_busy = machine_busy_seconds() - self._machine_start
        return self.result()

    def result(self) -> dict[str, float]:
        """CPU seconds per group, plus ``system``, ``total``, ``wall_seconds`` and the sampling count."""
        sums: dict[str, float] = {g: 0.0 for g in (*SYSTEM_GROUPS, "loadgen")}
        other = 0.0
        with self._lock:
            firsts = list(self._first.items())
        for key, first in firsts:
            used = (self._last.get(key, first) - first) / CLOCK_TICKS
            group = self._group[key]
            if first == 0 and key[0] in self.reported:  # born in the window, exited: its own whole count
                used = max(used, self.reported[key[0]])
            if group == "postgres_other":
                other += used
            else:
                sums[group] = sums.get(group, 0.0) + used
        sums["postgres_cluster"] = sums["postgres"] + other
        sums["system"] = sum(sums[g] for g in SYSTEM_GROUPS)
        sums["total"] = sums["system"] + sums["loadgen"]
        sums["orchestrator"] = self._self_cpu
        # cores busy on average: system CPU over wall time (2.0 = both cores of a 2-core machine)
        sums["system_cores"] = sums["system"] / self._seconds if self._seconds else 0.0
        sums["postgres_share"] = sums["postgres"] / sums["system"] if sums["system"] else 0.0
        # the whole machine's busy cores, and what of it was not this run's (other work on a shared machine)
        sums["machine_cores"] = self._machine_busy / self._seconds if self._seconds else 0.0
        sums["other_cores"] = max(
            0.0,
            sums["machine_cores"]
            - sums["system_cores"]
            - ((sums["loadgen"] + self._self_cpu) / self._seconds if self._seconds else 0.0),
        )
        sums = {k: round(v, 3) for k, v in sums.items()}
        sums["wall_seconds"] = round(self._seconds, 3)
        sums["samples"] = self._samples
        return sums


def per_unit(cpu: dict[str, float], units: float, scale: float = 1000.0) -> dict[str, float]:
    """CPU per event (ms by default) of each group: the steadiest figure on a shared machine."""
    keys = (*SYSTEM_GROUPS, "loadgen", "postgres_cluster", "system", "total")
    return {k: round(cpu.get(k, 0.0) * scale / units, 3) if units else 0.0 for k in keys}


# --- processes -----------------------------------------------------------------------------------


@dataclass
class Proc:
    """One subprocess in its own process group, output appended to ``log_path``."""

    name: str
    argv: list[str]
    env: dict[str, str]
    log_path: Path
    popen: subprocess.Popen[bytes] | None = None

    def start(self) -> Proc:
        with self.log_path.open("ab") as out:
            self.popen = subprocess.Popen(
                self.argv,
                cwd=ROOT,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def tail(self, chars: int = 3000) -> str:
        if not self.log_path.exists():
            return ""
        return self.log_path.read_bytes()[-chars:].decode("utf-8", errors="replace")

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM to the leader (qcluster and uvicorn stop their own children), then SIGKILL the group."""
        if self.popen is None:
            return
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.popen.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(timeout=timeout)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout=5)


@dataclass
class Stack:
    """Fake ESP + ``web_processes`` uvicorn processes + ``worker_processes`` clarion_worker processes."""

    installation: Installation
    web_processes: int = 1
    worker_processes: int = 1
    # API-only uvicorn processes on a port of their own (WEB_HTTP_THREADS=api_threads), beside the
    # ``web`` processes, which then serve the websockets: the split deployment (docs/deployment.md)
    api_processes: int = 0
    api_threads: int = 10
    cluster_workers: int | None = None  # CLARION_WORKERS per worker process; None: the settings' default
    esp: bool = True
    extra_env: dict[str, str] = field(default_factory=dict)
    settings_module: str = "bench.settings"
    procs: list[Proc] = field(default_factory=list)
    web: Proc | None = None
    api: Proc | None = None
    workers: list[Proc] = field(default_factory=list)
    esp_proc: Proc | None = None
    web_port: int = 0
    api_port: int = 0
    esp_port: int = 0
    loadgens: list[int] = field(default_factory=list)
    _meters: list[CpuMeter] = field(default_factory=list)
    _environments: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.web_port}"

    @property
    def api_url(self) -> str:
        """Where API requests go: the API-only processes when there are any, else ``base_url``."""
        return f"http://127.0.0.1:{self.api_port}" if self.api_port else self.base_url

    @property
    def web_pids(self) -> list[int]:
        return [proc.pid for proc in (self.web, self.api) if proc is not None]

    @property
    def esp_url(self) -> str:
        return f"http://127.0.0.1:{self.esp_port}/"

    @property
    def esp_log(self) -> Path:
        return self.installation.var_dir / "esp.sqlite3"

    def env(self, **extra: str) -> dict[str, str]:
        env = self.installation.process_env(DJANGO_SETTINGS_MODULE=self.settings_module, **self.extra_env)
        if self.cluster_workers:
            env["CLARION_WORKERS"] = str(self.cluster_workers)
        if self.web_port:
            env["CLARION_PUBLIC_URL"] = self.base_url
        env.update(extra)
        return env

    def _spawn(self, name: str, argv: list[str], env: dict[str, str]) -> Proc:
        proc = Proc(name, argv, env, self.installation.var_dir / f"{name}.log").start()
        self.procs.append(proc)
        return proc

    # --- lifecycle ---

    def start(self, *, web: bool = True, workers: bool = True, environment: str | None = None) -> Stack:
        """Migrate, then start everything at once and wait until each part is ready.

        ``environment``: also run ``create_environment NAME`` meanwhile; :meth:`environment` then
        returns its keys without waiting again."""
        self.installation.migrate()
        creating = None
        if environment is not None:
            creating = subprocess.Popen(
                [sys.executable, "manage.py", "create_environment", environment, "--json"],
                cwd=ROOT,
                env=self.installation.process_env(),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        if web:
            self.web_port = free_port()  # first: the workers' CLARION_PUBLIC_URL names it
            if self.api_processes:
                self.api_port = free_port()
        if self.esp:
            self._spawn_esp()
        if web:
            self._spawn_web()
            if self.api_processes:
                self.api = self._spawn_uvicorn(
                    "web-api", self.api_port, self.api_processes, WEB_HTTP_THREADS=str(self.api_threads)
                )
        started = self._spawn_workers(self.worker_processes) if workers else []
        if self.esp:
            self._wait_esp()
        if web:
            self._wait_web()
            if self.api is not None:
                self._wait_uvicorn(self.api, self.api_port, self.api_processes)
        self._wait_workers(started)
        if creating is not None and environment is not None:
            out, err = creating.communicate(timeout=300)
            if creating.returncode != 0:
                raise RuntimeError(f"create_environment {environment} exited {creating.returncode}\n{out}\n{err}")
            self._environments[environment] = dict(json.loads(out[out.index("{") :]))
        return self

    def start_esp(self) -> None:
        self._spawn_esp()
        self._wait_esp()

    def _spawn_esp(self) -> None:
        self.esp_port = free_port()
        self.esp_proc = self._spawn(
            "esp",
            [
                sys.executable,
                "-m",
                "bench.chaos.fake_esp",
                "--name",
                "bench",
                "--port",
                str(self.esp_port),
                "--log",
                str(self.esp_log),
                "--max-seconds",
                "3600",
            ],
            self.env(),
        )

    def _wait_esp(self) -> None:
        assert self.esp_proc is not None
        if not wait_port(self.esp_port, 60):
            raise RuntimeError(f"the fake ESP did not listen on {self.esp_port}\n{self.esp_proc.tail()}")

    def start_web(self) -> None:
        self.web_port = self.web_port or free_port()
        self._spawn_web()
        self._wait_web()

    def _spawn_web(self) -> None:
        self.web = self._spawn_uvicorn("web", self.web_port, self.web_processes)

    def _spawn_uvicorn(self, name: str, port: int, processes: int, **env: str) -> Proc:
        argv = [
            sys.executable,
            "-m",
            "uvicorn",
            "config.asgi:application",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            str(processes),
            "--no-access-log",
            "--log-level",
            "warning",
        ]
        return self._spawn(name, argv, self.env(**env))

    def _wait_web(self) -> None:
        assert self.web is not None
        self._wait_uvicorn(self.web, self.web_port, self.web_processes)

    def _wait_uvicorn(self, proc: Proc, port: int, processes: int) -> None:
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            if not proc.alive():
                raise RuntimeError(f"uvicorn exited during start-up\n{proc.tail()}")
            if wait_port(port, 0.5):
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(f"http://127.0.0.1:{port}/api/v1/events/trigger", timeout=10).status_code < 500:
                        break
        else:
            raise RuntimeError(f"uvicorn not ready after {READY_TIMEOUT:.0f} s\n{proc.tail()}")
        if processes > 1:  # every server process has imported Django before the load starts
            want = processes + 1
            while time.monotonic() < deadline and len(descendants(proc.pid, all_procs())) < want:
                time.sleep(0.2)
            time.sleep(2.0)

    def start_workers(self, count: int | None = None) -> None:
        self._wait_workers(self._spawn_workers(self.worker_processes if count is None else count))

    def _spawn_workers(self, count: int) -> list[Proc]:
        env = self.env()
        started = [
            self._spawn(f"worker{len(self.workers) + i}", [sys.executable, "manage.py", "clarion_worker"], env)
            for i in range(count)
        ]
        self.workers.extend(started)
        return started

    def _wait_workers(self, started: list[Proc]) -> None:
        """Ready: each sentinel has forked its pusher, monitor and every cluster worker."""
        per_process = int(self.env().get("CLARION_WORKERS") or 2)
        deadline = time.monotonic() + READY_TIMEOUT
        for proc in started:
            while len(descendants(proc.pid, all_procs())) < per_process + 4:
                if not proc.alive():
                    raise RuntimeError(f"{proc.name} exited during start-up\n{proc.tail()}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{proc.name} not ready after {READY_TIMEOUT:.0f} s\n{proc.tail()}")
                time.sleep(0.2)
        for meter in self._meters:
            meter.roots["worker"] = [w.pid for w in self.workers]

    def stop_workers(self) -> None:
        for proc in self.workers:
            proc.stop()
        self.workers = []

    def stop(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()
        self.procs = []
        self.workers = []

    def __enter__(self) -> Stack:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # --- helpers ---

    def environment(self, name: str = "bench") -> dict[str, Any]:
        """``manage.py create_environment NAME --json``: ``secret_key``, ``environment`` …"""
        if name in self._environments:
            return self._environments[name]
        out = self.installation.manage("create_environment", name, "--json")
        self._environments[name] = dict(json.loads(out[out.index("{") :]))
        return self._environments[name]

    def client(self, secret_key: str, timeout: float = 60) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, headers={"Authorization": f"Bearer {secret_key}"}, timeout=timeout)

    def email_integration(self, client: httpx.Client, name: str = "bench-esp") -> int:
        """A Postmark integration pointing at the fake ESP; returns its id."""
        response = client.post(
            "/api/v1/integrations",
            json={
                "channel": "email",
                "provider": "postmark",
                "name": name,
                "priority": 0,
                "credentials": {"server_token": "bench", "api_url": self.esp_url},
                "settings": {"from_email": "Clarion bench <bench@example.test>", "timeout": 10},
            },
        )
        if response.status_code not in (200, 201):
            raise RuntimeError(f"POST /api/v1/integrations: {response.status_code} {response.text[:500]}")
        return int(response.json()["id"])

    def esp_accepted(self) -> int:
        """Emails the fake ESP accepted so far (distinct Clarion message ids)."""
        if not self.esp_log.exists():
            return 0
        with contextlib.closing(sqlite3.connect(self.esp_log, timeout=10)) as db:
            row = db.execute(
                "SELECT COUNT(DISTINCT message_id) FROM requests WHERE outcome IN ('accepted', 'accepted_late')"
            ).fetchone()
        return int(row[0] or 0)

    def esp_requests(self) -> int:
        if not self.esp_log.exists():
            return 0
        with contextlib.closing(sqlite3.connect(self.esp_log, timeout=10)) as db:
            row = db.execute("SELECT COUNT(*) FROM requests").fetchone()
        return int(row[0] or 0)

    def meter(self, interval: float = 0.25) -> CpuMeter:
        """A CPU meter over every process of this run (not started: use it as a context manager)."""
        roots: dict[str, list[int]] = {"loadgen": self.loadgens}
        if self.web_pids:
            roots["web"] = self.web_pids
        roots["worker"] = [w.pid for w in self.workers]
        if self.esp_proc is not None:
            roots["esp"] = [self.esp_proc.pid]
        meter = CpuMeter(
            roots=roots,
            postmaster=self.installation.postmaster(),
            database_name=self.installation.database_name,
            redis=redis_pid(self.installation.redis_url) if self.installation.redis_url else None,
            interval=interval,
        )
        self._meters.append(meter)
        return meter

    def loadgen(self, args: list[str], secret_key: str, timeout: float | None = None) -> dict[str, Any]:
        """Run ``python -m bench.loadgen ARGS`` in its own process (measured as ``loadgen``); its JSON result."""
        out_path = self.installation.var_dir / f"loadgen-{time.monotonic_ns()}.json"
        argv = [sys.executable, "-m", "bench.loadgen", "--url", self.base_url, "--out", str(out_path), *args]
        env = self.env(BENCH_SECRET_KEY=secret_key)
        proc = Proc("loadgen", argv, env, self.installation.var_dir / "loadgen.log").start()
        self.loadgens.append(proc.pid)
        try:
            assert proc.popen is not None
            proc.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.stop()
            raise RuntimeError(f"the load generator did not finish in {timeout} s\n{proc.tail()}") from None
        finally:
            with contextlib.suppress(ValueError):
                self.loadgens.remove(proc.pid)
        if (proc.popen is not None and proc.popen.returncode != 0) or not out_path.exists():
            raise RuntimeError(f"the load generator failed\n{proc.tail()}")
        result = dict(json.loads(out_path.read_text()))
        for meter in self._meters:  # the sampler may have missed its last fraction of a second
            meter.reported[proc.pid] = float(result.get("cpu_seconds", 0.0))
        return result


@contextlib.contextmanager
def running(installation: Installation, **options: Any) -> Iterator[Stack]:
    """``with running(installation, web_processes=2) as stack:`` — started, and always stopped."""
    stack = Stack(installation, **options)
    try:
        stack.start()
        yield stack
    finally:
        stack.stop()


def main(argv: list[str] | None = None) -> int:
    """``python -m bench.procs``: start a stack, measure 5 idle seconds, stop. A self-check."""
    installation = Installation.create()
    try:
        with running(installation) as stack:
            log(f"stack up: web {stack.base_url}, {len(stack.workers)} worker(s), ESP {stack.esp_url}")
            with stack.meter() as meter:
                time.sleep(5)
            print(json.dumps(meter.result(), indent=2))
    finally:
        installation.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
