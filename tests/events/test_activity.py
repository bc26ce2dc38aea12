"""Activity: the Event list's filters, its exact search, and what it costs (no per-row query, no
COUNT over the table, no SELECT DISTINCT of dates, indexes on PostgreSQL)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from apps.delivery.models import Message
from apps.events.admin import EventAdmin
from apps.events.models import Event
from apps.subscribers.models import Subscriber
from apps.tenancy.models import Environment
from apps.workflows.models import Run, StepRun, Workflow
from tests.core.test_csp import assert_safe_page
from tests.factories import SubscriberFactory
from tests.workflows.conftest import comment_workflow, make_workflow  # noqa: F401

pytestmark = pytest.mark.django_db

CHANGELIST = "/admin/events/event/"


def make_event(
    environment: Environment,
    workflow: Workflow,
    transaction_id: str,
    *,
    status: str = Event.Status.PROCESSED,
    runs: Sequence[tuple[Subscriber, str, list[tuple[str, str]]]] = (),
    age: timedelta = timedelta(0),
) -> Event:
    """An event as the engine leaves it: its runs (subscriber, status) and their messages (channel, status)."""
    event = Event.objects.create(
        environment=environment,
        workflow=workflow,
        workflow_version=workflow.published_version,
        transaction_id=transaction_id,
        status=status,
        recipient_count=len(runs),
    )
    if age:
        Event.objects.filter(pk=event.pk).update(created_at=timezone.now() - age)
        event.refresh_from_db()
    for subscriber, run_status, sent in runs:
        run = Run.objects.create(
            environment=environment,
            event=event,
            workflow_version=workflow.published_version,
            subscriber=subscriber,
            status=run_status,
        )
        if not sent:
            StepRun.objects.create(run=run, step_id="mail", step_type="email", decision="skipped", reason="no_address")
        for channel, message_status in sent:
            Message.objects.create(
                environment=environment, run=run, subscriber=subscriber, step_id=channel, channel=channel,
                status=message_status, recipient=f"{subscriber.subscriber_id}@example.com",
            )  # fmt: skip
    return event


@dataclass
class World:
    comment: Workflow
    other: Workflow
    events: dict[str, Event]


@pytest.fixture
def world(tenant: Any, comment_workflow: Workflow) -> World:  # noqa: F811
    env = tenant.environment
    other = make_workflow(env, "digest-me", [{"id": "inbox", "type": "in_app", "template": "comment-in-app"}])
    alice = SubscriberFactory(environment=env, subscriber_id="alice")
    bob = SubscriberFactory(environment=env, subscriber_id="bob")
    delivered = [(alice, "completed", [("email", "delivered")])]
    events = {
        "delivered": make_event(env, comment_workflow, "tx-delivered", runs=delivered),
        "failed": make_event(env, comment_workflow, "tx-failed", runs=[(bob, "completed", [("sms", "failed")])]),
        "skipped": make_event(env, other, "tx-skipped", runs=[(bob, "completed", [])]),
        "waiting": make_event(env, other, "tx-waiting", runs=[(alice, "waiting", [])]),
        "old": make_event(env, comment_workflow, "tx-old", status=Event.Status.FAILED, age=timedelta(days=20)),
        "older": make_event(env, comment_workflow, "tx-older", runs=[(bob, "cancelled", [])], age=timedelta(days=60)),
    }  # fmt: skip
    return World(comment=comment_workflow, other=other, events=events)


def listed(admin_client: Any, **params: Any) -> set[str]:
    response = admin_client.get(CHANGELIST, params)
    assert response.status_code == 200, response.content[:300]
    return {event.transaction_id for event in response.context["cl"].result_list}


ALL = {"tx-delivered", "tx-failed", "tx-skipped", "tx-waiting", "tx-old", "tx-older"}


def test_without_filters_every_event_is_listed(admin_client: Any, world: World) -> None:
    assert listed(admin_client) == ALL
    assert_safe_page(admin_client.get(CHANGELIST, {"q": "<script>alert(1)</script>"}))  # CSP; the term escaped


def test_status_and_workflow_filters(admin_client: Any, world: World) -> None:
    assert listed(admin_client, status__exact="failed") == {"tx-old"}
    assert listed(admin_client, workflow__id__exact=world.other.pk) == {"tx-skipped", "tx-waiting"}
    assert listed(admin_client, workflow__id__exact=world.comment.pk) == ALL - {"tx-skipped", "tx-waiting"}


def test_created_ranges(admin_client: Any, world: World) -> None:
    recent = {"tx-delivered", "tx-failed", "tx-skipped", "tx-waiting"}
    assert listed(admin_client, created="today") == recent
    assert listed(admin_client, created="7d") == recent
    assert listed(admin_client, created="30d") == recent | {"tx-old"}


def test_date_hierarchy_narrows_to_a_month_and_a_day(admin_client: Any, world: World) -> None:
    when = timezone.localtime(world.events["older"].created_at)
    month = {"created_at__year": when.year, "created_at__month": when.month}
    assert listed(admin_client, **month) == {"tx-older"}
    assert listed(admin_client, **month, created_at__day=when.day) == {"tx-older"}
    page = admin_client.get(CHANGELIST, month).content.decode()
    assert f"created_at__day={when.day}" in page  # the day links of the drill-down


def test_channel_filter_lists_events_that_produced_a_message_on_it(admin_client: Any, world: World) -> None:
    assert listed(admin_client, channel="email") == {"tx-delivered"}
    assert listed(admin_client, channel="sms") == {"tx-failed"}
    assert listed(admin_client, channel="push") == set()


def test_outcome_filters(admin_client: Any, world: World) -> None:
    assert listed(admin_client, outcome="delivered") == {"tx-delivered"}
    assert listed(admin_client, outcome="failed") == {"tx-failed", "tx-old"}  # a failed message; a failed event
    assert listed(admin_client, outcome="skipped") == {"tx-skipped"}  # not tx-older: its run was cancelled
    assert listed(admin_client, outcome="waiting") == {"tx-waiting"}


def test_a_failed_run_is_a_failed_outcome(admin_client: Any, world: World) -> None:
    Run.objects.filter(event=world.events["skipped"]).update(status=Run.Status.FAILED)
    assert listed(admin_client, outcome="failed") == {"tx-failed", "tx-old", "tx-skipped"}
    assert listed(admin_client, outcome="skipped") == set()


def test_filters_combine(admin_client: Any, world: World) -> None:
    assert listed(admin_client, outcome="failed", created="7d") == {"tx-failed"}
    assert listed(admin_client, outcome="waiting", workflow__id__exact=world.comment.pk) == set()


def test_search_is_exact_on_transaction_id_and_subscriber_id(
    admin_client: Any, world: World, other_tenant: Any
) -> None:
    assert listed(admin_client, q="tx-failed") == {"tx-failed"}
    assert listed(admin_client, q=" tx-failed ") == {"tx-failed"}
    assert listed(admin_client, q="tx-fail") == set()  # no substring match (no LIKE scan)
    assert listed(admin_client, q="alice") == {"tx-delivered", "tx-waiting"}
    assert listed(admin_client, q="ali") == set()
    assert listed(admin_client, q="nobody") == set()
    assert listed(admin_client, q="alice", outcome="waiting") == {"tx-waiting"}
    # staff see every environment: the same search finds another environment's event, shown with it
    elsewhere = make_event(other_tenant.environment, _workflow_in(other_tenant.environment), "tx-elsewhere")
    assert listed(admin_client, q="tx-elsewhere") == {"tx-elsewhere"}
    assert listed(admin_client, environment__id__exact=elsewhere.environment_id) == {"tx-elsewhere"}
    assert str(other_tenant.environment) in admin_client.get(CHANGELIST, {"q": "tx-elsewhere"}).content.decode()


def test_a_transaction_id_that_is_also_a_subscriber_id_finds_both(admin_client: Any, world: World) -> None:
    env = world.comment.environment
    make_event(env, world.comment, "bob")
    assert listed(admin_client, q="bob") == {"bob", "tx-failed", "tx-skipped", "tx-older"}


def _workflow_in(environment: Environment) -> Workflow:
    return make_workflow(environment, "elsewhere", [{"id": "w", "type": "webhook"}])


def _many(world: World, count: int, prefix: str) -> None:
    env = world.comment.environment
    for n in range(count):
        subscriber = SubscriberFactory(environment=env)
        make_event(env, world.comment, f"{prefix}-{n}", runs=[(subscriber, "completed", [("email", "sent")])])


@pytest.mark.parametrize(
    "params",
    [
        {},
        {"q": "alice"},
        {"q": "tx-delivered"},
        {"status__exact": "processed", "created": "30d", "channel": "email", "outcome": "delivered"},
        {"outcome": "failed", "workflow__id__exact": "WORKFLOW"},
        {"_facets": "1"},  # the admin's "Show counts": never offered here, ignored when asked for
    ],
)
def test_the_list_costs_the_same_for_3_and_30_events(admin_client: Any, world: World, params: dict[str, str]) -> None:
    params = {key: str(world.comment.pk) if value == "WORKFLOW" else value for key, value in params.items()}

    def queries() -> list[str]:
        with CaptureQueriesContext(connection) as captured:
            assert admin_client.get(CHANGELIST, params).status_code == 200
        return [query["sql"] for query in captured.captured_queries]

    _many(world, 3, "few")
    few = queries()
    _many(world, 27, "many")
    many = queries()
    assert len(few) == len(many), "\n".join(many)
    # never a COUNT over the whole table: each count is over a LIMIT subquery; no DISTINCT of dates
    counts = [sql for sql in many if "COUNT(" in sql.upper()]
    assert counts and all("LIMIT" in sql.upper() for sql in counts), counts
    assert not any("DISTINCT" in sql.upper() for sql in many)


def test_the_count_stops_a_few_pages_ahead_and_says_so(admin_client: Any, world: World, monkeypatch: Any) -> None:
    monkeypatch.setattr(EventAdmin, "list_per_page", 2)
    monkeypatch.setattr("apps.events.admin.COUNT_PAGES_AHEAD", 1)
    first = admin_client.get(CHANGELIST)
    assert first.context["cl"].result_count == 4  # (page 1 + 1 ahead) × 2 per page, of 6
    assert "At least 4 events match" in first.content.decode()
    third = admin_client.get(CHANGELIST, {"p": 3})  # further on, it counts further: all 6
    assert third.context["cl"].result_count == 6 and "At least" not in third.content.decode()
    assert len(third.context["cl"].result_list) == 2
    assert "At least" not in admin_client.get(CHANGELIST, {"outcome": "waiting"}).content.decode()


def test_the_date_drill_down_reads_only_the_first_and_last_dates(admin_client: Any, world: World) -> None:
    with CaptureQueriesContext(connection) as captured:
        page = admin_client.get(CHANGELIST).content.decode()
    year = timezone.localtime(world.events["older"].created_at).year
    assert f"created_at__year={year}" in page
    assert not any("DISTINCT" in query["sql"].upper() for query in captured.captured_queries)
    # a date that is not one: the admin's own "?e=1" answer, never a 500
    for bad in ({"created_at__year": "x"}, {"created_at__year": "2026", "created_at__month": "13"}):
        response = admin_client.get(CHANGELIST, bad)
        assert response.status_code == 302 and response["Location"].endswith("?e=1"), bad


def test_staff_only(client: Any, world: World) -> None:
    response = client.get(CHANGELIST)
    assert response.status_code == 302 and "/admin/login/" in response["Location"]


@pytest.mark.skipif(connection.vendor != "postgresql", reason="index use is PostgreSQL's plan")
@pytest.mark.parametrize(
    "params",
    [
        {"q": "tx-failed"},
        {"q": "alice"},
        {"channel": "email"},
        {"outcome": "delivered"},
        {"outcome": "failed"},
        {"outcome": "skipped"},
        {"outcome": "waiting"},
        {"status__exact": "failed"},
        {"created": "7d"},
    ],
)
def test_every_filter_and_search_can_use_indexes(admin_client: Any, world: World, params: dict[str, str]) -> None:
    """With sequential scans priced out, no table of the list's query is read in full: each filter
    and the search has an index to follow (on a big table the planner then picks it)."""
    with connection.cursor() as cursor:
        cursor.execute("SET enable_seqscan = off")
    response = admin_client.get(CHANGELIST, params)
    plan = response.context["cl"].queryset[:100].explain()
    assert "Seq Scan" not in plan, plan
