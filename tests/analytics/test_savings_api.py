"""GET /api/v1/reports/savings, its drill-down, and the console pages (staff only, CSV)."""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import time_machine
from django.contrib.auth import get_user_model

from apps.events.services import TriggerRequest, event_trigger
from apps.preferences.models import Preference
from apps.workflows.accounting import LEVERS, OTHER_REASONS
from tests.assertions import assert_error
from tests.factories import SubscriberFactory
from tests.workflows.conftest import make_workflow, published_template

pytestmark = pytest.mark.django_db

START = datetime(2026, 3, 10, 10, 0, tzinfo=UTC)
URL = "/api/v1/reports/savings"
RUNS = "/api/v1/reports/savings/runs"
DAY = {"from": "2026-03-10", "to": "2026-03-10"}


@pytest.fixture
def workload(tenant: Any, django_capture_on_commit_callbacks: Any) -> Iterator[Any]:
    """Five subscribers, two of them without email and one opted out of it: 10 baseline messages."""
    env = tenant.environment
    published_template(env, "note", "in_app", title_en="note", body_en="")
    published_template(env, "mail", "email", subject_en="mail", body_en="<p>mail</p>")
    make_workflow(
        env,
        "news",
        [{"id": "n", "type": "in_app", "template": "note"}, {"id": "e", "type": "email", "template": "mail"}],
    )
    for index in range(5):
        SubscriberFactory(environment=env, subscriber_id=f"u{index}", email="" if index < 2 else f"u{index}@x.test")
    Preference.objects.create(
        environment=env, subscriber=env.subscribers.get(subscriber_id="u4"), channel="email", enabled=False
    )
    with time_machine.travel(START, tick=False):
        with django_capture_on_commit_callbacks(execute=True):
            event_trigger(
                environment=env, request=TriggerRequest(workflow="news", to=[f"u{i}" for i in range(5)], payload={})
            )
        yield env


def test_the_report_has_the_documented_shape(api, workload):
    response = api.get(URL, DAY)
    assert response.status_code == 200, response.content
    body = response.json()
    assert set(body) == {
        "currency",
        "baseline",
        "actual",
        "avoided",
        "other",
        "by_channel",
        "by_workflow",
        "recipients",
    }
    assert body["currency"] == "USD"
    assert body["baseline"] == {"messages": 10, "cost": "0.004500"}  # 5 emails at 0.0009, in-app free
    assert body["actual"] == {"messages": 7, "cost": "0.001800"}
    assert [item["lever"] for item in body["avoided"]] == list(LEVERS)
    avoided = {item["lever"]: item for item in body["avoided"]}
    assert avoided["no_address"] == {
        "lever": "no_address",
        "messages": 2,
        "cost": "0.001800",
        "counted": 2,
        "replaced_by_digests": 0,
        "runs": "/api/v1/reports/savings/runs?lever=no_address"
        "&from=2026-03-10T00%3A00%3A00Z&to=2026-03-11T00%3A00%3A00Z",
    }
    # the link is the drill-down of exactly what the lever counted
    drilled = api.get(avoided["no_address"]["runs"]).json()["data"]
    assert len(drilled) == avoided["no_address"]["counted"]
    assert body["other"][0]["runs"].startswith("/api/v1/reports/savings/runs?lever=other%3Acancelled&")
    assert avoided["preference"]["messages"] == 1
    assert [item["reason"] for item in body["other"]] == list(OTHER_REASONS)
    assert [row["channel"] for row in body["by_channel"]] == ["email", "in_app"]
    assert body["by_channel"][0]["price"] == "0.000900"
    assert body["by_workflow"][0]["workflow"] == "news"
    assert body["by_workflow"][0]["avoided"] == {"messages": 3, "cost": "0.002700"}
    assert body["recipients"] == 5


def test_a_period_outside_the_runs_is_empty(api, workload):
    body = api.get(URL, {"from": "2026-03-11", "to": "2026-03-12"}).json()
    assert body["baseline"] == {"messages": 0, "cost": "0.000000"} and body["by_workflow"] == []
    hour = api.get(URL, {"from": "2026-03-10T09:00:00Z", "to": "2026-03-10T10:00:00Z"}).json()
    assert hour["baseline"]["messages"] == 0  # the runs finished in the 10:00 hour
    assert api.get(URL, {"from": "2026-03-10T10:00:00Z", "to": "2026-03-10T11:00:00Z"}).json()["baseline"][
        "messages"
    ] == (10)


@pytest.mark.parametrize(
    ("params", "status", "code"),
    [
        ({}, 400, "validation_error"),
        ({"from": "2026-03-10"}, 400, "validation_error"),
        ({"from": "yesterday", "to": "2026-03-10"}, 400, "validation_error"),
        ({"from": "2026-13-45", "to": "2026-03-10"}, 400, "validation_error"),
        ({"from": "2026-03-10T10:30:00Z", "to": "2026-03-11"}, 400, "validation_error"),
        ({"from": "2026-03-10\x00", "to": "2026-03-11"}, 400, "invalid_characters"),
        ({"from": "2026-03-10", "to": "9999-12-31"}, 400, "validation_error"),
        ({"from": "2026-03-11", "to": "2026-03-10"}, 422, "invalid_range"),
        ({"from": "2020-01-01", "to": "2026-03-10"}, 422, "range_too_long"),
        ({**DAY, "group_by": "workflow"}, 400, "unknown_query_parameter"),
    ],
)
def test_bad_periods_are_errors_in_the_envelope(api, workload, params, status, code):
    assert_error(api.get(URL, params), status, code)


def test_the_report_needs_a_secret_key(anon_api, tenant, workload):
    assert_error(anon_api.get(URL, DAY), 401, "not_authenticated")
    anon_api.credentials(HTTP_AUTHORIZATION=f"Bearer {tenant.publishable_key}")
    assert anon_api.get(URL, DAY).status_code in (401, 403)


def test_each_environment_sees_its_own_report_and_runs(workload, other_tenant):
    body = other_tenant.client.get(URL, DAY).json()
    assert body["baseline"]["messages"] == 0
    assert other_tenant.client.get(RUNS, {**DAY, "lever": "no_address"}).json() == {"data": [], "next_cursor": None}


def test_the_drill_down_pages_through_the_messages_a_lever_counted(api, workload):
    seen, cursor = [], None
    for _ in range(5):
        params = {**DAY, "lever": "no_address", "limit": 1, **({"cursor": cursor} if cursor else {})}
        response = api.get(RUNS, params)
        assert response.status_code == 200, response.content
        page = response.json()
        seen += page["data"]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert sorted(row["subscriber_id"] for row in seen) == ["u0", "u1"]
    assert {(row["workflow"], row["step_id"], row["channel"], row["reason"]) for row in seen} == {
        ("news", "e", "email", "no_address")
    }
    assert set(seen[0]) == {
        "run_id",
        "transaction_id",
        "subscriber_id",
        "workflow",
        "step_id",
        "channel",
        "template",
        "lever",
        "reason",
        "run_status",
        "completed_at",
    }
    preference = api.get(RUNS, {**DAY, "lever": "preference"}).json()["data"]
    assert [row["subscriber_id"] for row in preference] == ["u4"]


@pytest.mark.parametrize(
    ("params", "code"),
    [
        ({**DAY}, "validation_error"),
        ({**DAY, "lever": "cheaper"}, "validation_error"),
        ({**DAY, "lever": "digest", "cursor": "not-a-cursor"}, "invalid_cursor"),
        ({**DAY, "lever": "digest", "cursor": "cjotMQ"}, "invalid_cursor"),  # "r:-1"
        ({**DAY, "lever": "digest", "limit": "0"}, "validation_error"),
        ({"lever": "digest"}, "validation_error"),
    ],
)
def test_bad_drill_down_requests_are_400s(api, workload, params, code):
    assert_error(api.get(RUNS, params), 400, code)


def test_the_openapi_schema_documents_both_operations(api):
    schema = api.get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json").json()
    report = schema["paths"]["/api/v1/reports/savings"]["get"]
    assert {p["name"] for p in report["parameters"]} == {"from", "to"}
    runs = schema["paths"]["/api/v1/reports/savings/runs"]["get"]
    assert {p["name"] for p in runs["parameters"]} == {"from", "to", "lever", "cursor", "limit"}


# --------------------------------------------------------------------------------------------
# The console
# --------------------------------------------------------------------------------------------


@pytest.fixture
def staff(client: Any) -> Any:
    user = get_user_model().objects.create_user("ops", password="x", is_staff=True, is_superuser=True)
    client.force_login(user)
    return client


def test_the_console_page_draws_the_report(staff, workload):
    response = staff.get("/admin/analytics/savings/", {"environment": workload.pk, **DAY})
    assert response.status_code == 200
    page = response.content.decode()
    assert "<svg" in page and "Avoided: no_address" in page
    assert "+ avoided <strong>3</strong> + other <strong>0</strong>" in page
    assert f"/admin/analytics/savings/runs/?environment={workload.pk}&amp;from=2026-03-10" in page
    # No JavaScript library, no CDN: the only script after the report is the admin theme's own.
    after = page.split('id="content-main"')[1]
    assert re.findall(r"<script[^>]*>", after) == ['<script src="/static/unfold/js/simplebar/simplebar.js">']


def test_the_console_exports_csv(staff, workload):
    response = staff.get("/admin/analytics/savings/", {"environment": workload.pk, **DAY, "format": "csv"})
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/csv")
    rows = list(csv.reader(io.StringIO(response.content.decode())))
    assert rows[0] == ["section", "name", "part", "messages", "cost", "currency"]
    assert ["total", "baseline", "", "10", "0.004500", "USD"] in rows
    assert ["avoided", "no_address", "", "2", "0.001800", "USD"] in rows
    assert ["workflow", "news", "actual", "7", "0.001800", "USD"] in rows


def test_the_console_drill_down_and_bad_input(staff, workload):
    runs = staff.get("/admin/analytics/savings/runs/", {"environment": workload.pk, **DAY, "lever": "no_address"})
    assert runs.status_code == 200 and runs.content.decode().count("<code>no_address</code>") == 2
    bad = staff.get("/admin/analytics/savings/", {"environment": workload.pk, "from": "x", "to": "y"})
    assert bad.status_code == 200 and "is not a date" in bad.content.decode()
    cursor = staff.get("/admin/analytics/savings/runs/", {**DAY, "lever": "digest", "cursor": "%%%"})
    assert cursor.status_code == 200 and "not valid" in cursor.content.decode()


def test_the_console_is_for_staff_only(client, workload):
    response = client.get("/admin/analytics/savings/", DAY)
    assert response.status_code == 302 and "/admin/login/" in response["Location"]
    user = get_user_model().objects.create_user("someone", password="x", is_staff=False)
    client.force_login(user)
    assert client.get("/admin/analytics/savings/runs/", DAY).status_code == 302


def test_runs_finished_a_day_later_fall_in_that_day(api, workload, tenant, django_capture_on_commit_callbacks):
    with time_machine.travel(START + timedelta(days=1), tick=False):
        with django_capture_on_commit_callbacks(execute=True):
            event_trigger(
                environment=tenant.environment, request=TriggerRequest(workflow="news", to=["u2"], payload={})
            )
    assert api.get(URL, DAY).json()["baseline"]["messages"] == 10
    assert api.get(URL, {"from": "2026-03-11", "to": "2026-03-11"}).json()["baseline"]["messages"] == 2
    assert api.get(URL, {"from": "2026-03-10", "to": "2026-03-11"}).json()["baseline"]["messages"] == 12
