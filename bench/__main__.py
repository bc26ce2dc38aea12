"""``python -m bench [ingest] [fanout] [--quick] [--json] [--profile] [...]``; see docs/benchmarks.md."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from typing import Any

from bench import digest, fanout, ingest, recovery, websocket
from bench.common import Installation, database_connections, log, machine_info
from bench.report import render

BENCHMARKS = ("ingest", "fanout", "digest", "websocket", "recovery")
DEFAULT_BENCHMARKS = ("ingest", "fanout", "digest")  # websocket needs REDIS_URL: run it by name


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Clarion benchmarks: each result is a ratio against a baseline measured in the same run.",
    )
    parser.add_argument(
        "names", nargs="*", metavar="NAME", help="ingest, fanout, websocket (default: ingest and fanout)"
    )
    parser.add_argument("--quick", action="store_true", help="small smoke variant (seconds, not meaningful numbers)")
    parser.add_argument("--json", action="store_true", help="print machine-readable results on stdout")
    parser.add_argument("--profile", action="store_true", help="add a cProfile of the measured Clarion path")
    parser.add_argument("--requests", type=int, help="ingest: timed requests per endpoint (default 3000)")
    parser.add_argument("--concurrency", type=int, help="ingest: concurrent connections (default 16)")
    parser.add_argument("--subscribers", type=int, help="fanout: topic size (default 10000)")
    parser.add_argument("--repeats", type=int, help="fanout: alternating repetitions (default 3)")
    parser.add_argument("--digests", type=int, help="digest: subscribers, one digest each (default 10000)")
    parser.add_argument("--digest-events", type=int, help="digest: triggers to all of them (default 100)")
    parser.add_argument("--clients", type=int, help="websocket: concurrent sockets (default 1000)")
    args = parser.parse_args(argv)
    unknown = [n for n in args.names if n not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(unknown)}; choose from {', '.join(BENCHMARKS)}")
    args.names = [n for n in BENCHMARKS if n in args.names] or list(DEFAULT_BENCHMARKS)
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    installation = Installation.create()
    results: dict[str, Any] = {
        "command": "python -m bench " + shlex.join(argv),
        "quick": args.quick,
        "installation": installation.describe_database(),
        "machine": machine_info(installation),
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "benchmarks": {},
    }
    log(f"{results['installation']}; broker {installation.broker}; var dir {installation.var_dir}")
    try:
        if "ingest" in args.names:
            config = ingest.IngestConfig.quick() if args.quick else ingest.IngestConfig()
            overrides = {k: v for k, v in (("requests", args.requests), ("concurrency", args.concurrency)) if v}
            config = ingest.IngestConfig(**{**config.__dict__, **overrides})
            started = time.monotonic()
            results["benchmarks"]["ingest"] = ingest.run(installation, config, profile=args.profile)
            results["benchmarks"]["ingest"]["wall_seconds"] = round(time.monotonic() - started, 1)
        if "fanout" in args.names:
            config_f = fanout.FanoutConfig.quick() if args.quick else fanout.FanoutConfig()
            overrides = {k: v for k, v in (("subscribers", args.subscribers), ("repeats", args.repeats)) if v}
            config_f = fanout.FanoutConfig(**{**config_f.__dict__, **overrides})
            started = time.monotonic()
            results["benchmarks"]["fanout"] = fanout.run(installation, config_f, profile=args.profile)
            results["benchmarks"]["fanout"]["wall_seconds"] = round(time.monotonic() - started, 1)
        if "websocket" in args.names:
            config_w = websocket.WebsocketConfig.quick() if args.quick else websocket.WebsocketConfig()
            if args.clients:
                config_w = websocket.WebsocketConfig(**{**config_w.__dict__, "clients": args.clients})
            started = time.monotonic()
            results["benchmarks"]["websocket"] = websocket.run(installation, config_w)
            results["benchmarks"]["websocket"]["wall_seconds"] = round(time.monotonic() - started, 1)
        if "digest" in args.names:
            config_d = digest.DigestConfig.quick() if args.quick else digest.DigestConfig()
            overrides = {k: v for k, v in (("subscribers", args.digests), ("events", args.digest_events)) if v}
            config_d = digest.DigestConfig(**{**config_d.__dict__, **overrides})
            started = time.monotonic()
            results["benchmarks"]["digest"] = digest.run(installation, config_d)
            results["benchmarks"]["digest"]["wall_seconds"] = round(time.monotonic() - started, 1)
        if "recovery" in args.names:  # run by name: it kills and restarts a real worker process
            config_r = recovery.RecoveryConfig.quick() if args.quick else recovery.RecoveryConfig()
            started = time.monotonic()
            results["benchmarks"]["recovery"] = recovery.run(installation, config_r)
            results["benchmarks"]["recovery"]["wall_seconds"] = round(time.monotonic() - started, 1)
        results["machine"]["database_connections"] = database_connections()  # Django is set up by now
    finally:
        installation.cleanup()
    results["machine"]["load_average_at_end"] = round(os.getloadavg()[0], 2)

    if args.profile:
        for name, result in results["benchmarks"].items():
            if "profile" in result:
                print(f"\n===== cProfile: {name} =====\n{result['profile']}", file=sys.stderr)
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        print(render(results))
        if "websocket" in results["benchmarks"]:
            print(websocket.render(results["benchmarks"]["websocket"]))
        if "recovery" in results["benchmarks"]:
            print(recovery.render(results["benchmarks"]["recovery"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
