"""A digest window is measured from when events were triggered, not from when a backlogged worker
reached them: events sent together land in one digest, however late the workers are."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import time_machine
from django.utils.module_loading import import_string

import apps.core.tasks as tasks
from apps.events.services import TriggerRequest, event_trigger
from apps.inbox.models import InboxMessage
from apps.workflows.ticker import tick
from tests.factories import SubscriberFactory
from tests.workflows.conftest import make_workflow, published_template

pytestmark = pytest.mark.django_db

START = datetime(2026, 3, 10, 10, 0, tzinfo=UTC)


@pytest.fixture
def clock() -> Iterator[Any]:
    with time_machine.travel(START, tick=False) as traveller:
        yield traveller


@pytest.fixture
def backlog(settings: Any, monkeypatch: pytest.MonkeyPatch, django_capture_on_commit_callbacks: Any) -> Any:
    """Tasks go to a queue that no worker reads until ``drain()``: a backlogged cluster."""
    queued: list[tuple[str, tuple[Any, ...]]] = []
    settings.CLARION_TASKS_EAGER = False
    settings.Q_CLUSTER = {k: v for k, v in settings.Q_CLUSTER.items() if k != "orm"}
    monkeypatch.setattr(tasks, "_broker_send", lambda func, *args: queued.append((func, args)))

    class Backlog:
        def _run(self, func: str, args: tuple[Any, ...]) -> None:
            with django_capture_on_commit_callbacks(execute=True):
                import_string(func)(*args)

        def drain(self) -> None:
            while queued:
                self._run(*queued.pop(0))

        def run_first(self, func_suffix: str) -> bool:
            """Run the first queued task of that kind ahead of the others (a worst-case ordering)."""
            for index, (func, args) in enumerate(queued):
                if func.endswith(func_suffix):
                    self._run(*queued.pop(index))
                    return True
            return False

        def tick(self) -> dict[str, int]:
            with django_capture_on_commit_callbacks(execute=True):
                return tick()

    return Backlog()


@pytest.fixture
def digesting(tenant: Any) -> Any:
    env = tenant.environment
    published_template(env, "summary", "in_app", title_en="{{ digest.count }} new comments", body_en="")
    make_workflow(
        env,
        "comments",
        [
            {"id": "batch", "type": "digest", "window": "15s"},
            {"id": "inbox", "type": "in_app", "template": "summary"},
        ],
    )
    SubscriberFactory(environment=env, subscriber_id="u1")
    return env


def _trigger(tenant: Any, django_capture_on_commit_callbacks: Any, count: int) -> None:
    for _ in range(count):
        with django_capture_on_commit_callbacks(execute=True):
            event_trigger(
                environment=tenant.environment, request=TriggerRequest(workflow="comments", to=["u1"], payload={})
            )


def test_twenty_events_sent_together_land_in_one_digest_when_the_workers_reach_them_late(
    tenant, digesting, backlog, clock, django_capture_on_commit_callbacks
):
    _trigger(tenant, django_capture_on_commit_callbacks, 11)
    backlog.drain()  # the first eleven are processed at once
    clock.move_to(START + timedelta(seconds=1))
    _trigger(tenant, django_capture_on_commit_callbacks, 9)  # sent one second later ...
    clock.move_to(START + timedelta(seconds=40))
    backlog.drain()  # ... but reached 40 s later, long after the window closed

    backlog.tick()
    backlog.drain()

    assert list(InboxMessage.objects.values_list("title", flat=True)) == ["20 new comments"]


def test_a_leader_due_while_events_of_its_window_are_still_queued_waits_for_them(
    tenant, digesting, backlog, clock, django_capture_on_commit_callbacks
):
    _trigger(tenant, django_capture_on_commit_callbacks, 1)
    backlog.drain()
    clock.move_to(START + timedelta(seconds=10))
    _trigger(tenant, django_capture_on_commit_callbacks, 4)  # inside the window, not yet fanned out

    clock.move_to(START + timedelta(seconds=16))
    assert backlog.tick()["runs_due"] == 1
    # The leader's wake-up runs before the four fan-outs: it must not close the digest without them.
    assert backlog.run_first("advance_runs")
    assert InboxMessage.objects.count() == 0

    backlog.drain()  # the four events reach the bucket
    clock.move_to(START + timedelta(seconds=18))
    backlog.tick()
    backlog.drain()

    assert list(InboxMessage.objects.values_list("title", flat=True)) == ["5 new comments"]
