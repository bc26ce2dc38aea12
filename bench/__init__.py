"""Clarion's benchmark suite: ``python -m bench`` (or ``make bench``).

Every number is reported next to a baseline measured in the same run on the same server or in
the same process, and the ratio between the two is the result worth comparing across machines:

* ``ingest``: requests/s of ``POST /api/v1/events/trigger`` against a bare DRF endpoint
  (same authentication, same JSON body, no work) on one real uvicorn process;
* ``fanout``: notifications/s of the engine (``process_event`` + ``advance_runs``) creating
  in-app messages for a 10,000-subscriber topic, against a raw ``bulk_create`` of the same rows.

See ``docs/benchmarks.md`` for what is measured, how, and the published results.
"""
