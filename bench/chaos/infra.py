"""The processes the suite owns: its PostgreSQL cluster, its Redis, and any managed subprocess.

Nothing here touches the machine's shared PostgreSQL (5432) or Redis (6379): the cluster is a
fresh ``initdb`` under the run's temporary folder on port 5499 (run as the ``postgres`` user
when the suite runs as root), Redis a ``redis-server --port 6399`` child without persistence.
Every subprocess gets its own process group, so a kill reaches everything it forked and only that.
"""

from __future__ import annotations

import contextlib
import glob
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.common import ROOT


def log(message: str) -> None:
    print(f"[chaos {time.strftime('%H:%M:%S')}] {message}", flush=True)


def port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def wait_port(port: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.settimeout(0.5)
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return True
        time.sleep(0.1)
    return False


@dataclass
class Managed:
    """One long-running subprocess in its own process group; output appended to ``log_path``."""

    name: str
    argv: list[str]
    env: dict[str, str]
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0

    def start(self) -> None:
        self.starts += 1
        with self.log_path.open("ab") as out:
            out.write(f"\n===== [{time.strftime('%H:%M:%S')}] start {self.starts}: {' '.join(self.argv)}\n".encode())
            out.flush()
            self.proc = subprocess.Popen(
                self.argv,
                cwd=ROOT,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill_group(self) -> None:
        """SIGKILL the whole process group at once: a crash, or an OOM kill of the unit."""
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)

    def descendants(self) -> list[tuple[int, int]]:
        """(pid, depth) of every live process below the leader, read from /proc."""
        if not self.alive() or self.proc is None:
            return []
        children: dict[int, list[int]] = {}
        for stat in glob.glob("/proc/[0-9]*/stat"):
            try:
                text = Path(stat).read_text()
            except OSError:
                continue
            fields = text[text.rindex(")") + 2 :].split()
            pid, ppid, state = int(stat.split("/")[2]), int(fields[1]), fields[0]
            if state != "Z":
                children.setdefault(ppid, []).append(pid)
        found: list[tuple[int, int]] = []
        frontier = [(self.proc.pid, 0)]
        while frontier:
            parent, depth = frontier.pop()
            for child in children.get(parent, []):
                found.append((child, depth + 1))
                frontier.append((child, depth + 1))
        return found

    def kill_one_child(self, rng: random.Random) -> int | None:
        """SIGKILL one process of the tree: a leaf at the deepest level (a django-q2 worker process)."""
        tree = self.descendants()
        if not tree:
            return None
        parents = set()
        for pid, _depth in tree:
            with contextlib.suppress(OSError, ValueError, IndexError):
                text = Path(f"/proc/{pid}/stat").read_text()
                parents.add(int(text[text.rindex(")") + 2 :].split()[1]))
        leaves = [(pid, depth) for pid, depth in tree if pid not in parents]
        deepest = max(depth for _pid, depth in leaves)
        victim = rng.choice(sorted(pid for pid, depth in leaves if depth == deepest))
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(victim, signal.SIGKILL)
        return victim

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM to the leader (qcluster stops its own children), then SIGKILL what is left."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=timeout)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=5)

    def tail(self, chars: int = 4000) -> str:
        if not self.log_path.exists():
            return ""
        return self.log_path.read_bytes()[-chars:].decode("utf-8", errors="replace")


def postgres_bindir() -> Path | None:
    initdb = shutil.which("initdb")
    if initdb:
        return Path(initdb).resolve().parent  # Debian links a few binaries into /usr/local/bin
    candidates = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda p: [int(n) for n in re.findall(r"\d+", Path(p).parent.parent.name)],
    )
    return Path(candidates[-1]).parent if candidates else None


def redis_server() -> str | None:
    return shutil.which("redis-server")


@dataclass
class OwnPostgres:
    """A throwaway cluster: ``initdb`` + ``pg_ctl`` under ``base``, listening on 127.0.0.1:``port``."""

    base: Path
    port: int = 5499
    bindir: Path | None = field(default_factory=postgres_bindir)

    @property
    def datadir(self) -> Path:
        return self.base / "data"

    @property
    def url(self) -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/clarion"

    def _run(self, *argv: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        command = list(argv)
        if os.geteuid() == 0:  # PostgreSQL refuses to run as root
            command = ["runuser", "-u", "postgres", "--", *command]
        return subprocess.run(command, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)

    def _bin(self, name: str) -> str:
        if self.bindir is None:
            raise RuntimeError("PostgreSQL server binaries not found (initdb)")
        return str(self.bindir / name)

    def init(self) -> None:
        if not port_free(self.port):
            raise RuntimeError(f"port {self.port} is taken: another chaos run? (the suite owns 5499 only)")
        self.base.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(self.base, "postgres")
        result = self._run(
            self._bin("initdb"), "-D", str(self.datadir), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"
        )
        if result.returncode != 0:
            raise RuntimeError(f"initdb failed: {result.stdout}\n{result.stderr}")
        self.start()
        created = self._run(
            self._bin("psql"),
            "-h",
            "127.0.0.1",
            "-p",
            str(self.port),
            "-U",
            "postgres",
            "-c",
            "CREATE DATABASE clarion",
        )
        if created.returncode != 0:
            raise RuntimeError(f"CREATE DATABASE failed: {created.stderr}")

    def start(self) -> None:
        options = f"-p {self.port} -k {self.base} -c listen_addresses=127.0.0.1 -c max_connections=200"
        result = self._run(
            self._bin("pg_ctl"),
            "-D",
            str(self.datadir),
            "-l",
            str(self.base / "postgres.log"),
            "-w",
            "-t",
            "60",
            "-o",
            options,
            "start",
        )
        if result.returncode != 0:
            raise RuntimeError(f"pg_ctl start failed: {result.stdout}\n{result.stderr}")

    def stop(self, mode: str = "fast") -> None:
        """``immediate`` is a crash (no checkpoint, clients cut); ``fast`` a clean shutdown."""
        if self.datadir.exists():
            self._run(self._bin("pg_ctl"), "-D", str(self.datadir), "-m", mode, "-w", "-t", "30", "stop")

    def destroy(self) -> None:
        with contextlib.suppress(Exception):
            self.stop("immediate")
        shutil.rmtree(self.datadir, ignore_errors=True)


@dataclass
class OwnRedis:
    """``redis-server`` on 127.0.0.1:``port``, no persistence: a restart comes back empty."""

    log_path: Path
    port: int = 6399
    process: Managed | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = redis_server()
        if binary is None:
            raise RuntimeError("redis-server not found")
        if self.process is None:
            if not port_free(self.port):
                raise RuntimeError(f"port {self.port} is taken: another chaos run? (the suite owns 6399 only)")
            argv = [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--daemonize",
                "no",
                "--protected-mode",
                "yes",
            ]
            self.process = Managed("redis", argv, dict(os.environ), self.log_path)
        self.process.start()
        if not wait_port(self.port, 20):
            raise RuntimeError(f"redis did not listen on {self.port}\n{self.process.tail()}")

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill_group()

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop(timeout=5)
