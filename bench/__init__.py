"""Clarion's benchmark suite: ``python -m bench`` (or ``make bench``) prints ONE table,
goal | measured | baseline | ratio, for every figure of issue #15.

The harness (``bench/procs.py``, ``bench/loadgen.py``, ``bench/report.py``, ``bench/common.py``)
runs real web and worker processes on loopback with a fake ESP, drives them from a load generator
in its own process (open loop at a fixed rate, or closed loop / wrk), counts the CPU of every
process involved (PostgreSQL backends and Redis included), and cleans up (throwaway database,
flushed Redis database). Each section (ingest, pipeline, websocket, fanout, delivery, digest,
scaleout; recovery by name) measures against a baseline of the same work in the same run.

See ``docs/benchmarks.md`` for the method, the machine and the results.
"""
