"""A/B of the single-trigger path between two source trees, in one run (docs/benchmarks.md).

Two uvicorn stacks (``bench.procs.Stack``, web x1, no worker) on one throwaway database: A serves
the code of ``--a-root`` (e.g. ``git archive <commit> | tar -x -C /tmp/before``), B this checkout.
Rounds alternate the stacks and, within each, ``POST /api/v1/events/trigger`` and its baseline
``POST /bench/trigger-baseline`` (``bench.ingest``: same body, same load generator, same meter), so
drift on a shared machine hits both sides alike. Prints each round and the medians of CPU per
request (all processes: web, PostgreSQL, Redis), and of the trigger's CPU above the baseline's in
the same round. Rounds where the meter found no PostgreSQL backend (``postgres`` 0) are left out
of the medians.

``BENCH_PORT_BASE=20300 WEB_HTTP_THREADS=10 DATABASE_URL=postgres://…/clarion_x REDIS_URL=redis://…/3 \\
    .venv/bin/python -m bench.trigger_ab --a-root /tmp/before --rounds 7 --seconds 5``
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path
from typing import Any

import bench.procs as procs
from bench.common import Installation, log
from bench.ingest import BASELINE_PATH, RATE_LIMIT_ENV, TRIGGER_BODY, TRIGGER_PATH, _phase, _setup_workflow

PAIR = (("baseline", BASELINE_PATH), ("trigger", TRIGGER_PATH))


def _start(installation: Installation, root: Path | None) -> procs.Stack:
    stack = procs.Stack(installation, web_processes=1, worker_processes=0, esp=False, extra_env=RATE_LIMIT_ENV)
    saved = procs.ROOT
    if root is not None:
        procs.ROOT = root  # the processes start in (and import) the other tree
    try:
        stack.start(workers=False)
    finally:
        procs.ROOT = saved
    return stack


def _median(values: list[float]) -> float:
    return round(statistics.median(values), 3) if values else 0.0


def _summary(side: str, triggers: list[dict[str, Any]], baselines: list[dict[str, Any]]) -> str:
    pairs = [
        (t["cpu_ms_per_request"], b["cpu_ms_per_request"])
        for t, b in zip(triggers, baselines, strict=True)
        if t["cpu_ms_per_request"]["postgres"] and b["cpu_ms_per_request"]["postgres"]
    ]
    trigger = _median([t["system"] for t, _ in pairs])
    baseline = _median([b["system"] for _, b in pairs])
    web = _median([t["web"] for t, _ in pairs])
    postgres = _median([t["postgres"] for t, _ in pairs])
    above = _median([t["system"] - b["system"] for t, b in pairs])
    ratio = round(baseline / trigger, 3) if trigger else 0.0
    return (
        f"{side}: {len(pairs)} rounds; CPU ms/req all processes: trigger {trigger} (web {web}, "
        f"postgres {postgres}), baseline {baseline}; trigger above baseline {above}; baseline/trigger {ratio}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.trigger_ab")
    parser.add_argument("--a-root", required=True, help="source tree of side A (the code before)")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--pool", type=int, default=100, help="subscribers the bodies cycle through")
    args = parser.parse_args(argv)
    installation = Installation.create()
    stacks: dict[str, procs.Stack] = {}
    try:
        stacks["A"] = _start(installation, Path(args.a_root))
        stacks["B"] = _start(installation, None)
        secret = stacks["B"].environment("ab")["secret_key"]
        _setup_workflow(stacks["B"], secret)
        for stack in stacks.values():  # warm both endpoints of both sides
            for _, path in PAIR:
                _phase(stack, secret, path, TRIGGER_BODY, args.concurrency, 2.0, args.pool)
        rounds: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for index in range(args.rounds):
            sides = list(stacks.items()) if index % 2 == 0 else list(reversed(stacks.items()))
            for side, stack in sides:
                for name, path in PAIR if index % 2 == 0 else tuple(reversed(PAIR)):
                    phase = _phase(stack, secret, path, TRIGGER_BODY, args.concurrency, args.seconds, args.pool)
                    rounds.setdefault((side, name), []).append(phase)
                    cpu = phase["cpu_ms_per_request"]
                    log(
                        f"round {index + 1} {side} {name:8s} {phase['requests_per_s']:6.0f} req/s, CPU ms/req: "
                        f"all {cpu['system']} web {cpu['web']} postgres {cpu['postgres']} redis {cpu['redis']}, "
                        f"{phase['errors']} errors"
                    )
        for side in stacks:
            print(_summary(side, rounds[(side, "trigger")], rounds[(side, "baseline")]))
    finally:
        for stack in stacks.values():
            stack.stop()
        installation.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
