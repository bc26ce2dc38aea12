"""The load generator, in its own process: open loop at a fixed rate, or closed loop at max rate.

``BENCH_SECRET_KEY=sk_… python -m bench.loadgen --url http://127.0.0.1:8600 --out result.json \\
    --path /api/v1/events/trigger --body '{"workflow": "w", "to": ["u-__M__"], "payload": {"n": __I__}}' \\
    --rate 250 --duration 60``

* **Open loop** (``--rate R --duration D``): request ``i`` is due at ``start + i / R`` whatever
  happened to the earlier ones — a server that slows down gets the same arrivals, as from real
  producers (no coordinated omission). Latency is measured from the *due* time to the answer, so
  queueing in the generator or in the server's accept backlog counts. Up to ``--connections``
  keep-alive connections (default 256); a request that finds them all busy waits for one, and
  that wait is part of its latency. Reported: the achieved rate (answers with the expected
  status per second of the schedule), how late the generator itself started requests (its own
  lag: if that is high the generator, not the server, was the limit), p50/p90/p99/max latency,
  errors by status, and completions per second (to see a server falling behind).
* **Closed loop** (``--concurrency C --duration D``): C connections, each sending the next request
  as soon as the previous answer arrives: the maximum rate (req/s) and its latencies.
  ``--engine wrk`` runs Debian's ``wrk`` (C, one thread, a small Lua script for the method, headers
  and the varying body) instead of Python for this mode: it costs the shared cores far less CPU per
  request than any Python client, so the server gets them. The default engine is aiohttp on uvloop.

Bodies: ``--body`` is a template in which ``__I__`` becomes the request number and ``__M__`` the
number modulo ``--mod`` (e.g. a pool of subscribers), ``__R__`` a token unique to this run.
``--warmup-seconds`` sends at the same rate / concurrency first, untimed.

The result (``--out`` file, JSON) also carries ``cpu_seconds``: this process's CPU and its
children's (wrk), which ``bench.procs.Stack`` adds to the run's meter as ``loadgen``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import re
import resource
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp

REQUEST_TIMEOUT = 30.0


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return 0.0
    rank = max(1, min(len(sorted_values), math.ceil(q / 100 * len(sorted_values))))
    return sorted_values[rank - 1]


class Bodies:
    def __init__(self, template: str, mod: int) -> None:
        self.template = template
        self.mod = max(1, mod)
        self.token = secrets.token_hex(4)

    def __call__(self, i: int) -> bytes:
        if not self.template:
            return b""
        return (
            self.template.replace("__I__", str(i))
            .replace("__M__", str(i % self.mod))
            .replace("__R__", self.token)
            .encode()
        )


class Tally:
    def __init__(self, expect: set[int]) -> None:
        self.expect = expect
        self.latencies: list[float] = []
        self.service: list[float] = []
        self.lags: list[float] = []
        self.statuses: Counter[str] = Counter()
        self.ok = 0
        self.errors = 0
        self.first_error = ""
        self.completions: Counter[int] = Counter()
        self.in_flight = 0
        self.max_in_flight = 0

    def record(self, status: int, error: str, latency: float, service: float, second: int) -> None:
        self.statuses[str(status) if status else "no_answer"] += 1
        if status in self.expect or (not self.expect and 200 <= status < 300):
            self.ok += 1
            self.latencies.append(latency)
            self.service.append(service)
            self.completions[second] += 1
        else:
            self.errors += 1
            self.first_error = self.first_error or (error or f"HTTP {status}")

    def summary(self) -> dict[str, Any]:
        lat, svc, lag = sorted(self.latencies), sorted(self.service), sorted(self.lags)
        last = max(self.completions) if self.completions else -1
        return {
            "ok": self.ok,
            "errors": self.errors,
            "first_error": self.first_error or None,
            "statuses": dict(self.statuses),
            "p50_ms": round(percentile(lat, 50) * 1000, 2),
            "p90_ms": round(percentile(lat, 90) * 1000, 2),
            "p99_ms": round(percentile(lat, 99) * 1000, 2),
            "max_ms": round((lat[-1] if lat else 0.0) * 1000, 2),
            "service_p50_ms": round(percentile(svc, 50) * 1000, 2),
            "service_p99_ms": round(percentile(svc, 99) * 1000, 2),
            "generator_lag_p99_ms": round(percentile(lag, 99) * 1000, 2),
            "max_in_flight": self.max_in_flight,
            "completions_per_second": [self.completions.get(s, 0) for s in range(last + 1)],
        }


async def _one(
    session: aiohttp.ClientSession,
    method: str,
    url: str,
    body: bytes,
    due: float,
    t0: float,
    tally: Tally | None,
) -> None:
    loop = asyncio.get_running_loop()
    sent = loop.time()
    status, error = 0, ""
    if tally is not None:
        tally.in_flight += 1
        tally.max_in_flight = max(tally.max_in_flight, tally.in_flight)
    try:
        async with session.request(method, url, data=body or None) as response:
            status = response.status
            await response.read()
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        error = f"{type(exc).__name__}: {exc}"[:300]
    if tally is not None:
        tally.in_flight -= 1
        end = loop.time()
        tally.record(status, error, end - due, end - sent, int(end - t0))


async def open_loop(
    session: aiohttp.ClientSession, method: str, url: str, bodies: Bodies, rate: float, duration: float, first: int
) -> tuple[Tally | None, dict[str, Any]]:
    loop = asyncio.get_running_loop()
    tally = Tally(set())
    count = int(rate * duration)
    t0 = loop.time() + 0.05
    tasks: set[asyncio.Task[None]] = set()
    i = 0
    while i < count:
        now = loop.time()
        due = t0 + i / rate
        if due > now:
            await asyncio.sleep(due - now)
            continue
        while i < count and t0 + i / rate <= loop.time():  # everything due by now goes out now
            due = t0 + i / rate
            tally.lags.append(loop.time() - due)
            task = asyncio.create_task(_one(session, method, url, bodies(first + i), due, t0, tally))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            i += 1
    schedule_end = loop.time()
    if tasks:
        await asyncio.gather(*tasks)
    drain = loop.time() - schedule_end
    return tally, {
        "scheduled": count,
        "schedule_seconds": round(schedule_end - t0, 3),
        "drain_seconds": round(drain, 3),
    }


async def closed_loop(
    session: aiohttp.ClientSession, method: str, url: str, bodies: Bodies, concurrency: int, duration: float, first: int
) -> tuple[Tally, dict[str, Any]]:
    loop = asyncio.get_running_loop()
    tally = Tally(set())
    t0 = loop.time()
    end_at = t0 + duration
    counter = iter(range(first, first + 10**9))

    async def worker() -> None:
        while loop.time() < end_at:
            started = loop.time()
            await _one(session, method, url, bodies(next(counter)), started, t0, tally)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return tally, {"seconds": round(loop.time() - t0, 3)}


async def run_aiohttp(args: argparse.Namespace, secret_key: str) -> dict[str, Any]:
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # the default loop works, a little slower
        pass
    bodies = Bodies(args.body, args.mod)
    headers = {"Content-Type": "application/json"}
    if secret_key:
        headers["Authorization"] = f"Bearer {secret_key}"
    connections = args.concurrency if args.concurrency else args.connections
    connector = aiohttp.TCPConnector(limit=connections, limit_per_host=connections, force_close=False)
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT)
    url = args.url.rstrip("/") + args.path
    async with aiohttp.ClientSession(headers=headers, connector=connector, timeout=timeout) as session:
        first = 0
        if args.warmup_seconds > 0:
            if args.rate:
                await open_loop(session, args.method, url, bodies, args.rate, args.warmup_seconds, first)
                first += int(args.rate * args.warmup_seconds)
            else:
                _t, info = await closed_loop(
                    session, args.method, url, bodies, args.concurrency, args.warmup_seconds, first
                )
                first += 10**7
        started = time.monotonic()
        if args.rate:
            tally, info = await open_loop(session, args.method, url, bodies, args.rate, args.duration, first)
            assert tally is not None
            seconds = float(info["schedule_seconds"]) or args.duration
            result = {
                "mode": "open",
                "engine": "aiohttp",
                "target_rate": args.rate,
                # answers per second from the first request due to the last answer: a server that
                # falls behind answers the schedule's requests over a longer time
                "achieved_rate": round(tally.ok / max(seconds + float(info["drain_seconds"]), args.duration), 1),
                **info,
                **tally.summary(),
            }
        else:
            tally, info = await closed_loop(session, args.method, url, bodies, args.concurrency, args.duration, first)
            seconds = float(info["seconds"])
            result = {
                "mode": "closed",
                "engine": "aiohttp",
                "concurrency": args.concurrency,
                "requests_per_s": round(tally.ok / seconds, 1) if seconds else 0.0,
                **info,
                **tally.summary(),
            }
        result["wall_seconds"] = round(time.monotonic() - started, 3)
        return result


WRK_SCRIPT = """
local counter = %(first)d
local template = %(template)s
local mod = %(mod)d
local token = "%(token)s"
wrk.method = "%(method)s"
wrk.headers["Content-Type"] = "application/json"
%(auth)s
request = function()
  counter = counter + 1
  local body = template:gsub("__I__", tostring(counter)):gsub("__M__", tostring(counter %% mod)):gsub("__R__", token)
  return wrk.format(nil, nil, nil, body)
end
"""


def _lua_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _wrk_ms(value: str) -> float:
    match = re.match(r"([\d.]+)(us|ms|s|m)", value)
    if not match:
        return 0.0
    number, unit = float(match.group(1)), match.group(2)
    return number * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[unit]


def run_wrk(args: argparse.Namespace, secret_key: str, *, duration: float, first: int) -> dict[str, Any]:
    binary = shutil.which("wrk")
    if binary is None:
        raise SystemExit("wrk is not installed (Debian: apt-get install -y wrk); or use --engine aiohttp")
    bodies = Bodies(args.body, args.mod)
    auth = f'wrk.headers["Authorization"] = "Bearer {secret_key}"' if secret_key else ""
    script = WRK_SCRIPT % {
        "first": first,
        "template": _lua_string(args.body),
        "mod": bodies.mod,
        "token": bodies.token,
        "method": args.method,
        "auth": auth,
    }
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as handle:
        handle.write(script)
        script_path = handle.name
    try:
        argv = [
            binary,
            "-t1",
            f"-c{args.concurrency}",
            f"-d{max(1, round(duration))}s",
            "--timeout",
            f"{int(REQUEST_TIMEOUT)}s",
            "--latency",
            "-s",
            script_path,
            args.url.rstrip("/") + args.path,
        ]
        out = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 60, check=False).stdout
    finally:
        os.unlink(script_path)
    total = re.search(r"(\d+) requests in ([\d.]+)(\w+)", out)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    latencies = dict(re.findall(r"^\s+(50|75|90|99)%\s+(\S+)", out, re.MULTILINE))
    requests = int(total.group(1)) if total else 0
    seconds = _wrk_ms(total.group(2) + total.group(3)) / 1000 if total else duration
    errors = (int(non2xx.group(1)) if non2xx else 0) + (
        sum(int(x) for x in socket_errors.groups()) if socket_errors else 0
    )
    ok = max(0, requests - (int(non2xx.group(1)) if non2xx else 0))
    return {
        "mode": "closed",
        "engine": "wrk",
        "concurrency": args.concurrency,
        "requests_per_s": round(ok / seconds, 1) if seconds else 0.0,
        "seconds": round(seconds, 3),
        "ok": ok,
        "errors": errors,
        "first_error": None if not errors else "non-2xx or socket errors (see wrk output)",
        "p50_ms": round(_wrk_ms(latencies.get("50", "0ms")), 2),
        "p90_ms": round(_wrk_ms(latencies.get("90", "0ms")), 2),
        "p99_ms": round(_wrk_ms(latencies.get("99", "0ms")), 2),
        "wrk_output": out[-2000:],
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.loadgen", description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", required=True, help="base URL, e.g. http://127.0.0.1:8600")
    parser.add_argument("--path", default="/api/v1/events/trigger")
    parser.add_argument("--method", default="POST")
    parser.add_argument("--body", default="", help="body template (__I__, __M__, __R__)")
    parser.add_argument("--mod", type=int, default=1, help="__M__ = request number modulo this")
    parser.add_argument("--rate", type=float, default=0.0, help="open loop: requests per second")
    parser.add_argument("--concurrency", type=int, default=0, help="closed loop: connections")
    parser.add_argument("--connections", type=int, default=256, help="open loop: connection limit")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of timed load")
    parser.add_argument("--warmup-seconds", type=float, default=0.0)
    parser.add_argument("--engine", choices=("aiohttp", "wrk"), default="aiohttp", help="wrk: closed loop only")
    parser.add_argument("--out", type=Path, help="write the JSON result here (else stdout)")
    args = parser.parse_args(argv)
    if bool(args.rate) == bool(args.concurrency):
        parser.error("give exactly one of --rate (open loop) or --concurrency (closed loop)")
    if args.engine == "wrk" and args.rate:
        parser.error("--engine wrk is for the closed loop (--concurrency); the open loop uses aiohttp")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    secret_key = os.environ.get("BENCH_SECRET_KEY", "")
    if args.engine == "wrk":
        if args.warmup_seconds > 0:
            run_wrk(args, secret_key, duration=args.warmup_seconds, first=10**8)
        started = time.monotonic()
        result = run_wrk(args, secret_key, duration=args.duration, first=0)
        result["wall_seconds"] = round(time.monotonic() - started, 3)
    else:
        result = asyncio.run(run_aiohttp(args, secret_key))
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    result["cpu_seconds"] = round(own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime, 3)
    text = json.dumps(result, indent=2)
    if args.out:
        args.out.write_text(text)
    else:
        print(text)
    print(
        f"[loadgen] {result['mode']} {result['engine']}: ok {result['ok']}, errors {result['errors']}, "
        f"p50 {result['p50_ms']} ms, p99 {result['p99_ms']} ms",
        file=sys.stderr,
        flush=True,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
