"""Leases that stay short and safe: renewed by a heartbeat while the work goes on.

A worker that claims runs (or an event's fan-out) holds them for ``RUN_LEASE_SECONDS``. While it
works, a heartbeat thread renews the lease every quarter of that; if the worker dies, the lease
runs out within one lease and the ticker hands the work to another worker. A short lease is only
safe because of the heartbeat: a slow chunk (a big digest, a lock wait) keeps its runs.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from types import TracebackType

from django.conf import settings
from django.db import DatabaseError, connections

logger = logging.getLogger(__name__)


def lease_seconds() -> int:
    return int(settings.CLARION["RUN_LEASE_SECONDS"])


class LeaseHeartbeat:
    """``with LeaseHeartbeat(renew, interval):`` calls ``renew()`` every ``interval`` seconds from a
    thread of its own until the block ends. Work that ends before the first interval costs nothing:
    the thread never touches the database."""

    def __init__(self, renew: Callable[[], object], *, interval: float, name: str = "lease-heartbeat") -> None:
        self._renew = renew
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.beats = 0

    def __enter__(self) -> LeaseHeartbeat:
        self._thread.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        self._thread.join(timeout=self._interval + 5)

    def _run(self) -> None:
        touched = False
        try:
            while not self._stop.wait(self._interval):
                touched = True
                try:
                    self._renew()
                    self.beats += 1
                except DatabaseError:
                    # The next beat tries again; if none succeeds the lease runs out and the
                    # claim check at commit keeps this worker from writing over a new owner.
                    logger.warning("lease renewal failed", exc_info=True)
        finally:
            if touched:
                connections.close_all()  # this thread's own connections
