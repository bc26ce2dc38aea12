"""``python -m bench [NAME ...] [--quick] [--json] [...]``: ONE table, goal | measured | baseline | ratio.

Each benchmark module runs (``run(installation, config) -> dict``) and turns its result into table
rows (``rows(result) -> list[Row]``, see ``bench/report.py``). A module that fails does not stop
the others: its row says why, and the exit status is 1. See docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import shlex
import signal
import sys
import time
import traceback
from types import ModuleType
from typing import Any

from bench.common import Installation, database_connections, log, machine_info
from bench.report import Row, Skipped, coerce_row, complete, legacy_rows, render, row_from_dict

# Order of the run (the table has its own order). recovery kills a worker: by name only.
BENCHMARKS = (
    "ingest", "pipeline", "websocket", "fanout", "delivery", "digest", "analytics", "dashboard", "scaleout", "recovery",
)  # fmt: skip
DEFAULT_BENCHMARKS = tuple(n for n in BENCHMARKS if n != "recovery")
# the config class of modules that predate the ``Config`` convention
LEGACY_CONFIG = {
    "ingest": "IngestConfig",
    "fanout": "FanoutConfig",
    "digest": "DigestConfig",
    "websocket": "WebsocketConfig",
    "recovery": "RecoveryConfig",
    "delivery": "DeliveryConfig",
}
# command-line option -> (benchmark, config field)
OVERRIDES = {
    "ingest_seconds": ("ingest", "seconds"),
    "concurrency": ("ingest", "concurrency"),
    "subscribers": ("fanout", "subscribers"),
    "repeats": ("fanout", "repeats"),
    "digests": ("digest", "subscribers"),
    "digest_events": ("digest", "events"),
    "clients": ("websocket", "clients"),
    "rate": ("pipeline", "rate"),
    "seconds": ("pipeline", "seconds"),
    "web_processes": ("pipeline", "web_processes"),
    "worker_processes": ("pipeline", "worker_processes"),
}


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Clarion benchmarks: one table, goal | measured | baseline | ratio (docs/benchmarks.md).",
    )
    parser.add_argument(
        "names", nargs="*", metavar="NAME", help=f"any of {', '.join(BENCHMARKS)} (default: all but recovery)"
    )
    parser.add_argument("--quick", action="store_true", help="smoke sizes (seconds; the numbers mean nothing)")
    parser.add_argument("--json", action="store_true", help="print machine-readable results on stdout")
    parser.add_argument("--profile", action="store_true", help="ingest/fanout: add a cProfile of the Clarion path")
    parser.add_argument("--ingest-seconds", type=float, help="ingest: seconds per round and endpoint")
    parser.add_argument("--concurrency", type=int, help="ingest: concurrent connections")
    parser.add_argument("--subscribers", type=int, help="fanout: topic size")
    parser.add_argument("--repeats", type=int, help="fanout: alternating repetitions")
    parser.add_argument("--digests", type=int, help="digest: subscribers, one digest each")
    parser.add_argument("--digest-events", type=int, help="digest: triggers to all of them")
    parser.add_argument("--clients", type=int, help="websocket: concurrent sockets")
    parser.add_argument("--rate", type=float, help="pipeline: triggers per second (PG + Redis)")
    parser.add_argument("--seconds", type=float, help="pipeline: seconds of load")
    parser.add_argument("--web-processes", type=int, help="pipeline: uvicorn processes (default 1)")
    parser.add_argument("--worker-processes", type=int, help="pipeline: clarion_worker processes (default 1)")
    args = parser.parse_args(argv)
    unknown = [n for n in args.names if n not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(unknown)}; choose from {', '.join(BENCHMARKS)}")
    args.names = [n for n in BENCHMARKS if n in args.names] or list(DEFAULT_BENCHMARKS)
    return args


def _config(name: str, module: ModuleType, args: argparse.Namespace) -> Any:
    cls = getattr(module, "Config", None) or getattr(module, LEGACY_CONFIG.get(name, ""), None)
    if cls is None:
        return None
    config = cls.quick() if args.quick and hasattr(cls, "quick") else cls()
    overrides = {
        field: getattr(args, option)
        for option, (bench, field) in OVERRIDES.items()
        if bench == name and getattr(args, option, None)
    }
    if overrides:
        config = cls(**{**config.__dict__, **overrides})
    return config


def _failed(name: str, exc: BaseException) -> tuple[dict[str, Any], list[Row]]:
    log(f"{name} failed:\n{traceback.format_exc()}")
    return {"error": f"{type(exc).__name__}: {exc}"[:2000]}, [
        Row(name, f"(failed: {type(exc).__name__}: {str(exc)[:200]})", None, unmet=True)
    ]


def run_one(name: str, installation: Installation, args: argparse.Namespace) -> tuple[dict[str, Any], list[Row]]:
    if name == "websocket" and not installation.redis_url:  # the module predates Skipped
        return {"skipped": "needs REDIS_URL (channels-redis)"}, []
    try:
        module = importlib.import_module(f"bench.{name}")
    except ModuleNotFoundError as exc:
        if exc.name != f"bench.{name}":
            return _failed(name, exc)
        return {"skipped": f"bench/{name}.py does not exist yet"}, []
    except Exception as exc:  # an import error of the module is its section's failure, not the run's
        return _failed(name, exc)
    config = _config(name, module, args)
    started = time.monotonic()
    try:
        kwargs: dict[str, Any] = {"profile": True} if args.profile and name in ("ingest", "fanout") else {}
        result = dict(module.run(installation, config, **kwargs) if config is not None else module.run(installation))
    except Skipped as exc:
        log(f"{name} skipped: {exc}")
        return {"skipped": str(exc)}, []
    except Exception as exc:
        return _failed(name, exc)
    result["wall_seconds"] = round(time.monotonic() - started, 1)
    rows_of = getattr(module, "rows", None)
    try:
        rows = [coerce_row(name, r) for r in rows_of(result)] if rows_of is not None else legacy_rows(name, result)
    except Exception as exc:
        rows = [Row(name, f"(rows() failed: {type(exc).__name__}: {exc})", None)]
    return result, rows


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    # SIGTERM (``timeout``, a CI cancel) unwinds like Ctrl-C: the finally blocks stop every process
    # this run started and drop its database.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    installation = Installation.create()
    results: dict[str, Any] = {
        "command": "python -m bench " + shlex.join(argv),
        "quick": args.quick,
        "installation": installation.describe_database(),
        "machine": machine_info(installation),
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "benchmarks": {},
        "table": [],
    }
    log(f"{results['installation']}; broker {installation.broker}; var dir {installation.var_dir}")
    rows: list[Row] = []
    failed = False
    try:
        for name in args.names:
            log(f"===== {name}")
            result, new_rows = run_one(name, installation, args)
            results["benchmarks"][name] = result
            rows.extend(new_rows)
            failed = failed or "error" in result
        if installation._django_ready:
            results["machine"]["database_connections"] = database_connections()
    finally:
        installation.cleanup()
    results["machine"]["load_average_at_end"] = round(os.getloadavg()[0], 2)
    skipped = {name: str(r["skipped"]) for name, r in results["benchmarks"].items() if r.get("skipped")}
    results["table"] = [row.to_dict() for row in complete(rows, skipped)]

    if args.profile:
        for name, result in results["benchmarks"].items():
            if "profile" in result:
                print(f"\n===== cProfile: {name} =====\n{result['profile']}", file=sys.stderr)
    if args.json:
        print(json.dumps(results, indent=2, default=str))
    else:
        print(render(results))
    return 1 if failed else 0


def print_saved(path: str) -> None:
    """Re-print the table of a saved ``--json`` output.

    ``python -c 'import bench.__main__ as m; m.print_saved("r.json")'``
    """
    with open(path) as handle:
        results = json.load(handle)
    results["table"] = [row_from_dict(r).to_dict() for r in results.get("table", [])]
    print(render(results))


if __name__ == "__main__":
    raise SystemExit(main())
