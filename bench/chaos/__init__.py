"""The fault suite: ``make chaos`` (full, ≤ 15 min) and ``make chaos-short`` (CI, ≤ 4 min).

It proves the promise "nothing lost, nothing sent twice, recovered in seconds" against the real
processes (uvicorn + the worker command), on loopback only, and stops by itself:

* ``services`` mode: its own PostgreSQL cluster on port 5499 and its own Redis on 6399 (never the
  machine's shared ones); ``embedded`` mode: SQLite + the ORM broker in a temporary folder;
* two fake ESPs speaking Postmark's API on 8391 (primary) and 8392 (secondary), each recording
  every request, switchable into ``ok`` / ``hang`` / ``error`` (500) / ``ratelimit`` (429);
* a load generator in its own process sending triggers (in-app + email, each with a
  transaction id) at a fixed rate, while the orchestrator SIGKILLs the worker's process group
  or one of its children, walks the primary ESP through timeout → 500 → 429 → recovery, kills
  Redis and stops PostgreSQL;
* at the end it waits for the system to drain (bounded) and counts, from the database and the
  fakes' logs: sent, delivered in-app, emails received, lost, duplicated, in doubt, client 5xx,
  drain time. One table per mode; the exit status is non-zero on a loss, a 5xx for a trigger the
  database accepted, or a duplicate outside the policy.

See ``docs/reliability.md``.
"""
