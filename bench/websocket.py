"""Websocket: N concurrent inbox sockets on ONE uvicorn process with Redis (channels-redis).

What it measures, against real processes (``uvicorn config.asgi:application``, one worker, and
``manage.py qcluster`` on the Redis broker), with every client in this process (asyncio +
``websockets``):

* **memory per connection**: the server's RSS with N sockets open (each authenticated, in its
  subscriber's group) minus its RSS before, divided by N;
* **push → frame**: this process does ``group_send`` on the channel layer to every subscriber's
  group (what ``apps.inbox.realtime`` does after a commit) and times each frame's arrival: Redis
  + the consumer's relay, nothing else;
* **trigger → frame, one recipient**: ``POST /api/v1/events/trigger`` to one connected
  subscriber, timed until its ``message.created`` frame arrives: the API, the queue, the worker
  running the workflow, the commit, the push and the relay;
* **trigger → frame, broadcast**: one trigger to a topic holding all N subscribers, each socket's
  arrival time (p50 / p99 / last).

Needs ``REDIS_URL`` (point it at a throwaway database: it is flushed) and uses ``DATABASE_URL``
when set (a throwaway PostgreSQL database), else SQLite in a temporary folder.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx

from bench.common import ROOT, Installation, log, median, percentile
from bench.ingest import Server

TEMPLATE_KEY = "ws-bench-in-app"
WORKFLOW_KEY = "ws-bench"
TOPIC_KEY = "ws-bench-all"
READY_TIMEOUT = 60.0
FRAME_TIMEOUT = 30.0


@dataclass(frozen=True)
class WebsocketConfig:
    clients: int = 1000
    push_rounds: int = 5
    single_pushes: int = 300
    triggers: int = 100
    trigger_concurrency: int = 4
    broadcasts: int = 3
    connect_concurrency: int = 50

    @classmethod
    def quick(cls) -> WebsocketConfig:
        return cls(clients=50, push_rounds=2, single_pushes=20, triggers=10, broadcasts=1)


def _rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat", encoding="ascii") as stat_file:
        stat = stat_file.read()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Worker:
    """``manage.py qcluster`` in its own process group."""

    def __init__(self, installation: Installation) -> None:
        self.installation = installation
        self.log_path = installation.var_dir / "qcluster.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log_path.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "manage.py", "clarion_worker"],
                cwd=ROOT,
                env=self.installation.process_env(CLARION_WORKERS="2", LOG_LEVEL="INFO"),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"qcluster exited\n{self.output()}")
            if "running." in self.output():
                return
            time.sleep(0.2)
        raise RuntimeError(f"qcluster not ready\n{self.output()}")

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")[-6000:] if self.log_path.exists() else ""

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=15)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)  # our own process group only
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=5)


class Client:
    """One subscriber's socket; records when each awaited frame arrives."""

    def __init__(self, subscriber_id: str, token: str) -> None:
        self.subscriber_id = subscriber_id
        self.token = token
        self.ws: Any = None
        self.waiting: dict[str, asyncio.Future[float]] = {}
        self.reader: asyncio.Task[None] | None = None

    def expect(self, key: str) -> asyncio.Future[float]:
        future: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self.waiting[key] = future
        return future

    async def connect(self, ws_base: str) -> None:
        from websockets.asyncio.client import connect

        self.ws = await connect(f"{ws_base}/ws/inbox/?token={quote(self.token)}", open_timeout=READY_TIMEOUT)
        ready = json.loads(await asyncio.wait_for(self.ws.recv(), timeout=READY_TIMEOUT))
        if ready.get("event") != "ready":
            raise RuntimeError(f"{self.subscriber_id}: expected ready, got {ready}")
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for raw in self.ws:
            arrived = time.perf_counter()
            frame = json.loads(raw)
            key = frame.get("bench_id") or (frame.get("message") or {}).get("title", "")
            future = self.waiting.pop(key, None)
            if future is not None and not future.done():
                future.set_result(arrived)

    async def close(self) -> None:
        if self.reader is not None:
            self.reader.cancel()
        if self.ws is not None:
            await self.ws.close()


def _stats(latencies_s: list[float]) -> dict[str, float]:
    values = sorted(x * 1000 for x in latencies_s)
    return {
        "count": len(values),
        "p50_ms": round(percentile(values, 50), 2),
        "p99_ms": round(percentile(values, 99), 2),
        "max_ms": round(values[-1], 2) if values else 0.0,
        "mean_ms": round(sum(values) / len(values), 2) if values else 0.0,
    }


async def _gather_limited(coros: list[Any], limit: int) -> list[Any]:
    semaphore = asyncio.Semaphore(limit)

    async def one(coro: Any) -> Any:
        async with semaphore:
            return await coro

    return await asyncio.gather(*(one(c) for c in coros))


async def _scenario(server: Server, secret_key: str, groups: dict[str, str], config: WebsocketConfig) -> dict[str, Any]:
    from channels.layers import get_channel_layer

    headers = {"Authorization": f"Bearer {secret_key}"}
    ws_base = server.base_url.replace("http://", "ws://")
    async with httpx.AsyncClient(base_url=server.base_url, headers=headers, timeout=60) as http:
        # Tokens minted by the server API (the short-lived token path), one per subscriber.
        async def mint(subscriber_id: str) -> Client:
            response = await http.post(
                "/api/v1/inbox/tokens", json={"subscriber_id": subscriber_id, "ttl_seconds": 3600}
            )
            response.raise_for_status()
            return Client(subscriber_id, response.json()["token"])

        clients: list[Client] = await _gather_limited([mint(s) for s in groups], 16)

        # Warm the server (imports, first handshake), then the baseline RSS.
        warm = Client(clients[0].subscriber_id, clients[0].token)
        await warm.connect(ws_base)
        await warm.close()
        await asyncio.sleep(1.0)
        rss_before = _rss_kb(server.pid)
        started = time.perf_counter()
        await _gather_limited([c.connect(ws_base) for c in clients], config.connect_concurrency)
        connect_seconds = time.perf_counter() - started
        await asyncio.sleep(2.0)
        rss_after = _rss_kb(server.pid)
        log(
            f"websocket: {len(clients)} sockets open in {connect_seconds:.1f} s; "
            f"server RSS {rss_before} → {rss_after} kB"
        )

        # Push → frame: group_send from here, as apps.inbox.realtime does after a commit.
        layer = get_channel_layer()
        push_latencies: list[float] = []
        cpu_before = _cpu_seconds(server.pid)
        push_started = time.perf_counter()
        for round_no in range(config.push_rounds):
            waits: list[tuple[float, asyncio.Future[float]]] = []
            for client in clients:
                bench_id = f"push-{round_no}-{client.subscriber_id}"
                future = client.expect(bench_id)
                frame = {
                    "event": "message.updated",
                    "bench_id": bench_id,
                    "cursor": 0,
                    "message": {"id": 0, "title": "x" * 40, "body": "y" * 120},
                    "counts": {"unread": 1, "unseen": 1, "total": 1},
                }
                sent = time.perf_counter()
                await layer.group_send(groups[client.subscriber_id], {"type": "inbox.event", "frame": frame})
                waits.append((sent, future))
            _done, pending = await asyncio.wait([f for _, f in waits], timeout=FRAME_TIMEOUT)
            if pending:
                closed = sum(1 for c in clients if c.ws is None or c.ws.state.name != "OPEN")
                raise RuntimeError(
                    f"push round {round_no}: {len(pending)} of {len(waits)} frames missing after {FRAME_TIMEOUT} s; "
                    f"{closed} sockets closed"
                )
            push_latencies += [future.result() - sent for sent, future in waits]
        push_seconds = time.perf_counter() - push_started
        push_cpu = _cpu_seconds(server.pid) - cpu_before

        # The same, one frame at a time (no burst queued ahead of it): the relay's own latency.
        single_latencies: list[float] = []
        for n in range(config.single_pushes):
            client = clients[(n * 7919) % len(clients)]
            bench_id = f"single-{n}"
            future = client.expect(bench_id)
            frame = {"event": "counts.changed", "bench_id": bench_id, "cursor": n, "counts": {"unread": n}}
            sent = time.perf_counter()
            await layer.group_send(groups[client.subscriber_id], {"type": "inbox.event", "frame": frame})
            single_latencies.append(await asyncio.wait_for(future, timeout=FRAME_TIMEOUT) - sent)

        # Trigger → frame, one recipient per trigger.
        async def trigger_one(n: int) -> float:
            client = clients[(n * 7919) % len(clients)]
            title = f"bench {n} {uuid.uuid4().hex[:8]}"
            future = client.expect(title)
            sent = time.perf_counter()
            response = await http.post(
                "/api/v1/events/trigger",
                json={"workflow": WORKFLOW_KEY, "to": [client.subscriber_id], "payload": {"title": title}},
            )
            if response.status_code != 202:
                raise RuntimeError(f"trigger answered {response.status_code}: {response.text[:300]}")
            return await asyncio.wait_for(future, timeout=FRAME_TIMEOUT) - sent

        await trigger_one(-1)  # warm the worker
        trigger_latencies = await _gather_limited(
            [trigger_one(n) for n in range(config.triggers)], config.trigger_concurrency
        )

        # Trigger → frame, broadcast to the topic of all N subscribers.
        broadcast: list[dict[str, Any]] = []
        for n in range(config.broadcasts):
            title = f"broadcast {n} {uuid.uuid4().hex[:8]}"
            futures = [c.expect(title) for c in clients]
            sent = time.perf_counter()
            response = await http.post(
                "/api/v1/events/trigger",
                json={"workflow": WORKFLOW_KEY, "to": [{"topic": TOPIC_KEY}], "payload": {"title": title}},
            )
            if response.status_code != 202:
                raise RuntimeError(f"broadcast answered {response.status_code}: {response.text[:300]}")
            arrivals = await asyncio.wait_for(asyncio.gather(*futures), timeout=FRAME_TIMEOUT * 4)
            broadcast.append(_stats([a - sent for a in arrivals]))

        alive = sum(1 for c in clients if c.ws is not None and c.ws.state.name == "OPEN")
        await asyncio.gather(*(c.close() for c in clients))

    return {
        "connections": len(clients),
        "connections_open_at_end": alive,
        "connect_seconds": round(connect_seconds, 2),
        "server_rss_before_mb": round(rss_before / 1024, 1),
        "server_rss_after_mb": round(rss_after / 1024, 1),
        "memory_per_connection_kb": round((rss_after - rss_before) / len(clients), 1),
        "push": {
            **_stats(push_latencies),
            "frames_per_s": round(len(push_latencies) / push_seconds, 1),
            "server_cpu_ms_per_frame": round(push_cpu * 1000 / len(push_latencies), 3),
        },
        "push_single": _stats(single_latencies),
        "trigger_one": _stats(list(trigger_latencies)),
        "broadcast": broadcast,
        "broadcast_last_ms_median": round(median([b["max_ms"] for b in broadcast]), 1) if broadcast else 0.0,
    }


def _flush_redis(url: str) -> None:
    import redis

    client = redis.Redis.from_url(url)
    try:
        client.flushdb()
    finally:
        client.close()


def run(installation: Installation, config: WebsocketConfig) -> dict[str, Any]:
    if not installation.redis_url:
        raise RuntimeError("the websocket benchmark needs REDIS_URL (a throwaway Redis database: it is flushed)")
    log(f"websocket: flushing {installation.redis_url}, migrating, creating the environment")
    _flush_redis(installation.redis_url)
    installation.manage("migrate", "--noinput")
    created = installation.manage("create_environment", f"ws-bench-{uuid.uuid4().hex[:6]}", "--json")
    keys = json.loads(created[created.index("{") :])
    secret_key = keys["secret_key"]
    installation.setup_django()  # this process talks to the same channel layer (channels-redis)

    server = Server(installation)
    worker = Worker(installation)
    server.start()
    try:
        server.wait_ready(secret_key)
        worker.start()
        subscriber_ids = [f"ws-{n:05d}" for n in range(config.clients)]
        with httpx.Client(base_url=server.base_url, headers={"Authorization": f"Bearer {secret_key}"}, timeout=60) as c:
            for method, path, body in [
                (
                    "PUT",
                    f"/api/v1/templates/{TEMPLATE_KEY}",
                    {
                        "channel": "in_app",
                        "content": {"en": {"title": "{{ payload.title }}", "body": "Your order has shipped."}},
                        "publish": True,
                    },
                ),
                (
                    "PUT",
                    f"/api/v1/workflows/{WORKFLOW_KEY}",
                    {
                        "name": "WS bench",
                        "steps": [{"id": "inbox", "type": "in_app", "template": TEMPLATE_KEY}],
                        "publish": True,
                    },
                ),
                ("PUT", f"/api/v1/topics/{TOPIC_KEY}", {"name": "Everyone"}),
            ]:
                response = c.request(method, path, json=body)
                if response.status_code not in (200, 201):
                    raise RuntimeError(f"{method} {path}: {response.status_code} {response.text[:300]}")
            for start in range(0, len(subscriber_ids), 500):
                chunk = subscriber_ids[start : start + 500]
                bulk = c.post("/api/v1/subscribers/bulk", json={"subscribers": [{"subscriber_id": s} for s in chunk]})
                if bulk.status_code not in (200, 201, 202):
                    raise RuntimeError(f"subscribers/bulk: {bulk.status_code} {bulk.text[:300]}")
                members = c.post(f"/api/v1/topics/{TOPIC_KEY}/subscribers", json={"subscribers": chunk})
                if members.status_code not in (200, 201):
                    raise RuntimeError(f"topic members: {members.status_code} {members.text[:300]}")

        from apps.inbox.realtime import subscriber_group
        from apps.subscribers.models import Subscriber

        groups = {
            s.subscriber_id: subscriber_group(environment_id=s.environment_id, subscriber_pk=s.pk)
            for s in Subscriber.objects.filter(
                environment__slug=keys["environment"]["slug"], subscriber_id__in=subscriber_ids
            )
        }
        log(
            f"websocket: uvicorn pid {server.pid} on {server.base_url}, "
            f"qcluster pid {worker.proc.pid if worker.proc else '?'}"
        )
        result = asyncio.run(_scenario(server, secret_key, groups, config))
    except Exception:
        log(f"websocket failed; uvicorn log:\n{server.output()}\nqcluster log:\n{worker.output()}")
        raise
    finally:
        worker.stop()
        server.stop()
    result["config"] = {
        **config.__dict__,
        "server": "uvicorn config.asgi:application, 1 worker, DEBUG=0; channels-redis; qcluster (2 workers) on Redis",
        "client": "asyncio + websockets in the bench process (same machine)",
    }
    return result


def render(result: dict[str, Any]) -> str:
    cfg = result["config"]
    push, single, one = result["push"], result["push_single"], result["trigger_one"]
    lines = [
        f"websocket: {result['connections']:,} concurrent inbox sockets on one uvicorn process "
        f"({result['connections_open_at_end']:,} still open at the end), opened in {result['connect_seconds']} s",
        f"  server RSS {result['server_rss_before_mb']} MB → {result['server_rss_after_mb']} MB: "
        f"{result['memory_per_connection_kb']} kB per connection",
        f"  {'path':<44} {'frames':>7} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}",
        f"  {'push → frame (burst: all N, then wait)':<44} {push['count']:>7} {push['p50_ms']:>8} {push['p99_ms']:>8} "
        f"{push['max_ms']:>8}   ({push['frames_per_s']:,} frames/s, "
        f"{push['server_cpu_ms_per_frame']} ms server CPU/frame)",
        f"  {'push → frame, one at a time':<44} {single['count']:>7} {single['p50_ms']:>8} {single['p99_ms']:>8} "
        f"{single['max_ms']:>8}",
        f"  {'trigger → frame (1 recipient, ' + str(cfg['trigger_concurrency']) + ' in flight)':<44} {one['count']:>7} "
        f"{one['p50_ms']:>8} {one['p99_ms']:>8} {one['max_ms']:>8}",
    ]
    for n, b in enumerate(result["broadcast"]):
        label = f"trigger → frame (topic of {result['connections']:,}) #{n + 1}"
        lines.append(f"  {label:<44} {b['count']:>7} {b['p50_ms']:>8} {b['p99_ms']:>8} {b['max_ms']:>8}")
    return "\n".join(lines)
