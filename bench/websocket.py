"""Websocket: connection storms and trigger → frame latency, open loop, on real processes.

What runs (``bench.procs.Stack`` on a fresh installation: a new throwaway PostgreSQL database and
the Redis database flushed first, both dropped/flushed at the end): one ``uvicorn`` process, one
``manage.py clarion_worker`` (django-q2 on the Redis broker + the ticker), channels-redis. The
clients run in a process of their own (``python -m bench.websocket --client``), counted as
``loadgen`` by the CPU meter; the orchestrator only sets up and waits.

* **storm**: N sockets (default 1,000, one per subscriber, tokens minted beforehand so the server
  checks each session against the database as after a restart) open all at once — no semaphore —
  and each waits for its ``ready`` frame; then every socket is dropped and all N reconnect at once.
  Errors: handshakes refused (HTTP 500 was channels-redis's ``MaxConnectionsError``), closed, or
  without ``ready`` within 60 s.
* **push → frame** (the push path alone): with the N sockets open, the orchestrator pushes one frame
  at a time at the trigger rate for 10 s through ``apps.inbox.realtime`` (what a commit's push
  does), each stamped with its wall-clock time; the clients time its arrival (same machine).
* **trigger → frame, open loop**: with the N sockets open, ``POST /api/v1/events/trigger`` at a
  fixed rate (default 50/s for 30 s after 5 s of warm-up), trigger ``i`` due at ``t0 + i / rate``
  whatever happened to the earlier ones, each to one subscriber (round robin) of a workflow with
  one in-app step; latency from the trigger's *due* time to its ``message.created`` frame on that
  subscriber's socket (so the generator's own lag and every queue count). Frames still missing
  60 s after the last trigger are reported as missing (the goal is then unmet).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import sys
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

from bench.common import Installation, log, percentile
from bench.report import Row, Skipped

TEMPLATE_KEY = "ws-bench-in-app"
WORKFLOW_KEY = "ws-bench"
HANDSHAKE_TIMEOUT = 60.0
FRAME_GRACE = 60.0


@dataclass(frozen=True)
class WebsocketConfig:
    clients: int = 1000
    rate: float = 50.0  # triggers per second, open loop
    seconds: float = 30.0  # measured
    warmup_seconds: float = 5.0
    trigger_connections: int = 64
    # "single": one uvicorn process serves the API and the websockets (Django's ASGI handler, as
    # `make run`); "split": the triggers go to an API-only process (WEB_HTTP_THREADS=10) and the
    # websockets to their own process, as docs/deployment.md lays out for load
    # BENCH_WEBSOCKET_LAYOUTS=split (comma-separated) runs only those, e.g. for shorter A/B rounds
    layouts: tuple[str, ...] = field(
        default_factory=lambda: tuple(os.environ.get("BENCH_WEBSOCKET_LAYOUTS", "single,split").split(","))
    )

    @classmethod
    def quick(cls) -> WebsocketConfig:
        return cls(clients=100, rate=20.0, seconds=5.0, warmup_seconds=1.0, layouts=("single",))


def _stats(values_ms: list[float]) -> dict[str, float]:
    values = sorted(values_ms)
    return {
        "count": len(values),
        "p50_ms": round(percentile(values, 50), 1),
        "p90_ms": round(percentile(values, 90), 1),
        "p99_ms": round(percentile(values, 99), 1),
        "max_ms": round(values[-1], 1) if values else 0.0,
    }


# --- the client process -------------------------------------------------------------------------


PUSH_LATENCIES: list[float] = []  # ms from the orchestrator's push (wall clock) to the frame


class Socket:
    """One subscriber's websocket; resolves the future waiting for a frame's title."""

    def __init__(self, subscriber_id: str, token: str) -> None:
        self.subscriber_id = subscriber_id
        self.token = token
        self.ws: Any = None
        self.reader: asyncio.Task[None] | None = None
        # title -> future of (arrival on the monotonic clock, arrival wall clock, the message's created_at)
        self.waiting: dict[str, asyncio.Future[tuple[float, float, str]]] = {}

    async def connect(self, ws_base: str) -> None:
        from websockets.asyncio.client import connect

        self.ws = await connect(
            f"{ws_base}/ws/inbox/?token={quote(self.token)}", open_timeout=HANDSHAKE_TIMEOUT, max_queue=None
        )
        ready = json.loads(await asyncio.wait_for(self.ws.recv(), timeout=HANDSHAKE_TIMEOUT))
        if ready.get("event") != "ready":
            raise RuntimeError(f"expected ready, got {str(ready)[:200]}")
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        with contextlib.suppress(Exception):
            async for raw in self.ws:
                arrived, arrived_wall = time.monotonic(), time.time()
                frame = json.loads(raw)
                if "bench_pushed_at" in frame:
                    PUSH_LATENCIES.append((time.time() - frame["bench_pushed_at"]) * 1000)
                    continue
                message = frame.get("message") or {}
                future = self.waiting.pop(message.get("title", ""), None)
                if future is not None and not future.done():
                    future.set_result((arrived, arrived_wall, message.get("created_at") or ""))

    async def drop(self) -> None:
        if self.reader is not None:
            self.reader.cancel()
        if self.ws is not None:
            with contextlib.suppress(Exception):
                await self.ws.close()
        self.ws = self.reader = None


async def _storm(sockets: list[Socket], ws_base: str) -> dict[str, Any]:
    """Every socket connects at the same moment; per socket: seconds to ``ready``, or its error."""

    async def one(sock: Socket) -> tuple[float, str]:
        started = time.monotonic()
        try:
            await sock.connect(ws_base)
        except Exception as exc:  # a refused handshake, a close, a timeout: all errors
            return time.monotonic() - started, f"{type(exc).__name__}: {str(exc)[:120]}"
        return time.monotonic() - started, ""

    started = time.monotonic()
    outcomes = await asyncio.gather(*(one(s) for s in sockets))
    errors: dict[str, int] = {}
    for _, error in outcomes:
        if error:
            errors[error] = errors.get(error, 0) + 1
    return {
        "clients": len(sockets),
        "errors": sum(errors.values()),
        "error_kinds": dict(sorted(errors.items(), key=lambda kv: -kv[1])[:5]),
        "all_ready_seconds": round(time.monotonic() - started, 2),
        "ready": _stats([seconds * 1000 for seconds, error in outcomes if not error]),
    }


async def _open_loop(sockets: list[Socket], plan: dict[str, Any]) -> dict[str, Any]:
    import aiohttp

    rate, run_id = float(plan["rate"]), uuid.uuid4().hex[:6]
    warm = int(plan["warmup_seconds"] * rate)
    total = warm + int(plan["seconds"] * rate)
    url = f"{plan['http_base']}/api/v1/events/trigger"
    headers = {"Authorization": f"Bearer {plan['secret_key']}", "Content-Type": "application/json"}
    latencies: list[float] = []
    # where each frame's time went: due -> 202 (web), 202 -> the message row's created_at (queue and
    # worker), created_at -> frame (commit, push, the websocket process); same machine, same clock
    accepted_ms: list[float] = []
    to_created_ms: list[float] = []
    to_frame_ms: list[float] = []
    missing = 0
    statuses: dict[str, int] = {}
    lag: list[float] = []
    connector = aiohttp.TCPConnector(limit=plan["trigger_connections"])
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=30)) as session:

        async def trigger(i: int, due: float) -> None:
            nonlocal missing
            sock = sockets[i % len(sockets)]
            title = f"ws {run_id} {i}"
            future: asyncio.Future[tuple[float, float, str]] = asyncio.get_running_loop().create_future()
            sock.waiting[title] = future
            body = json.dumps({"workflow": WORKFLOW_KEY, "to": [sock.subscriber_id], "payload": {"title": title}})
            try:
                async with session.post(url, data=body, headers=headers) as response:
                    await response.read()
                    status = str(response.status)
                responded, responded_wall = time.monotonic(), time.time()
            except Exception as exc:
                status = type(exc).__name__
            statuses[status] = statuses.get(status, 0) + 1
            if status != "202":
                sock.waiting.pop(title, None)
                if i >= warm:
                    missing += 1
                return
            try:
                arrived, arrived_wall, created_at = await asyncio.wait_for(
                    future, timeout=max(1.0, end_of_schedule + FRAME_GRACE - time.monotonic())
                )
            except TimeoutError:
                sock.waiting.pop(title, None)
                if i >= warm:
                    missing += 1
                return
            if i >= warm:
                latencies.append((arrived - due) * 1000)
                accepted_ms.append((responded - due) * 1000)
                with contextlib.suppress(ValueError):
                    created = datetime.fromisoformat(created_at.replace("Z", "+00:00")).timestamp()
                    to_created_ms.append(max(0.0, created - responded_wall) * 1000)
                    to_frame_ms.append(max(0.0, arrived_wall - created) * 1000)

        t0 = time.monotonic() + 0.2
        end_of_schedule = t0 + total / rate
        tasks = []
        for i in range(total):
            due = t0 + i / rate
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            lag.append(max(0.0, time.monotonic() - due))
            tasks.append(asyncio.create_task(trigger(i, due)))
        await asyncio.gather(*tasks)
        measured_seconds = time.monotonic() - t0
    return {
        "rate": rate,
        "triggers": total - warm,
        "warmup_triggers": warm,
        "frames": len(latencies),
        "missing": missing,
        "statuses": statuses,
        "latency": _stats(latencies),
        "stages": {
            "due_to_202": _stats(accepted_ms),
            "202_to_created": _stats(to_created_ms),
            "created_to_frame": _stats(to_frame_ms),
        },
        "generator_lag_ms_max": round(max(lag, default=0.0) * 1000, 1),
        "wall_seconds": round(measured_seconds, 1),
    }


async def _client_main(plan: dict[str, Any]) -> dict[str, Any]:
    sockets = [Socket(subscriber_id, token) for subscriber_id, token in plan["tokens"].items()]
    ws_base = plan["ws_base"]
    first = await _storm(sockets, ws_base)
    log(f"websocket: storm 1: {first['errors']} errors, all ready in {first['all_ready_seconds']} s")
    Path(plan["connected_marker"]).write_text(json.dumps(first))
    # every socket drops (a proxy restart, a network blip), then all reconnect at the same moment
    await asyncio.gather(*(s.drop() for s in sockets))
    await asyncio.sleep(1.0)
    reconnect = await _storm(sockets, ws_base)
    log(f"websocket: reconnect storm: {reconnect['errors']} errors, all ready in {reconnect['all_ready_seconds']} s")
    connected = [s for s in sockets if s.ws is not None]
    # push → frame: the orchestrator pushes as apps.inbox.realtime does after a commit
    Path(plan["push_marker"]).write_text("ready")
    deadline = time.monotonic() + 300
    while not Path(plan["push_done_marker"]).exists() and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    await asyncio.sleep(2.0)  # the last frames' way
    push = {"pushed": int(Path(plan["push_done_marker"]).read_text() or 0), **_stats(PUSH_LATENCIES)}
    log(f"websocket: push → frame: {push}")
    loop = await _open_loop(connected, plan) if connected else {}
    if loop:
        log(
            f"websocket: {loop['triggers']} triggers at {loop['rate']}/s: p50 {loop['latency']['p50_ms']} ms, "
            f"p99 {loop['latency']['p99_ms']} ms, {loop['missing']} missing"
        )
    open_at_end = sum(1 for s in connected if s.ws is not None and s.ws.state.name == "OPEN")
    await asyncio.gather(*(s.drop() for s in sockets))
    return {
        "storm": first,
        "reconnect": reconnect,
        "push": push,
        "open_loop": loop,
        "sockets_open_at_end": open_at_end,
    }


def client(plan_path: str, out_path: str) -> int:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    plan = json.loads(Path(plan_path).read_text())
    started = time.process_time()
    result = asyncio.run(_client_main(plan))
    result["cpu_seconds"] = round(time.process_time() - started, 2)
    Path(out_path).write_text(json.dumps(result))
    return 0


# --- the orchestrator ---------------------------------------------------------------------------


def _setup(stack: Any, secret_key: str, config: WebsocketConfig) -> list[str]:
    subscriber_ids = [f"ws-{n:05d}" for n in range(config.clients)]
    with stack.client(secret_key) as c:
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
        ]:
            response = c.request(method, path, json=body)
            if response.status_code not in (200, 201):
                raise RuntimeError(f"{method} {path}: {response.status_code} {response.text[:300]}")
        for start in range(0, len(subscriber_ids), 500):
            chunk = subscriber_ids[start : start + 500]
            bulk = c.post("/api/v1/subscribers/bulk", json={"subscribers": [{"subscriber_id": s} for s in chunk]})
            if bulk.status_code not in (200, 201, 202):
                raise RuntimeError(f"subscribers/bulk: {bulk.status_code} {bulk.text[:300]}")
    return subscriber_ids


def _tokens(installation: Installation, environment_slug: str, subscriber_ids: list[str]) -> dict[str, str]:
    """Inbox tokens minted in this process: the server has never seen these sessions, so each
    handshake checks its session against the database, as after a server restart."""
    installation.setup_django()
    from apps.inbox.auth import inbox_token_issue
    from apps.subscribers.models import Subscriber

    subscribers = {
        s.subscriber_id: s
        for s in Subscriber.objects.select_related("environment").filter(
            environment__slug=environment_slug, subscriber_id__in=subscriber_ids
        )
    }
    return {
        sid: inbox_token_issue(environment=subscribers[sid].environment, subscriber=subscribers[sid])
        for sid in subscriber_ids
    }


def _groups(environment_slug: str, subscriber_ids: list[str]) -> list[str]:
    """Each subscriber's inbox group, in ``subscriber_ids`` order."""
    from apps.inbox.realtime import subscriber_group
    from apps.subscribers.models import Subscriber

    rows = Subscriber.objects.filter(environment__slug=environment_slug, subscriber_id__in=subscriber_ids)
    by_id = {
        sid: subscriber_group(environment_id=environment_id, subscriber_pk=pk)
        for sid, environment_id, pk in rows.values_list("subscriber_id", "environment_id", "pk")
    }
    return [by_id[sid] for sid in subscriber_ids]


def _push(groups: list[str], config: WebsocketConfig) -> int:
    """Push → frame, open loop at the trigger rate for 10 s: one frame per push, round robin over the
    subscribers, through ``apps.inbox.realtime._send_all`` (what a commit's push does)."""
    from apps.inbox import realtime

    count = int(config.rate * 10)
    t0 = time.monotonic()
    for i in range(count):
        delay = t0 + i / config.rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        frame = {"event": "counts.changed", "cursor": i, "counts": {"unread": 1}, "bench_pushed_at": time.time()}
        realtime._send_all([(groups[i % len(groups)], frame)])
    return count


def _rss_mb(pid: int) -> float:
    with contextlib.suppress(OSError), open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    return 0.0


def run(installation: Installation, config: WebsocketConfig) -> dict[str, Any]:
    """Each layout in turn on its own processes and environment; the first layout's result at the
    top, every layout's under ``layouts`` (each with the same keys)."""
    if not installation.redis_url:
        raise Skipped("needs REDIS_URL (channels-redis and the Redis broker)")
    fresh = installation.fresh()  # its own database and a flushed Redis db, dropped/flushed below
    try:
        results = {layout: _run_layout(fresh, config, layout) for layout in config.layouts}
    finally:
        fresh.cleanup()
    first = dict(results[config.layouts[0]])
    first["layouts"] = results
    return first


def _run_layout(fresh: Installation, config: WebsocketConfig, layout: str) -> dict[str, Any]:
    from bench.procs import Proc, Stack

    api_processes = 1 if layout == "split" else 0
    with Stack(fresh, web_processes=1, api_processes=api_processes, worker_processes=1, esp=False) as stack:
        stack.start()
        keys = stack.environment(f"ws-bench-{uuid.uuid4().hex[:6]}")
        subscriber_ids = _setup(stack, keys["secret_key"], config)
        tokens = _tokens(fresh, keys["environment"]["slug"], subscriber_ids)
        assert stack.web is not None
        rss_before = _rss_mb(stack.web.pid)
        plan_path, out_path = fresh.var_dir / "ws-plan.json", fresh.var_dir / "ws-result.json"
        marker = fresh.var_dir / "ws-connected.json"
        push_marker, push_done = fresh.var_dir / "ws-push-ready", fresh.var_dir / "ws-push-done"
        groups = _groups(keys["environment"]["slug"], subscriber_ids)
        plan_path.write_text(
            json.dumps(
                {
                    **config.__dict__,
                    "http_base": stack.api_url,
                    "ws_base": stack.base_url.replace("http://", "ws://"),
                    "secret_key": keys["secret_key"],
                    "tokens": tokens,
                    "connected_marker": str(marker),
                    "push_marker": str(push_marker),
                    "push_done_marker": str(push_done),
                }
            )
        )
        log(
            f"websocket ({layout}): {config.clients} clients, uvicorn pids {stack.web_pids}, "
            f"worker pid {stack.workers[0].pid}"
        )
        argv = [sys.executable, "-m", "bench.websocket", "--client", str(plan_path), str(out_path)]
        clients = Proc("ws-clients", argv, stack.env(), fresh.var_dir / "ws-clients.log")
        rss_connected = 0.0
        with stack.meter() as cpu:
            clients.start()
            stack.loadgens.append(clients.pid)
            try:
                deadline = time.monotonic() + 600 + config.seconds + config.warmup_seconds
                while clients.alive():
                    if not rss_connected and marker.exists():
                        rss_connected = _rss_mb(stack.web.pid)
                    if push_marker.exists() and not push_done.exists():
                        push_done.write_text(str(_push(groups, config)))
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"the websocket clients did not finish\n{clients.tail()}")
                    time.sleep(0.2)
            finally:
                clients.stop()
        if not out_path.exists():
            raise RuntimeError(f"the websocket clients failed\n{clients.tail()}\nweb:\n{stack.web.tail()}")
        result: dict[str, Any] = json.loads(out_path.read_text())
        if (result.get("open_loop") or {}).get("missing"):  # say why, before the logs are removed
            result["log_tails"] = {"web": stack.web.tail(2000), "worker": stack.workers[0].tail(4000)}
            log(f"websocket: frames missing; worker log:\n{stack.workers[0].tail(4000)}")
        result["cpu_seconds"] = cpu.result()
        result["server_rss_mb"] = {"before": rss_before, "connected": rss_connected}
        if rss_connected:
            result["memory_per_connection_kb"] = round((rss_connected - rss_before) * 1024 / config.clients, 1)
    result["layout"] = layout
    server = (
        "uvicorn config.asgi:application ×1 (API and websockets)"
        if layout == "single"
        else "uvicorn ×1 for the websockets + uvicorn ×1 with WEB_HTTP_THREADS=10 for the API"
    )
    result["config"] = {
        **config.__dict__,
        "server": f"{server}, DEBUG=0; apps.inbox.layers (channels-redis); "
        "manage.py clarion_worker ×1 on the Redis broker",
        "client": "its own process: websockets + aiohttp, open loop",
    }
    return result


def _stage_note(loop: dict[str, Any]) -> str:
    stages = loop.get("stages") or {}
    parts = [
        f"{label} p50 {stages[key]['p50_ms']} / p99 {stages[key]['p99_ms']} ms"
        for key, label in (
            ("due_to_202", "due -> 202"),
            ("202_to_created", "202 -> message created"),
            ("created_to_frame", "created -> frame"),
        )
        if (stages.get(key) or {}).get("count")
    ]
    return "; ".join(parts)


def _latency_rows(result: dict[str, Any], *, first: bool) -> list[Row]:
    loop = result.get("open_loop") or {}
    layout = result.get("layout", "single")
    rate = loop.get("rate", result["config"]["rate"])
    clients = result["config"]["clients"]
    latency = loop.get("latency") or {}
    if not latency.get("count") and loop:
        # no frame at all within the grace after the last trigger: the latency is at least that
        bound = FRAME_GRACE * 1000
        latency = {"p50_ms": bound, "p99_ms": bound, "max_ms": f"> {bound:.0f} (no frame arrived)"}
    missing = loop.get("missing", 0)
    note = (
        f"{loop.get('frames', 0)} frames, {missing} missing, generator lag max {loop.get('generator_lag_ms_max')} ms; "
        f"statuses {loop.get('statuses')}"
    )
    where = "one process" if layout == "single" else "API and websockets in separate processes"
    suffix = "" if first else f".{layout}"
    return [
        Row(
            "websocket",
            f"trigger -> frame p50, {clients:,} clients, {rate:g} triggers/s, {where}",
            latency.get("p50_ms"),
            "ms",
            goal_max=50,
            unmet=bool(missing),
            note=note,
            key=f"websocket.p50{suffix}",
        ),
        Row(
            "websocket",
            f"trigger -> frame p99, {clients:,} clients, {rate:g} triggers/s, {where}",
            latency.get("p99_ms"),
            "ms",
            goal_max=250,
            unmet=bool(missing),
            note=f"max {latency.get('max_ms')} ms; {_stage_note(loop)}",
            key=f"websocket.p99{suffix}",
        ),
    ]


def rows(result: dict[str, Any]) -> list[Row]:
    storm, reconnect = result["storm"], result["reconnect"]
    push = result.get("push") or {}
    rate = (result.get("open_loop") or {}).get("rate", result["config"]["rate"])
    clients = result["config"]["clients"]
    layouts = result.get("layouts") or {result.get("layout", "single"): result}
    latency_rows = [row for i, layout in enumerate(layouts.values()) for row in _latency_rows(layout, first=i == 0)]
    return [
        *latency_rows,
        Row(
            "websocket",
            f"push -> frame p50 (the push path alone), {clients:,} clients, {rate:g}/s",
            push.get("p50_ms"),
            "ms",
            note=(
                f"p99 {push.get('p99_ms')} ms, max {push.get('max_ms')} ms, "
                f"{push.get('count')} of {push.get('pushed')} frames"
            ),
        ),
        Row(
            "websocket",
            f"connection storm: {clients:,} reconnect at once, errors",
            float(reconnect["errors"]),
            "errors",
            goal_max=0,
            key="websocket.storm",
            note=(
                f"first storm {storm['errors']} errors, all ready in {storm['all_ready_seconds']} s; "
                f"reconnect all ready in {reconnect['all_ready_seconds']} s (p99 {reconnect['ready']['p99_ms']} ms)"
                + (f"; {reconnect['error_kinds']}" if reconnect["errors"] else "")
            ),
        ),
    ]


def render(result: dict[str, Any]) -> str:
    return "\n".join(
        f"  {row.name}: {row.measured} {row.unit} (goal {'<=' if row.goal_max is not None else '>='} "
        f"{row.goal_max if row.goal_max is not None else row.goal_min}) {row.note}"
        for row in rows(result)
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m bench.websocket")
    parser.add_argument("--client", nargs=2, metavar=("PLAN", "OUT"), required=True)
    arguments = parser.parse_args()
    raise SystemExit(client(*arguments.client))
