"""A hostile template or condition costs one time limit per chunk, not one per recipient."""

from __future__ import annotations

from typing import Any

import pytest

from apps.core.sandbox import RenderTimeout
from apps.events.services import TriggerRequest, event_trigger
from apps.inbox.models import InboxMessage
from apps.workflows.models import Run, StepRun
from tests.factories import SubscriberFactory
from tests.workflows.conftest import make_workflow, published_template

pytestmark = pytest.mark.django_db


@pytest.fixture
def five(tenant: Any) -> Any:
    env = tenant.environment
    published_template(env, "note", "in_app", title_en="hello", body_en="")
    for index in range(5):
        SubscriberFactory(environment=env, subscriber_id=f"u{index}")
    return env


def _fire(tenant: Any, capture: Any, workflow: str) -> None:
    with capture(execute=True):
        event_trigger(
            environment=tenant.environment,
            request=TriggerRequest(workflow=workflow, to=[f"u{i}" for i in range(5)], payload={}),
        )


def test_a_condition_that_runs_out_of_time_is_tried_once_per_chunk(
    tenant, five, monkeypatch, django_capture_on_commit_callbacks
):
    make_workflow(tenant.environment, "slow-if", [{"id": "n", "type": "in_app", "template": "note", "if": "1 < 2"}])
    calls: list[str] = []

    def slow(expression: str, context: dict[str, Any]) -> Any:
        calls.append(expression)
        raise RenderTimeout("rendering took longer than 2 seconds")

    monkeypatch.setattr("apps.workflows.engine.walker.evaluate_expression", slow)
    _fire(tenant, django_capture_on_commit_callbacks, "slow-if")

    assert len(calls) == 1
    failures = list(StepRun.objects.filter(reason="condition_error").values_list("detail", flat=True))
    assert len(failures) == 5
    assert sum("not tried again" in failure["error"] for failure in failures) == 4
    assert set(Run.objects.values_list("status", flat=True)) == {Run.Status.FAILED}


def test_a_template_that_runs_out_of_time_is_rendered_once_per_chunk(
    tenant, five, monkeypatch, django_capture_on_commit_callbacks
):
    make_workflow(tenant.environment, "slow-render", [{"id": "n", "type": "in_app", "template": "note"}])
    calls: list[int] = []

    def slow(**kwargs: Any) -> Any:
        calls.append(1)
        raise RenderTimeout("rendering took longer than 2 seconds")

    monkeypatch.setattr("apps.workflows.steps.channel.render_version", slow)
    _fire(tenant, django_capture_on_commit_callbacks, "slow-render")

    assert len(calls) == 1
    assert StepRun.objects.filter(reason="render_error").count() == 5
    assert InboxMessage.objects.count() == 0
