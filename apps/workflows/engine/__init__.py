"""The workflow engine: fan-out of events into runs, and the walk of runs through their steps.

The database is the source of truth. Every function here is safe to call twice with the same
ids: runs are claimed with a lease (a token written by one conditional UPDATE, renewed by a
heartbeat), a chunk's writes (messages, inbox rows, trace, run state) commit in one transaction,
and the unique constraints (one run per event × subscriber, one message per run × step × channel)
make a duplicate impossible even if two workers ever held the same run.

Where things are:

* ``batch`` — the common case in one task: a micro-batch of small events claimed at once, their
  runs created, walked and their messages delivered without a task hop in between;
* ``fanout`` — events into runs, chunk by chunk, under a lease on the event (topics, broadcasts,
  long recipient lists);
* ``chunks`` — claim a chunk of runs, load what they need, walk them, commit their writes;
* ``walker`` — one run through its program (control flow; steps are ``apps/workflows/steps/``);
* ``cancel`` — stop unfinished runs;
* ``category_digests`` — send the digests of held messages;
* ``sweeper`` — the minute safety net (the ticker, ``apps/workflows/ticker.py``, starts due work
  every second).
"""

from apps.workflows.engine.batch import process_event, process_events
from apps.workflows.engine.cancel import event_cancel_runs, events_cancel_runs
from apps.workflows.engine.category_digests import category_digests_send
from apps.workflows.engine.chunks import (
    DELIVER_TASK,
    advance_runs,
    claim_runs,
    commit_chunk,
    load_chunk,
    runs_renew_lease,
    walk_and_commit,
)
from apps.workflows.engine.fanout import ADVANCE_TASK
from apps.workflows.engine.sweeper import sweep
from apps.workflows.engine.walker import walk
from apps.workflows.leases import lease_seconds
from apps.workflows.steps import ChunkWrites

__all__ = [
    "ADVANCE_TASK",
    "DELIVER_TASK",
    "ChunkWrites",
    "advance_runs",
    "category_digests_send",
    "claim_runs",
    "commit_chunk",
    "event_cancel_runs",
    "events_cancel_runs",
    "lease_seconds",
    "load_chunk",
    "process_event",
    "process_events",
    "runs_renew_lease",
    "sweep",
    "walk",
    "walk_and_commit",
]
