"""The text ``GET /metrics`` (and the worker exporter) serve.

With ``PROMETHEUS_MULTIPROC_DIR`` set, the values of every process of this host (uvicorn workers,
``clarion_worker`` and its django-q2 children) are read from that directory and added up. Before
that, the files of processes that are gone are folded away: their live-gauge files are removed
(``mark_process_dead``: a recycled worker's websocket count does not linger) and their counter
and histogram files are added into one ``<type>_archive.db`` and deleted, so the directory does
not grow by a few files for every worker django-q2 recycles (every 500 tasks by default) while
no count is lost. Scrapes of one host take a file lock, so one folds while none reads.
Without the variable, only this process's values.
"""

from __future__ import annotations

import fcntl
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from prometheus_client import REGISTRY, CollectorRegistry, generate_latest, multiprocess
from prometheus_client.mmap_dict import MmapedDict

_LIVE_GAUGE_FILE = re.compile(r"^gauge_live\w+?_(\d+)\.db$")
_ACCUMULATING_FILE = re.compile(r"^(counter|histogram|summary)_(\d+)\.db$")


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


def fold_dead_processes(path: str) -> list[int]:
    """Add the counters and histograms of exited processes into the archive files and delete theirs."""
    dead: dict[str, list[Path]] = {}
    pids: set[int] = set()
    for entry in Path(path).iterdir():
        match = _ACCUMULATING_FILE.match(entry.name)
        if match and not _alive(int(match.group(2))):
            dead.setdefault(match.group(1), []).append(entry)
            pids.add(int(match.group(2)))
    for kind, files in dead.items():
        archive = MmapedDict(os.path.join(path, f"{kind}_archive.db"))
        try:
            for file in files:
                for key, value, timestamp, _position in MmapedDict.read_all_values_from_file(str(file)):
                    total, _ = archive.read_value(key)
                    archive.write_value(key, total + value, timestamp)
        finally:
            archive.close()
        for file in files:
            file.unlink(missing_ok=True)
    return sorted(pids)


@contextmanager
def _host_lock(path: str) -> Iterator[None]:
    with open(os.path.join(path, ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def render(*, include_database: bool = True) -> bytes:
    """Prometheus text: the processes' counters, histograms and gauges, then the scrape-time gauges."""
    path = multiprocess_dir()
    if path:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=path)
        with _host_lock(path):
            mark_dead_processes(path)
            fold_dead_processes(path)
            output = generate_latest(registry)
    else:
        output = generate_latest(REGISTRY)
    if include_database:
        from apps.observability.collectors import DatabaseCollector

        database = CollectorRegistry(auto_describe=False)
        database.register(DatabaseCollector())
        output += generate_latest(database)
    return output
