"""Thin django-q2 entry points. Each is idempotent: the database says what still needs doing."""

from __future__ import annotations

from apps.workflows import engine


def process_event(event_id: int) -> None:
    engine.process_event(event_id)


def process_events(event_ids: list[int]) -> None:
    """The fan-out of many events in one task (a bulk trigger's): claimed, created, walked and
    delivered as micro-batches (``engine.batch``). Safe to retry: processing an event twice is a
    no-op."""
    engine.process_events(event_ids)


def advance_runs(run_ids: list[int]) -> None:
    engine.advance_runs(run_ids)


def sweep() -> dict[str, int]:
    return engine.sweep()
