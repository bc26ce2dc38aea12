"""The text ``GET /metrics`` (and the worker exporter) serve.

With ``PROMETHEUS_MULTIPROC_DIR`` set, the values of every process of this host (uvicorn workers,
``clarion_worker`` and its django-q2 children) are read from that directory and added up; the
live-gauge files of processes that are gone are removed first (``mark_process_dead``), so a
recycled worker's websocket count does not linger. Without it, only this process's values.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from prometheus_client import REGISTRY, CollectorRegistry, generate_latest, multiprocess

_LIVE_GAUGE_FILE = re.compile(r"^gauge_live\w+?_(\d+)\.db$")


def multiprocess_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def mark_dead_processes(path: str) -> list[int]:
    """Drop the live-gauge files of processes of this host that have exited. Returns their pids."""
    dead: set[int] = set()
    for entry in Path(path).iterdir():
        match = _LIVE_GAUGE_FILE.match(entry.name)
        if match and not _alive(int(match.group(1))):
            dead.add(int(match.group(1)))
    for pid in dead:
        multiprocess.mark_process_dead(pid, path)
    return sorted(dead)


def render(*, include_database: bool = True) -> bytes:
    """Prometheus text: the processes' counters, histograms and gauges, then the scrape-time gauges."""
    path = multiprocess_dir()
    if path:
        mark_dead_processes(path)
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=path)
        output = generate_latest(registry)
    else:
        output = generate_latest(REGISTRY)
    if include_database:
        from apps.observability.collectors import DatabaseCollector

        database = CollectorRegistry(auto_describe=False)
        database.register(DatabaseCollector())
        output += generate_latest(database)
    return output
