"""Ingest: requests/s of the trigger API against a bare DRF endpoint on one real uvicorn process.

The server is ``uvicorn config.asgi:application`` (one worker, ``DEBUG=0``, access log off) with
``DJANGO_SETTINGS_MODULE=bench.settings`` (Clarion's settings + ``POST /bench/bare``). No
qcluster runs: the trigger only enqueues ``process_event`` (on the ORM broker an INSERT into
django-q2's queue table, on Redis an RPUSH), which is part of the honest cost of an accepted event.

Load comes from this process (asyncio + ``httpx.AsyncClient``, ``concurrency`` keep-alive
connections), alternating bare and trigger rounds so that drift (a warming cache, a growing
table, a noisy neighbour) hits both the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bench.common import ROOT, Installation, log, median, percentile

TRIGGER_PATH = "/api/v1/events/trigger"
BARE_PATH = "/bench/bare"
WORKFLOW_KEY = "bench"
TEMPLATE_KEY = "bench-in-app"
START_TIMEOUT = 90.0


@dataclass(frozen=True)
class IngestConfig:
    requests: int = 3000  # per endpoint, timed
    concurrency: int = 16
    rounds: int = 3  # the timed requests are split in this many alternating rounds
    warmup: int = 300  # per endpoint, untimed
    subscriber_pool: int = 100  # triggers go to one of this many subscriber ids (created during warm-up)

    @classmethod
    def quick(cls) -> IngestConfig:
        return cls(requests=200, concurrency=4, rounds=1, warmup=20, subscriber_pool=10)


@dataclass
class PhaseResult:
    requests: int = 0
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    first_error: str = ""
    server_cpu_seconds: float = 0.0
    round_rps: list[float] = field(default_factory=list)

    def add(self, other: PhaseResult) -> None:
        self.requests += other.requests
        self.seconds += other.seconds
        self.latencies.extend(other.latencies)
        self.errors += other.errors
        self.first_error = self.first_error or other.first_error
        self.server_cpu_seconds += other.server_cpu_seconds
        self.round_rps.append(other.requests / other.seconds if other.seconds else 0.0)

    def summary(self) -> dict[str, Any]:
        lat = sorted(self.latencies)
        return {
            "requests": self.requests,
            "errors": self.errors,
            "first_error": self.first_error or None,
            "seconds": round(self.seconds, 3),
            "requests_per_s": round(median(self.round_rps), 1),
            "round_requests_per_s": [round(r, 1) for r in self.round_rps],
            "p50_ms": round(percentile(lat, 50) * 1000, 2),
            "p99_ms": round(percentile(lat, 99) * 1000, 2),
            "server_cpu_ms_per_request": round(self.server_cpu_seconds * 1000 / self.requests, 3)
            if self.requests
            else 0.0,
        }


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads), from /proc; 0 where unavailable."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Server:
    """``uvicorn config.asgi:application`` in its own process group, output to a log file."""

    def __init__(self, installation: Installation) -> None:
        self.installation = installation
        self.port = _free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.log_path = installation.var_dir / "uvicorn.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        argv = [
            sys.executable,
            "-m",
            "uvicorn",
            "config.asgi:application",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--workers",
            "1",
            "--no-access-log",
            "--log-level",
            "warning",
        ]
        with self.log_path.open("ab") as out:
            self.proc = subprocess.Popen(
                argv,
                cwd=ROOT,
                env=self.installation.process_env(CLARION_PUBLIC_URL=self.base_url),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")[-6000:] if self.log_path.exists() else ""

    def wait_ready(self, secret_key: str) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        last = "no answer yet"
        with httpx.Client(base_url=self.base_url, timeout=5) as client:
            while time.monotonic() < deadline:
                if self.proc is None or self.proc.poll() is not None:
                    raise RuntimeError(f"uvicorn exited before it was ready\n{self.output()}")
                try:
                    response = client.post(BARE_PATH, json={}, headers={"Authorization": f"Bearer {secret_key}"})
                    if response.status_code == 202:
                        return
                    last = f"{response.status_code}: {response.text[:300]}"
                except httpx.HTTPError as exc:
                    last = repr(exc)
                time.sleep(0.2)
        raise RuntimeError(f"uvicorn not ready after {START_TIMEOUT:.0f} s ({last})\n{self.output()}")

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=10)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)  # our own process group only
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=5)


def _bodies(count: int, offset: int, pool: int) -> list[bytes]:
    """The same trigger body for both endpoints: one subscriber id from a small pool, a payload."""
    return [
        json.dumps(
            {
                "workflow": WORKFLOW_KEY,
                "to": [f"bench-user-{i % pool}"],
                "payload": {"title": "Order shipped", "order_id": i, "products": ["book", "lamp"]},
            },
            separators=(",", ":"),
        ).encode()
        for i in range(offset, offset + count)
    ]


async def _run_phase(
    client: httpx.AsyncClient, path: str, bodies: list[bytes], concurrency: int, server_pid: int
) -> PhaseResult:
    result = PhaseResult(requests=len(bodies))
    counter = itertools.count()

    async def worker() -> None:
        while True:
            i = next(counter)
            if i >= len(bodies):
                return
            started = time.perf_counter()
            try:
                response = await client.post(path, content=bodies[i])
                status, text = response.status_code, response.text
            except httpx.HTTPError as exc:
                status, text = 0, repr(exc)
            result.latencies.append(time.perf_counter() - started)
            if status != 202:
                result.errors += 1
                result.first_error = result.first_error or f"{status}: {text[:300]}"

    cpu_before = _cpu_seconds(server_pid)
    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    result.seconds = time.perf_counter() - started
    result.server_cpu_seconds = _cpu_seconds(server_pid) - cpu_before
    return result


async def _load(base_url: str, secret_key: str, config: IngestConfig, server_pid: int) -> dict[str, PhaseResult]:
    headers = {"Authorization": f"Bearer {secret_key}", "Content-Type": "application/json"}
    limits = httpx.Limits(max_connections=config.concurrency, max_keepalive_connections=config.concurrency)
    totals = {"bare": PhaseResult(), "trigger": PhaseResult()}
    paths = {"bare": BARE_PATH, "trigger": TRIGGER_PATH}
    async with httpx.AsyncClient(base_url=base_url, headers=headers, limits=limits, timeout=60) as client:
        log(f"ingest: warm-up, {config.warmup} requests per endpoint")
        warm = _bodies(config.warmup, 0, config.subscriber_pool)
        for name in ("bare", "trigger"):
            phase = await _run_phase(client, paths[name], warm, config.concurrency, server_pid)
            if phase.errors:
                raise RuntimeError(f"warm-up of {name} failed: {phase.errors} errors, first: {phase.first_error}")
        per_round = max(1, config.requests // config.rounds)
        offset = config.warmup
        for round_index in range(config.rounds):
            order = ("bare", "trigger") if round_index % 2 == 0 else ("trigger", "bare")
            bodies = _bodies(per_round, offset, config.subscriber_pool)
            offset += per_round
            for name in order:
                phase = await _run_phase(client, paths[name], bodies, config.concurrency, server_pid)
                totals[name].add(phase)
                log(
                    f"ingest: round {round_index + 1}/{config.rounds} {name:7s} "
                    f"{phase.requests / phase.seconds:8.1f} req/s ({phase.errors} errors)"
                )
    return totals


def _query_counts(installation: Installation, secret_key: str) -> dict[str, int]:
    """SQL queries per request, counted in this process through Django's test client (same DB)."""
    installation.setup_django()
    from django.db import connection
    from django.test.utils import CaptureQueriesContext
    from rest_framework.test import APIClient

    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {secret_key}")
    body = json.loads(_bodies(1, 10_000_000, 1)[0])
    counts: dict[str, int] = {}
    for name, path in (("bare", BARE_PATH), ("trigger", TRIGGER_PATH)):
        client.post(path, body, format="json")  # the subscriber exists after the first call
        with CaptureQueriesContext(connection) as queries:
            response = client.post(path, body, format="json")
        if response.status_code != 202:
            raise RuntimeError(f"{path} answered {response.status_code}: {response.content[:300]!r}")
        counts[name] = len(queries)
    return counts


def profile_trigger(installation: Installation, secret_key: str, requests: int = 300) -> str:
    """cProfile of ``requests`` trigger calls through Django's test client (no uvicorn)."""
    import cProfile
    import io
    import pstats

    installation.setup_django()
    from rest_framework.test import APIClient

    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {secret_key}")
    bodies = [json.loads(b) for b in _bodies(requests, 20_000_000, 10)]
    for body in bodies[:20]:
        client.post(TRIGGER_PATH, body, format="json")
    profiler = cProfile.Profile()
    profiler.enable()
    for body in bodies:
        client.post(TRIGGER_PATH, body, format="json")
    profiler.disable()
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out).sort_stats("cumulative")
    stats.print_stats(40)
    out.write("\n--- by own time ---\n")
    stats.sort_stats("tottime").print_stats(25)
    return out.getvalue()


def _api(client: httpx.Client, method: str, path: str, body: dict[str, Any], expected: tuple[int, ...]) -> None:
    response = client.request(method, path, json=body)
    if response.status_code not in expected:
        raise RuntimeError(f"{method} {path} answered {response.status_code}: {response.text[:500]}")


def _ratio(numerator: float, denominator: float) -> float:
    return round(numerator / denominator, 3) if denominator else 0.0


def run(installation: Installation, config: IngestConfig, *, profile: bool = False) -> dict[str, Any]:
    log("ingest: migrating and creating the environment")
    installation.manage("migrate", "--noinput")
    created = installation.manage("create_environment", "bench", "--json")
    keys = json.loads(created[created.index("{") :])
    secret_key = keys["secret_key"]

    server = Server(installation)
    server.start()
    try:
        server.wait_ready(secret_key)
        with httpx.Client(
            base_url=server.base_url, headers={"Authorization": f"Bearer {secret_key}"}, timeout=30
        ) as client:
            _api(
                client,
                "PUT",
                f"/api/v1/templates/{TEMPLATE_KEY}",
                {
                    "channel": "in_app",
                    "content": {
                        "en": {
                            "title": "{{ payload.title }}",
                            "body": "Hello {{ subscriber.first_name }}, order {{ payload.order_id }} has shipped.",
                        }
                    },
                    "publish": True,
                },
                (200, 201),
            )
            _api(
                client,
                "PUT",
                f"/api/v1/workflows/{WORKFLOW_KEY}",
                {
                    "name": "Bench",
                    "steps": [{"id": "inbox", "type": "in_app", "template": TEMPLATE_KEY}],
                    "publish": True,
                },
                (200, 201),
            )
        log(
            f"ingest: uvicorn pid {server.pid} on {server.base_url}; {config.requests} timed requests per endpoint, "
            f"{config.concurrency} connections, {config.rounds} alternating rounds"
        )
        client_cpu_before = time.process_time()
        totals = asyncio.run(_load(server.base_url, secret_key, config, server.pid))
        client_cpu = time.process_time() - client_cpu_before
    except Exception:
        log(f"ingest failed; the server's log ({server.log_path}) ends with:\n{server.output()}")
        raise
    finally:
        server.stop()

    for name, phase in totals.items():
        if phase.errors:
            raise RuntimeError(f"ingest {name}: {phase.errors} failed requests; first: {phase.first_error}")
    bare, trigger = totals["bare"].summary(), totals["trigger"].summary()
    result: dict[str, Any] = {
        "config": {
            "requests_per_endpoint": totals["bare"].requests,
            "concurrency": config.concurrency,
            "rounds": config.rounds,
            "warmup_per_endpoint": config.warmup,
            "subscriber_pool": config.subscriber_pool,
            "server": "uvicorn config.asgi:application, 1 worker, DEBUG=0, --no-access-log",
            "client": "asyncio + httpx.AsyncClient in the bench process",
        },
        "bare": bare,
        "trigger": trigger,
        "ratio_trigger_over_bare": _ratio(trigger["requests_per_s"], bare["requests_per_s"]),
        # Server CPU per request is steadier than req/s on a shared machine: the same ratio,
        # measured as the inverse of CPU cost (what throughput would be if the server were CPU-bound).
        "cpu_ratio_trigger_over_bare": _ratio(bare["server_cpu_ms_per_request"], trigger["server_cpu_ms_per_request"]),
        "client_cpu_seconds": round(client_cpu, 2),
    }
    result["queries_per_request"] = _query_counts(installation, secret_key)
    if profile:
        log("ingest: profiling trigger requests in-process (cProfile)")
        result["profile"] = profile_trigger(installation, secret_key)
    return result
