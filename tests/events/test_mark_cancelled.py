"""events_mark_cancelled: the events app writes Event.status when the engine cancels runs."""

from __future__ import annotations

import pytest

from apps.events.models import Event
from apps.events.services import events_mark_cancelled
from tests.workflows.conftest import make_workflow

pytestmark = pytest.mark.django_db


@pytest.fixture
def events(tenant) -> dict[str, Event]:
    workflow = make_workflow(tenant.environment, "ping", [{"id": "wait", "type": "delay", "for": "1h"}])
    return {
        status: Event.objects.create(
            environment=tenant.environment,
            transaction_id=f"t-{status}",
            workflow=workflow,
            workflow_version_id=workflow.published_version_id,
            status=status,
        )
        for status in Event.Status.values
    }


def _statuses(events: dict[str, Event]) -> dict[str, str]:
    return dict(Event.objects.filter(pk__in=[e.pk for e in events.values()]).values_list("transaction_id", "status"))


def test_only_pending_cancels_events_whose_fan_out_has_not_finished(events, django_assert_num_queries):
    with django_assert_num_queries(1):
        changed = events_mark_cancelled(event_ids=[e.pk for e in events.values()], only_pending=True)

    assert changed == 1
    assert _statuses(events) == {
        "t-pending": "cancelled",
        "t-processed": "processed",
        "t-cancelled": "cancelled",
        "t-failed": "failed",
    }


def test_otherwise_every_event_not_cancelled_yet(events, django_assert_num_queries):
    with django_assert_num_queries(1):
        changed = events_mark_cancelled(event_ids={e.pk for e in events.values()})

    assert changed == 3
    assert set(_statuses(events).values()) == {"cancelled"}
