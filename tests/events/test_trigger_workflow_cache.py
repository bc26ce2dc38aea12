"""A single trigger reuses the workflow this process resolved before (``apps.events.services``'s
cache of published workflows), and its one INSERT statement checks that guess: a publish, a
rollback, a deactivation or a rename — by this process or another one (a queryset ``update``
stands in for another process: no signal, no cache touched) — is seen by the very next trigger.

Transactional tests: the cache is used in autocommit only (inside a caller's transaction a refused
statement would abort it), which is how the API runs. On SQLite (and the ORM broker) the trigger
reads the workflow every time; the behaviour asserted is the same."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from django.db import connection, transaction
from django.db.models import Sum
from django_q.brokers import get_broker

from apps.analytics import counters
from apps.analytics.models import Counter
from apps.events import services
from apps.events.models import Event
from apps.events.services import TriggerRequest, event_trigger
from apps.workflows.models import Workflow, WorkflowVersion
from apps.workflows.services import workflow_rollback, workflow_upsert
from tests.assertions import assert_error
from tests.workflows.conftest import published_template

pytestmark = pytest.mark.django_db(transaction=True)

TRIGGER = "/api/v1/events/trigger"
STEPS = [{"id": "inbox", "type": "in_app", "template": "cache-in-app"}]
SCHEMA = {"type": "object", "required": ["order_id"], "properties": {"order_id": {"type": "integer"}}}
cached_path = pytest.mark.skipif(
    "connection.vendor != 'postgresql'", reason="the one-statement trigger (and its cache) is PostgreSQL's"
)


@pytest.fixture
def workflow(tenant: Any, settings: Any) -> Iterator[Workflow]:
    settings.CLARION_TASKS_EAGER = False  # accepted events only queue their fan-out (as in the API)
    published_template(tenant.environment, "cache-in-app", "in_app", title_en="Hi", body_en="")
    created, _ = workflow_upsert(environment=tenant.environment, key="orders", name="Orders", steps=STEPS, publish=True)
    yield created
    # These tests commit, so the wake-ups reach the real broker: on Redis they would outlive the
    # test database and wait for the next worker started on that Redis.
    get_broker().purge_queue()


def _trigger(tenant: Any, payload: dict[str, Any], **extra: Any) -> Any:
    return tenant.client.post(TRIGGER, {"workflow": "orders", "to": ["u1"], "payload": payload, **extra}, format="json")


def _triggered(environment_id: int) -> int:
    counted = Counter.objects.filter(environment_id=environment_id, metric=counters.TRIGGERED).aggregate(n=Sum("value"))
    return int(counted["n"] or 0)


def _stale(tenant: Any, workflow: Workflow) -> None:
    """This process's cache holds ``workflow`` as it is now, whatever happens to it next."""
    services._published[(tenant.environment.pk, workflow.key)] = Workflow.objects.select_related(
        "published_version"
    ).get(pk=workflow.pk)


@cached_path
def test_a_repeated_trigger_reads_no_workflow(tenant, workflow, django_assert_num_queries):
    """The first trigger of a workflow: authentication, the workflow, the event's INSERT (with its
    count). The next ones: authentication and the INSERT, which checks the remembered workflow."""
    with django_assert_num_queries(3):
        assert _trigger(tenant, {"n": 1}).status_code == 202
    with django_assert_num_queries(2):
        assert _trigger(tenant, {"n": 2}).status_code == 202
    assert Event.objects.filter(workflow=workflow, workflow_version=workflow.published_version).count() == 2
    assert _triggered(tenant.environment.pk) == 2


def test_a_publish_is_seen_by_the_next_trigger_in_this_process(tenant, workflow):
    assert _trigger(tenant, {}).status_code == 202
    second, _ = workflow_upsert(environment=tenant.environment, key="orders", payload_schema=SCHEMA, publish=True)
    assert second.published_version is not None and second.published_version.number == 2

    assert_error(_trigger(tenant, {}), 422, "invalid_payload")
    response = _trigger(tenant, {"order_id": 7})
    assert response.status_code == 202
    event = Event.objects.get(transaction_id=response.json()["transaction_id"])
    assert event.workflow_version_id == second.published_version_id
    assert _triggered(tenant.environment.pk) == 2  # the refused trigger is not counted


@cached_path
def test_a_publish_by_another_process_is_seen_by_the_next_trigger(tenant, workflow, django_assert_num_queries):
    """Version 2 (with a schema) is made the published one behind this process's back: the INSERT
    refuses the remembered version 1 (writing nothing, counting nothing), and the trigger reads the
    workflow and checks the payload against version 2."""
    assert _trigger(tenant, {}).status_code == 202
    second = WorkflowVersion.objects.create(workflow=workflow, number=2, steps=STEPS, payload_schema=SCHEMA)
    Workflow.objects.filter(pk=workflow.pk).update(published_version=second)

    # authentication, the refused INSERT, the workflow (then the payload is refused: 422)
    with django_assert_num_queries(3):
        assert_error(_trigger(tenant, {}), 422, "invalid_payload")
    # authentication, the INSERT (version 2 is remembered now)
    with django_assert_num_queries(2):
        response = _trigger(tenant, {"order_id": 7})
    assert response.status_code == 202
    event = Event.objects.get(transaction_id=response.json()["transaction_id"])
    assert event.workflow_version_id == second.pk
    assert Event.objects.count() == 2
    assert _triggered(tenant.environment.pk) == 2


@cached_path
def test_a_rollback_elsewhere_is_seen_by_the_next_trigger(tenant, workflow):
    workflow_upsert(environment=tenant.environment, key="orders", name="Orders v2", steps=STEPS, publish=True)
    assert _trigger(tenant, {}).status_code == 202
    _stale(tenant, Workflow.objects.get(pk=workflow.pk))
    third = workflow_rollback(workflow=Workflow.objects.get(pk=workflow.pk), version_number=1)

    response = _trigger(tenant, {})
    assert response.status_code == 202
    event = Event.objects.get(transaction_id=response.json()["transaction_id"])
    assert event.workflow_version_id == third.pk
    assert _triggered(tenant.environment.pk) == 2


def test_a_deactivation_elsewhere_refuses_the_next_trigger(tenant, workflow):
    assert _trigger(tenant, {}).status_code == 202
    _stale(tenant, workflow)
    Workflow.objects.filter(pk=workflow.pk).update(active=False)  # no signal: as another process would
    assert_error(_trigger(tenant, {}), 404, "workflow_not_found")
    assert Event.objects.count() == 1
    assert _triggered(tenant.environment.pk) == 1


def test_a_rename_elsewhere_is_seen_by_the_next_trigger(tenant, workflow):
    assert _trigger(tenant, {}).status_code == 202
    _stale(tenant, workflow)
    Workflow.objects.filter(pk=workflow.pk).update(key="orders-old")
    assert_error(_trigger(tenant, {}), 404, "workflow_not_found")
    assert Event.objects.count() == 1


def test_a_duplicate_against_a_stale_guess_is_still_a_duplicate(tenant, workflow):
    assert _trigger(tenant, {}, transaction_id="order-1").status_code == 202
    _stale(tenant, workflow)
    workflow_upsert(environment=tenant.environment, key="orders", name="Orders v2", steps=STEPS, publish=True)
    assert_error(_trigger(tenant, {}, transaction_id="order-1"), 409, "duplicate_transaction")
    assert Event.objects.count() == 1
    assert _triggered(tenant.environment.pk) == 1


def test_environments_do_not_share_entries(tenant, other_tenant, workflow):
    """The cache is keyed by environment: another environment's workflow of the same key is not used."""
    assert _trigger(tenant, {}).status_code == 202
    assert_error(_trigger(other_tenant, {}), 404, "workflow_not_found")


def test_inside_a_callers_transaction_the_workflow_is_read(tenant, workflow, django_assert_num_queries):
    """A refused statement would abort the caller's transaction: there, no guess is used."""
    assert _trigger(tenant, {}).status_code == 202
    _stale(tenant, workflow)
    second, _ = workflow_upsert(environment=tenant.environment, key="orders", name="v2", steps=STEPS, publish=True)
    with transaction.atomic():
        event = event_trigger(environment=tenant.environment, request=TriggerRequest("orders", ["u1"], {}))
        assert event.workflow_version_id == second.published_version_id
        assert Event.objects.filter(pk=event.pk).exists()  # the transaction is still usable
    assert _triggered(tenant.environment.pk) == 2


def test_the_returned_event_is_the_one_written(tenant, workflow):
    """From a cached workflow too: the event's ids are plain values, its workflow read on demand."""
    for _ in range(2):
        event = event_trigger(environment=tenant.environment, request=TriggerRequest("orders", ["u1"], {"n": 1}))
        stored = Event.objects.get(pk=event.pk)
        assert (event.workflow_id, event.workflow_version_id) == (stored.workflow_id, stored.workflow_version_id)
        assert event.workflow.name == "Orders"
    if connection.vendor == "postgresql":
        assert (tenant.environment.pk, "orders") in services._published
