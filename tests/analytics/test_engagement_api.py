"""The engagement query (``analytics_query``), its API and the fold under concurrency (issue #16)."""

from __future__ import annotations

import random
import threading
from collections import Counter as Sums
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from django.db import connection
from django.db.models import Sum

from apps.analytics.counters import LATENCY_BOUNDS, Tally, latency_metric
from apps.analytics.models import Counter, Rollup
from apps.analytics.selectors import analytics_query, histogram_median
from apps.analytics.services import DAY_PREFIX, counters_fold
from tests.assertions import assert_error

pytestmark = pytest.mark.django_db

URL = "/api/v1/analytics"
DAY = datetime(2026, 11, 2, tzinfo=UTC)


def add(environment: Any, at: datetime, metric: str, value: int = 1, **dims: str) -> None:
    tally = Tally()
    tally.add(environment_id=environment.pk, at=at, metric=metric, value=value, **dims)
    tally.write()


@pytest.fixture
def data(tenant: Any, other_tenant: Any) -> None:
    """Two days of counts, some folded into rollups and some not; another environment's too."""
    env = tenant.environment
    for day in (DAY, DAY + timedelta(days=1)):
        for hour, channel in ((9, "email"), (15, "email"), (15, "sms")):
            at = day + timedelta(hours=hour, minutes=30)
            dims = {"workflow_key": "welcome", "category_key": "account", "channel": channel, "template_key": "w1"}
            add(env, at, "sent", 10, **dims)
            add(env, at, "delivered", 8, **dims)
            add(env, at, "opened", 4, **dims)
            add(env, at, "clicked", 1, **dims)
            add(env, at, latency_metric("latency_open", 50), 3, **dims)
            add(env, at, latency_metric("latency_open", 5000), 1, **dims)
            add(env, at, "skipped:preference", 2, workflow_key="welcome", category_key="account", channel=channel)
        add(env, day + timedelta(hours=9), "triggered", 5, workflow_key="welcome", category_key="account")
        add(env, day + timedelta(hours=9), "recipients", 7, workflow_key="welcome", category_key="account")
        if day == DAY:
            counters_fold()  # the first day folded, the second still in deltas
    add(other_tenant.environment, DAY + timedelta(hours=9), "sent", 1000, channel="email", workflow_key="welcome")


def test_a_daily_query_by_workflow_and_channel(tenant, data):
    rows = analytics_query(
        environment=tenant.environment,
        start=DAY,
        end=DAY + timedelta(days=2),
        group_by=["workflow", "channel"],
        interval="day",
    )
    by = {(r["bucket"], r["channel"]): r for r in rows}
    assert set(by) == {
        (f"2026-11-0{d}T00:00:00Z", channel) for d in (2, 3) for channel in ("", "email", "sms")
    }  # triggered and recipients are per workflow: channel ""
    email = by[("2026-11-02T00:00:00Z", "email")]
    assert (email["workflow"], email["sent"], email["delivered"], email["opened"], email["clicked"]) == (
        "welcome",
        20,
        16,
        8,
        2,
    )
    assert email["skipped"] == {"preference": 4}
    assert (email["delivery_rate"], email["open_rate"], email["click_rate"], email["read_rate"]) == (
        0.8,
        0.5,
        0.125,
        0.0,
    )
    # 6 opens within (30, 60] s and 2 within (3600, 7200] s: the median falls in (30, 60]
    assert 30 <= email["median_open_seconds"] <= 60
    assert email["median_read_seconds"] is None
    whole = by[("2026-11-03T00:00:00Z", "")]
    assert (whole["triggered"], whole["recipients"], whole["sent"], whole["open_rate"]) == (5, 7, 0, None)
    # Folded and unfolded days answer alike.
    assert {k: v for k, v in by[("2026-11-03T00:00:00Z", "sms")].items() if k != "bucket"} == {
        k: v for k, v in by[("2026-11-02T00:00:00Z", "sms")].items() if k != "bucket"
    }


def test_hourly_and_whole_range_queries(tenant, data):
    hourly = analytics_query(
        environment=tenant.environment, start=DAY, end=DAY + timedelta(days=1), group_by=[], interval="hour"
    )
    assert [(r["bucket"], r["sent"]) for r in hourly] == [("2026-11-02T09:00:00Z", 10), ("2026-11-02T15:00:00Z", 20)]
    [whole] = analytics_query(
        environment=tenant.environment, start=DAY, end=DAY + timedelta(days=2), group_by=[], interval=None
    )
    assert (whole["bucket"], whole["sent"], whole["triggered"]) == (None, 60, 10)


def test_ranges_with_partial_days_read_day_and_hour_rollups_alike(tenant, data):
    counters_fold()  # everything folded: whole days come from the day rows

    def total(start: datetime, end: datetime, interval: Any) -> int:
        rows = analytics_query(environment=tenant.environment, start=start, end=end, group_by=[], interval=interval)
        return sum(r["sent"] for r in rows)

    # No whole day: 15:30 on the first day (email 10 + sms 10), 09:30 on the second (10).
    noon, next_noon = DAY + timedelta(hours=12), DAY + timedelta(days=1, hours=12)
    assert [total(noon, next_noon, i) for i in ("hour", "day", None)] == [30, 30, 30]
    # Half a day of hours, then a whole day from its day rows.
    assert [total(noon, DAY + timedelta(days=2), i) for i in ("hour", "day", None)] == [50, 50, 50]
    whole = analytics_query(
        environment=tenant.environment, start=DAY, end=DAY + timedelta(days=2), group_by=["channel"], interval=None
    )
    assert {r["channel"]: r["sent"] for r in whole} == {"": 0, "email": 40, "sms": 20}


def test_a_query_is_one_statement_whatever_the_range_or_grouping(tenant, data, django_assert_num_queries):
    for group_by, interval in (([], None), (["workflow", "channel"], "day"), (list(GROUP_ALL), "hour")):
        with django_assert_num_queries(1):
            analytics_query(
                environment=tenant.environment,
                start=DAY,
                end=DAY + timedelta(days=2),
                group_by=group_by,
                interval=interval,
            )


GROUP_ALL = ("workflow", "category", "channel", "template")


def test_a_fold_never_changes_an_answer(tenant, data):
    def answer() -> list[dict[str, Any]]:
        return analytics_query(
            environment=tenant.environment,
            start=DAY,
            end=DAY + timedelta(days=2),
            group_by=list(GROUP_ALL),
            interval="hour",
        )

    before = answer()
    assert Counter.objects.exists()
    counters_fold()
    assert not Counter.objects.exists()
    assert answer() == before


@pytest.mark.parametrize(
    ("buckets", "median"),
    [
        ({}, None),
        ({"10": 1}, 7.1),  # (5, 10]: the middle of one observation, geometrically (5 × √2)
        ({"1": 2}, 0.5),  # the first bucket: linear from 0
        ({"60": 3, "7200": 1}, None),  # checked below: within (30, 60]
        ({"inf": 5}, float(LATENCY_BOUNDS[-1])),
    ],
)
def test_histogram_median(buckets, median):
    result = histogram_median(buckets)
    if buckets == {"60": 3, "7200": 1}:
        assert result is not None and 30 < result <= 60
    else:
        assert result == (round(median, 1) if median is not None else None) or (
            median is not None and result is not None and abs(result - median) < 0.2
        )


def test_latency_metric_buckets():
    assert latency_metric("latency_open", 0) == "latency_open:1"
    assert latency_metric("latency_open", 61) == "latency_open:120"
    assert latency_metric("latency_read", 10**7) == "latency_read:inf"


# --- the API --------------------------------------------------------------------------------------


def test_api_answers_as_the_issue_shows(api, data):
    response = api.get(
        URL, {"from": "2026-11-02", "to": "2026-11-03", "group_by": "workflow,channel", "interval": "day"}
    )
    assert response.status_code == 200, response.content
    rows = response.json()["data"]
    email = next(r for r in rows if r["channel"] == "email" and r["bucket"] == "2026-11-02T00:00:00Z")
    assert {
        "bucket",
        "workflow",
        "channel",
        "sent",
        "delivered",
        "opened",
        "clicked",
        "read",
        "failed",
        "skipped",
    } <= set(email)
    assert (email["sent"], email["skipped"]) == (20, {"preference": 4})
    assert {r["bucket"] for r in rows} == {"2026-11-02T00:00:00Z", "2026-11-03T00:00:00Z"}  # "to" day included


def test_api_is_scoped_to_the_keys_environment(api, other_tenant, data):
    mine = api.get(URL, {"from": "2026-11-02", "to": "2026-11-03"}).json()["data"]
    assert [r["sent"] for r in mine] == [60]
    theirs = other_tenant.client.get(URL, {"from": "2026-11-02", "to": "2026-11-03"}).json()["data"]
    assert [r["sent"] for r in theirs] == [1000]


@pytest.mark.parametrize(
    ("params", "status", "code"),
    [
        ({"to": "2026-11-03"}, 400, "validation_error"),
        ({"from": "yesterday", "to": "2026-11-03"}, 400, "validation_error"),
        ({"from": "2026-02-30", "to": "2026-11-03"}, 400, "validation_error"),
        ({"from": "2026-11-02T25:00:00", "to": "2026-11-03"}, 400, "validation_error"),
        ({"from": "9999-12-31", "to": "9999-12-31"}, 400, "validation_error"),
        ({"from": "2026-11-02", "to": "2026-11-03", "group_by": "workflow,country"}, 400, "validation_error"),
        ({"from": "2026-11-02", "to": "2026-11-03", "interval": "week"}, 400, "validation_error"),
        ({"from": "2026-11-02", "to": "2026-11-03", "limit": "5"}, 400, "unknown_query_parameter"),
        ({"from": "2026-11-05", "to": "2026-11-03"}, 422, "invalid_range"),
        ({"from": "2025-01-01", "to": "2026-11-03"}, 422, "range_too_long"),
        ({"from": "2026-01-01", "to": "2026-11-03", "interval": "hour"}, 422, "range_too_long"),
        ({"from": "2026-11-02\x00", "to": "2026-11-03"}, 400, None),  # refused before the view
    ],
)
def test_api_refuses_bad_input_in_the_envelope(api, params, status, code):
    response = api.get(URL, params)
    if code is None:
        assert response.status_code == status and set(response.json()) == {"error"}
    else:
        assert_error(response, status, code)


def test_api_needs_a_secret_key(anon_api, tenant):
    assert anon_api.get(URL, {"from": "2026-11-02", "to": "2026-11-03"}).status_code == 401
    publishable = anon_api.get(
        URL, {"from": "2026-11-02", "to": "2026-11-03"}, HTTP_AUTHORIZATION=f"Bearer {tenant.publishable_key}"
    )
    assert publishable.status_code in (401, 403)


def test_api_is_in_the_openapi_schema(api):
    schema = api.get("/api/schema/", HTTP_ACCEPT="application/json").json()
    operation = schema["paths"]["/api/v1/analytics"]["get"]
    assert {p["name"] for p in operation["parameters"]} >= {"from", "to", "group_by", "interval"}
    assert "200" in operation["responses"]


# --- two folders at once (PostgreSQL) ---------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_two_folders_at_once_fold_everything_exactly_once(tenant):
    if connection.vendor != "postgresql":
        pytest.skip("concurrent writers need PostgreSQL here (SKIP LOCKED)")
    env = tenant.environment
    rng = random.Random(16)
    expected: Sums[tuple[str, str, str]] = Sums()
    tally = Tally()
    for _ in range(4000):
        at = DAY + timedelta(hours=rng.randrange(6))
        metric, channel, workflow = rng.choice(["sent", "opened"]), rng.choice(["email", "sms"]), rng.choice("abc")
        value = rng.choice([1, 1, 2, -1])
        expected[(at.isoformat(), metric, f"{channel}/{workflow}")] += value
        tally.add(environment_id=env.pk, at=at, metric=metric, channel=channel, workflow_key=workflow, value=value)
        if len(tally.sums) >= 40:  # many small deltas for the same keys, as real traffic writes them
            tally.write()
    tally.write()
    deltas = Counter.objects.count()
    folded: list[int] = []
    errors: list[BaseException] = []
    start = threading.Barrier(2)

    def folder() -> None:
        try:
            start.wait()
            folded.append(counters_fold(limit=50, batches=10_000))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=folder) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert not errors
    assert sum(folded) == deltas and not Counter.objects.exists()
    hourly = Rollup.objects.exclude(metric__startswith=DAY_PREFIX)
    got = {
        (row["bucket"].isoformat(), row["metric"], f"{row['channel']}/{row['workflow_key']}"): row["n"]
        for row in hourly.values("bucket", "metric", "channel", "workflow_key").annotate(n=Sum("value"))
        if row["n"]
    }
    assert got == {k: v for k, v in expected.items() if v}
    # The day rows the same folds wrote hold the same sums.
    days = Rollup.objects.filter(metric__startswith=DAY_PREFIX).values("metric").annotate(n=Sum("value"))
    assert {row["metric"][len(DAY_PREFIX) :]: row["n"] for row in days} == {
        row["metric"]: row["n"] for row in hourly.values("metric").annotate(n=Sum("value"))
    }
