"""The load generator: triggers at a fixed rate, each with a transaction id, in its own process.

``CHAOS_SECRET_KEY=sk_… python -m bench.chaos.loadgen --plan plan.json --out loadgen.sqlite3``

The plan (JSON, written by the orchestrator) says: base URL, rate, count, the subscriber pool,
recipients per trigger, the workflows and their weights, the transaction-id prefix and a seed.
Trigger ``i`` is sent at ``start + i / rate`` whatever happened to the earlier ones (an open
loop, as real producers behave). A client that gets no answer or a 5xx retries with the SAME
transaction id (Clarion answers 409 ``duplicate_transaction`` if the first try was in fact
accepted), up to ``retries`` times with a growing pause, like a careful producer.

Every attempt goes to the ``attempts`` table and every trigger's final word to ``triggers``
(``accepted`` for a 2xx, or a 409 duplicate after a failed try; ``failed`` otherwise).
It exits by itself once every trigger is settled or ``deadline_seconds`` have passed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any

import httpx

SCHEMA = """
CREATE TABLE IF NOT EXISTS attempts (
    txid TEXT NOT NULL, n INTEGER NOT NULL, at REAL NOT NULL, status INTEGER NOT NULL,
    error TEXT NOT NULL, code TEXT NOT NULL, seconds REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS triggers (
    txid TEXT PRIMARY KEY, workflow TEXT NOT NULL, recipients TEXT NOT NULL, scheduled_at REAL NOT NULL,
    final TEXT NOT NULL, final_status INTEGER NOT NULL, attempts INTEGER NOT NULL, settled_at REAL NOT NULL
);
"""
REQUEST_TIMEOUT = 15.0
RETRY_PAUSES = (0.5, 1.0, 2.0, 4.0, 8.0)


def _pick_workflow(rng: random.Random, weighted: list[tuple[str, int]]) -> str:
    total = sum(weight for _, weight in weighted)
    roll = rng.uniform(0, total)
    for key, weight in weighted:
        roll -= weight
        if roll <= 0:
            return key
    return weighted[-1][0]


def build_triggers(plan: dict[str, Any]) -> list[dict[str, Any]]:
    """The whole schedule, decided up front from the seed: ids, workflows, recipients."""
    rng = random.Random(plan["seed"])
    weighted = [(str(k), int(w)) for k, w in plan["workflows"]]
    pool = list(plan["subscribers"])
    triggers = []
    for i in range(int(plan["count"])):
        triggers.append(
            {
                "txid": f"{plan['prefix']}-{i:06d}",
                "workflow": _pick_workflow(rng, weighted),
                "to": rng.sample(pool, int(plan["recipients_per_trigger"])),
                "offset": i / float(plan["rate"]),
                "n": i,
            }
        )
    return triggers


class Store:
    def __init__(self, path: Path) -> None:
        self.db = sqlite3.connect(path, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.executescript(SCHEMA)
        self.pending: list[tuple[str, tuple[Any, ...]]] = []

    def attempt(self, txid: str, n: int, at: float, status: int, error: str, code: str, seconds: float) -> None:
        self.pending.append(
            ("INSERT INTO attempts VALUES (?, ?, ?, ?, ?, ?, ?)", (txid, n, at, status, error, code, seconds))
        )

    def settle(self, trigger: dict[str, Any], scheduled_at: float, final: str, status: int, attempts: int) -> None:
        self.pending.append(
            (
                "INSERT OR REPLACE INTO triggers VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    trigger["txid"],
                    trigger["workflow"],
                    json.dumps(trigger["to"]),
                    scheduled_at,
                    final,
                    status,
                    attempts,
                    time.time(),
                ),
            )
        )

    def flush(self) -> None:
        if not self.pending:
            return
        rows, self.pending = self.pending, []
        self.db.execute("BEGIN")
        for sql, params in rows:
            self.db.execute(sql, params)
        self.db.execute("COMMIT")


def _error_code(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return ""
    error = body.get("error") if isinstance(body, dict) else None
    return str(error.get("code", "")) if isinstance(error, dict) else ""


async def _send(
    client: httpx.AsyncClient,
    store: Store,
    trigger: dict[str, Any],
    start_wall: float,
    start_mono: float,
    deadline: float,
    stats: dict[str, int],
    plan: dict[str, Any],
) -> None:
    await asyncio.sleep(max(0.0, start_mono + trigger["offset"] - time.monotonic()))
    scheduled_at = start_wall + trigger["offset"]
    body = {
        "workflow": trigger["workflow"],
        "to": trigger["to"],
        "payload": {"n": trigger["n"], "title": f"Chaos {trigger['n']}"},
        "transaction_id": trigger["txid"],
    }
    attempt = 0
    failed_before = False
    while True:
        attempt += 1
        began = time.monotonic()
        status, error, code = 0, "", ""
        try:
            response = await client.post("/api/v1/events/trigger", json=body, timeout=REQUEST_TIMEOUT)
            status = response.status_code
            code = _error_code(response) if status >= 400 else ""
        except httpx.HTTPError as exc:
            error = f"{type(exc).__name__}: {exc}"[:300]
        store.attempt(trigger["txid"], attempt, time.time(), status, error, code, time.monotonic() - began)
        if 200 <= status < 300:
            stats["accepted"] += 1
            store.settle(trigger, scheduled_at, "accepted", status, attempt)
            return
        if status == 409 and code == "duplicate_transaction" and failed_before:
            stats["accepted"] += 1  # an earlier try was accepted after all; the client now knows it
            store.settle(trigger, scheduled_at, "accepted", status, attempt)
            return
        if status >= 500:
            stats["5xx"] += 1
        elif status == 0:
            stats["no_answer"] += 1
        retryable = status == 0 or status >= 500 or status == 429
        pause = RETRY_PAUSES[min(attempt - 1, len(RETRY_PAUSES) - 1)]
        if not retryable or attempt > int(plan["retries"]) or time.monotonic() + pause > deadline:
            stats["failed"] += 1
            store.settle(trigger, scheduled_at, "failed", status, attempt)
            return
        failed_before = True
        await asyncio.sleep(pause)


async def run(plan: dict[str, Any], store: Store, secret_key: str) -> dict[str, int]:
    triggers = build_triggers(plan)
    stats = {"accepted": 0, "failed": 0, "5xx": 0, "no_answer": 0}
    limits = httpx.Limits(max_connections=int(plan.get("connections", 32)), max_keepalive_connections=8)
    start_wall, start_mono = time.time(), time.monotonic()
    deadline = start_mono + float(plan["deadline_seconds"])
    async with httpx.AsyncClient(
        base_url=plan["base_url"], headers={"Authorization": f"Bearer {secret_key}"}, limits=limits
    ) as client:
        tasks = [
            asyncio.create_task(_send(client, store, t, start_wall, start_mono, deadline, stats, plan))
            for t in triggers
        ]
        last_report = time.monotonic()
        while True:
            done = sum(1 for t in tasks if t.done())
            store.flush()
            if done == len(tasks):
                break
            if time.monotonic() > deadline + REQUEST_TIMEOUT:
                for task in tasks:
                    task.cancel()
                break
            if time.monotonic() - last_report >= 10:
                last_report = time.monotonic()
                print(
                    f"[loadgen] {time.monotonic() - start_mono:5.0f} s: {done}/{len(tasks)} settled, {stats}",
                    file=sys.stderr,
                    flush=True,
                )
            await asyncio.sleep(0.25)
        await asyncio.gather(*tasks, return_exceptions=True)
    store.flush()
    return stats


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.chaos.loadgen")
    parser.add_argument("--plan", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    plan = json.loads(args.plan.read_text())
    secret_key = os.environ["CHAOS_SECRET_KEY"]
    store = Store(args.out)
    stats = asyncio.run(run(plan, store, secret_key))
    print(f"[loadgen] done: {json.dumps(stats)}", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
