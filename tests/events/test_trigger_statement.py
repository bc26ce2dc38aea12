"""The single trigger's INSERT is compiled once per process (``services._event_insert``): the text
and parameters it reuses must be exactly what Django's compiler writes for each event."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from unittest import mock

import pytest
from django.db.models.constants import OnConflict
from django.db.models.sql import InsertQuery

from apps.events import services
from apps.events.models import Event
from apps.workflows.models import Workflow

pytestmark = pytest.mark.django_db

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


def _event(workflow: Workflow, transaction_id: str, payload: dict[str, Any]) -> Event:
    return Event(
        environment=workflow.environment,
        workflow_id=workflow.pk,
        workflow_version_id=workflow.published_version_id,
        transaction_id=transaction_id,
        payload=payload,
        actor={"subscriber_id": "a1"} if payload else None,
        recipients=[{"subscriber_id": "u1"}, {"topic": "t"}],
        cancellation_key="k" if payload else "",
    )


def _compiled(event: Event, version_check: Any) -> tuple[str, list[Any]]:
    if version_check is not None:
        event.workflow_version_id = version_check
    query = InsertQuery(Event, on_conflict=OnConflict.IGNORE)
    query.insert_values(services._EVENT_FIELDS, [event])
    compiler = query.get_compiler(using=Event.objects.db)
    compiler.returning_fields = [Event._meta.pk]
    [(sql, params)] = compiler.as_sql()
    return sql, list(params)


def _comparable(params: list[Any]) -> list[Any]:
    # JSON parameters are adapter objects (psycopg's Jsonb) without equality: compare what they wrap
    return [getattr(p, "obj", p) for p in params]


@pytest.mark.parametrize("checked", [False, True])
def test_the_reused_insert_is_what_the_compiler_writes(comment_workflow: Workflow, checked: bool) -> None:
    services._event_insert_sql.clear()
    check = services._version_check(comment_workflow.environment, comment_workflow) if checked else None
    services._event_insert(_event(comment_workflow, "first", {}), check)  # compiles and remembers the text
    assert len(services._event_insert_sql) == 1
    for transaction_id, payload in (("t-2", {"n": 1, "deep": {"x": [1, 2]}}), ("t-3", {})):
        with mock.patch("django.utils.timezone.now", return_value=NOW):  # created_at's pre_save
            reused = services._event_insert(_event(comment_workflow, transaction_id, payload), check)
            compiled = _compiled(_event(comment_workflow, transaction_id, payload), check)
        assert reused[0] == compiled[0]
        assert _comparable(reused[1]) == _comparable(compiled[1])
