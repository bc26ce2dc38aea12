"""The inbox change cursor: a monotonically increasing 64-bit number stamped on every inbox row
each time it is created or changed (``InboxMessage.seq``).

The value is the wall clock in microseconds, forced to grow strictly within a process, so it
needs no query and no lock and fits a JavaScript number (2**53 is reached in the year 2255).
Two transactions may commit in the other order than they took their numbers (a worker builds a
chunk of rows, then commits), and two hosts' clocks differ slightly: a client resuming after a
gap therefore asks for changes after ``cursor - SYNC_OVERLAP_US`` and merges idempotently (a
message with a lower or equal ``seq`` than the one it holds is ignored).
"""

from __future__ import annotations

import threading
import time

SYNC_OVERLAP_US = 120 * 1_000_000  # commit reordering + clock skew we tolerate on resume

_lock = threading.Lock()
_last = 0


def inbox_seq_next() -> int:
    """The next cursor value of this process: microseconds since the epoch, strictly increasing."""
    global _last
    with _lock:
        now = time.time_ns() // 1000
        _last = now if now > _last else _last + 1
        return _last
