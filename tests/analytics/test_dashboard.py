"""The console's home (issue #17): the system at a glance above the admin's app list.

Numbers on crafted counts (folded and not), one environment only, the periods' edges, circuit
states, the oldest due run; a fixed number of queries whatever the data and period; the page for
staff only, its charts' text alternatives, and escaping."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from apps.analytics import counters
from apps.analytics.dashboard import Dashboard, dashboard, duration_text, period_bounds
from apps.analytics.models import Counter, Rollup
from apps.analytics.services import counters_fold
from apps.workflows.models import Run
from tests.factories import IntegrationFactory
from tests.workflows.conftest import make_workflow, published_template

pytestmark = pytest.mark.django_db(databases="__all__")

NOW = datetime(2026, 11, 30, 14, 20, tzinfo=UTC)
HOSTILE = '<script>alert("x")</script>'


def _count(environment_id: int, at: datetime, metric: str, value: int, channel: str = "email") -> None:
    tally = counters.Tally()
    tally.add(environment_id=environment_id, at=at, metric=metric, workflow_key="welcome", channel=channel, value=value)
    tally.write()


def _traffic(environment_id: int, now: datetime) -> None:
    """Counts in and around the three periods; the older ones folded into rollups (hour and day
    rows), the last two hours' left as deltas."""
    # triggered (no channel): 3 + 2 in the last 24 h, 5 three days ago, 7 twenty days ago, 11 too old
    for hours_ago, value in ((0, 3), (2, 2), (72, 5), (480, 7), (960, 11)):
        _count(environment_id, now - timedelta(hours=hours_ago), counters.TRIGGERED, value, channel="")
    # 3 days ago: email and SMS; folded below
    three_days = now - timedelta(days=3)
    for metric, value in (("sent", 10), ("delivered", 8), ("opened", 4), ("clicked", 2), ("bounced", 1), ("failed", 2)):
        _count(environment_id, three_days, metric, value)
    for metric, value in (("sent", 5), ("failed", 5), ("skipped:no_address", 2)):
        _count(environment_id, three_days, metric, value, channel="sms")
    _count(environment_id, three_days, "skipped:preference", 3)
    _count(environment_id, three_days, "skipped:digest_merged", 4)
    counters_fold(limit=1000, batches=100)
    # the last hour: deltas not folded yet
    _count(environment_id, now - timedelta(minutes=10), "sent", 6)
    _count(environment_id, now - timedelta(minutes=10), "delivered", 6)
    _count(environment_id, now - timedelta(minutes=10), "skipped:throttled", 1)


def _by_channel(board: Dashboard) -> dict[str, dict[str, int]]:
    return {c.channel: c.counts for c in board.messages.channels}


def _skipped(board: Dashboard) -> dict[str, int]:
    return {bar.label: bar.value for bar in board.skipped.bars}


def test_numbers_per_period_from_rollups_and_deltas_of_one_environment(tenant: Any, other_tenant: Any) -> None:
    environment = tenant.environment
    _traffic(other_tenant.environment.pk, NOW)  # never counted here
    _traffic(environment.pk, NOW)
    assert Rollup.objects.filter(environment=environment).exists()
    assert Counter.objects.filter(environment=environment).exists()

    day = dashboard(environment=environment, period="24h", now=NOW)
    week = dashboard(environment=environment, period="7d", now=NOW)
    month = dashboard(environment=environment, period="30d", now=NOW)

    assert day.triggered.total == 5
    assert week.triggered.total == 10
    assert month.triggered.total == 17
    assert _by_channel(day) == {
        "email": {"sent": 6, "delivered": 6, "opened": 0, "clicked": 0, "bounced": 0, "failed": 0}
    }
    assert _by_channel(week) == {
        "email": {"sent": 16, "delivered": 14, "opened": 4, "clicked": 2, "bounced": 1, "failed": 2},
        "sms": {"sent": 5, "delivered": 0, "opened": 0, "clicked": 0, "bounced": 0, "failed": 5},
    }
    assert _by_channel(month) == _by_channel(week)
    assert week.messages.total_sent == 21
    # the main reasons always shown, in their order; then the others by count
    assert _skipped(day) == {"preference": 0, "no_address": 0, "frequency_cap": 0, "throttled": 1}
    assert _skipped(week) == {"preference": 3, "no_address": 2, "frequency_cap": 0, "throttled": 1, "digest_merged": 4}
    assert week.skipped.total == 10
    health = {h.channel: (h.sent, h.failed, h.error_rate) for h in week.health.channels}
    assert health == {"email": (16, 2, round(2 / 18, 4)), "sms": (5, 5, 0.5)}


def test_time_chart_buckets(tenant: Any) -> None:
    _traffic(tenant.environment.pk, NOW)

    day = dashboard(environment=tenant.environment, period="24h", now=NOW)
    month = dashboard(environment=tenant.environment, period="30d", now=NOW)

    assert len(day.triggered.columns) == 24
    assert day.triggered.columns[-1].label == "2026-11-30 14:00 UTC"
    assert [c.value for c in day.triggered.columns][-3:] == [2, 0, 3]
    assert day.triggered.peak == 3
    tallest = max(day.triggered.columns, key=lambda c: c.height)
    assert tallest.value == 3 and tallest.height == day.triggered.plot_height
    assert len(month.triggered.columns) == 30
    assert month.triggered.first_label == "2026-11-01"
    assert {c.label: c.value for c in month.triggered.columns if c.value} == {
        "2026-11-10": 7,
        "2026-11-27": 5,
        "2026-11-30": 5,
    }


def test_period_bounds() -> None:
    assert period_bounds("24h", NOW) == (datetime(2026, 11, 29, 15, tzinfo=UTC), NOW)
    assert period_bounds("7d", NOW) == (datetime(2026, 11, 24, tzinfo=UTC), NOW)
    assert period_bounds("30d", NOW) == (datetime(2026, 11, 1, tzinfo=UTC), NOW)
    with pytest.raises(ValueError):
        dashboard(environment=1, period="1y", now=NOW)


def test_circuit_state_per_integration_of_the_environment(tenant: Any, other_tenant: Any) -> None:
    environment = tenant.environment
    IntegrationFactory(environment=environment, provider="smtp", name="Main SMTP")
    IntegrationFactory(
        environment=environment,
        provider="ses",
        circuit_open_until=NOW + timedelta(seconds=30),
        circuit_failures=5,
    )
    IntegrationFactory(
        environment=environment,
        channel="sms",
        provider="twilio",
        circuit_open_until=NOW - timedelta(seconds=1),
        active=False,
    )
    IntegrationFactory(environment=other_tenant.environment, circuit_open_until=NOW + timedelta(seconds=30))

    board = dashboard(environment=environment, period="24h", now=NOW)

    states = [(i.name, i.channel, i.state, i.failures, i.active) for i in board.health.integrations]
    assert states == [
        ("Main SMTP", "email", "closed", 0, True),
        ("ses", "email", "open", 5, True),
        ("twilio", "sms", "half-open", 0, False),
    ]
    assert board.health.circuits_not_closed == 2


@pytest.fixture
def delayed_workflow(tenant: Any) -> Any:
    published_template(tenant.environment, "later-in-app", "in_app", title_en="hi", body_en="hi")
    return make_workflow(
        tenant.environment,
        "later",
        [{"id": "wait", "type": "delay", "for": "10m"}, {"id": "inbox", "type": "in_app", "template": "later-in-app"}],
    )


def _trigger(tenant: Any, capture: Any, count: int) -> None:
    for number in range(count):
        with capture(execute=True):
            response = tenant.client.post(
                "/api/v1/events/trigger", {"workflow": "later", "to": [f"u{number}"]}, format="json"
            )
        assert response.status_code == 202, response.content


def test_runs_waiting_and_the_oldest_due_run(
    tenant: Any, delayed_workflow: Any, django_capture_on_commit_callbacks: Any, empty_task_queue: None
) -> None:
    now = timezone.now()
    assert dashboard(environment=tenant.environment, period="24h", now=now).backlog.due_oldest_text == "none is late"
    _trigger(tenant, django_capture_on_commit_callbacks, 3)
    runs = list(Run.objects.order_by("pk"))
    Run.objects.filter(pk=runs[0].pk).update(resume_at=now - timedelta(seconds=95))
    Run.objects.filter(pk=runs[1].pk).update(resume_at=now - timedelta(seconds=30))

    backlog = dashboard(environment=tenant.environment, period="24h", now=now).backlog

    assert backlog.runs_waiting == 3
    assert backlog.runs_pending == 0
    assert backlog.due_oldest_seconds == 95
    assert backlog.due_oldest_text == "1 min 35 s"
    assert backlog.queue_depth == 0


def test_duration_text() -> None:
    assert duration_text(0.4) == "0 s"
    assert duration_text(59) == "59 s"
    assert duration_text(3600 * 26 + 61) == "1 d 2 h"


@pytest.mark.parametrize("period", ["24h", "7d", "30d"])
def test_a_fixed_number_of_queries_whatever_the_data(
    period: str,
    tenant: Any,
    delayed_workflow: Any,
    settings: Any,
    django_capture_on_commit_callbacks: Any,
) -> None:
    now = timezone.now()

    def queries() -> int:
        with CaptureQueriesContext(connection) as captured:
            dashboard(environment=tenant.environment, period=period, now=now)
        return len(captured.captured_queries)

    empty = queries()
    _traffic(tenant.environment.pk, now)
    for days_ago in range(40):  # a month of days and hours, folded
        for channel in ("email", "sms", "push", "in_app"):
            _count(tenant.environment.pk, now - timedelta(days=days_ago, hours=days_ago % 24), "sent", 3, channel)
    counters_fold(limit=1000, batches=100)
    _count(tenant.environment.pk, now, "failed", 1, "push")
    for provider in ("smtp", "ses", "postmark"):
        IntegrationFactory(environment=tenant.environment, provider=provider, circuit_open_until=now)
    _trigger(tenant, django_capture_on_commit_callbacks, 5)

    # analytics (one statement), integrations, runs waiting + oldest due, runs pending; + the ORM broker's count
    expected = 4 if settings.Q_CLUSTER.get("redis") else 5
    assert empty == queries() == expected


# --- the page ---------------------------------------------------------------------------------


@pytest.fixture
def staff(db: Any) -> Client:
    user = get_user_model().objects.create_superuser("admin", "admin@example.com", "pw")
    client = Client()
    client.force_login(user)
    return client


def test_the_page_for_staff_charts_above_the_app_list(staff: Client, tenant: Any) -> None:
    _traffic(tenant.environment.pk, timezone.now())

    response = staff.get("/admin/")

    assert response.status_code == 200
    html = response.content.decode()
    assert html.count('role="img"') == 4  # triggered, messages, skipped, health
    assert html.count("<title id=") == html.count("<desc id=") == 4
    assert 'aria-labelledby="cl-triggered-title cl-triggered-desc"' in html
    assert "Notifications triggered per hour, last 24 h" in html
    # the admin's app list is still there, below the charts
    assert html.index("cl-home") < html.index('class="app-')
    assert '<a href="?period=24h" aria-current="page">24 h</a>' in html
    # numbers visible as text, not only as shapes
    assert re.search(r'<span class="cl-big">5</span> in the last 24 h', html)
    assert "Queue depth (tasks)" in html
    assert response.context["dashboard"].period == "24h"


def test_period_and_environment_switch(staff: Client, tenant: Any, other_tenant: Any) -> None:
    _traffic(other_tenant.environment.pk, timezone.now())

    first = staff.get("/admin/")
    chosen = staff.get("/admin/", {"environment": other_tenant.environment.pk, "period": "7d"})

    assert first.context["dashboard_environment"] == tenant.environment  # the first by default
    assert first.context["dashboard"].triggered.total == 0
    assert 'id="cl-environment"' in first.content.decode()  # several: a selector
    assert chosen.context["dashboard_environment"] == other_tenant.environment
    assert chosen.context["dashboard"].triggered.total == 10
    html = chosen.content.decode()
    assert f'<a href="?environment={other_tenant.environment.pk}&amp;period=30d">30 d</a>' in html
    assert 'aria-current="page">7 d</a>' in html
    assert '<input type="hidden" name="period" value="7d">' in html


def test_bad_parameters_are_explained_not_a_500(staff: Client, tenant: Any) -> None:
    response = staff.get("/admin/", {"period": "1y'<b>", "environment": "nope"})

    assert response.status_code == 200
    html = response.content.decode()
    assert "Choose a period of 24 h, 7 d, 30 d; showing 24 h." in html
    assert "That environment does not exist; showing the first one." in html
    assert response.context["dashboard"].period == "24h"


def test_no_environment_yet(staff: Client) -> None:
    response = staff.get("/admin/")

    assert response.status_code == 200
    assert "No environment yet" in response.content.decode()
    assert 'class="app-' in response.content.decode() or "app-list" in response.content.decode()


def test_anonymous_and_non_staff_users_are_sent_to_the_login(client: Client, tenant: Any) -> None:
    response = client.get("/admin/")
    assert response.status_code == 302
    assert response["Location"].startswith("/admin/login/")

    user = get_user_model().objects.create_user("plain", "plain@example.com", "pw")
    client.force_login(user)
    response = client.get("/admin/")
    assert response.status_code == 302
    assert "cl-home" not in response.content.decode()


def test_names_and_reasons_are_escaped(staff: Client, tenant: Any) -> None:
    IntegrationFactory(environment=tenant.environment, name=HOSTILE, circuit_open_until=timezone.now())
    _count(tenant.environment.pk, timezone.now(), f"skipped:{HOSTILE}", 2)

    html = staff.get("/admin/").content.decode()

    assert HOSTILE not in html
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in html


def test_the_page_costs_the_same_queries_with_data(staff: Client, tenant: Any) -> None:
    def queries(period: str) -> int:
        with CaptureQueriesContext(connection) as captured:
            assert staff.get("/admin/", {"period": period}).status_code == 200
        return len(captured.captured_queries)

    empty = {period: queries(period) for period in ("24h", "7d", "30d")}
    _traffic(tenant.environment.pk, timezone.now())
    for provider in ("smtp", "ses"):
        IntegrationFactory(environment=tenant.environment, provider=provider)

    assert {period: queries(period) for period in ("24h", "7d", "30d")} == empty


def test_a_broker_that_does_not_answer_shows_unavailable_not_a_500(staff: Client, tenant: Any, settings: Any) -> None:
    settings.Q_CLUSTER = {**settings.Q_CLUSTER, "redis": "redis://127.0.0.1:8599/0"}  # nothing listens there
    settings.Q_CLUSTER.pop("orm", None)

    response = staff.get("/admin/")

    assert response.status_code == 200
    assert response.context["dashboard"].backlog.queue_depth is None
    assert '<dd class="cl-big">unavailable</dd>' in response.content.decode()


def test_the_charts_text_alternatives_carry_the_numbers(staff: Client, tenant: Any) -> None:
    _traffic(tenant.environment.pk, timezone.now())

    html = staff.get("/admin/", {"period": "7d"}).content.decode()

    assert (
        '<desc id="cl-messages-desc">email: sent 16, delivered 14, opened 4, clicked 2, bounced 1, failed 2. '
        "sms: sent 5, delivered 0, opened 0, clicked 0, bounced 0, failed 5. </desc>"
    ) in html
    assert "preference: 3. no_address: 2. frequency_cap: 0. throttled: 1. digest_merged: 4." in html
    assert "email: 2 failed of 18. sms: 5 failed of 10." in html
    assert "<title>sms: 50.0% (5 failed)</title>" in html
