"""The savings report: every baseline message attributed to one lever by the engine's own reason."""

from __future__ import annotations

from collections import Counter as Tally
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
import time_machine
from django.db import connection
from django.test.utils import CaptureQueriesContext

from apps.analytics.models import Counter
from apps.analytics.pricing import channel_prices
from apps.analytics.savings import savings_report, savings_runs
from apps.delivery.models import Message, Suppression
from apps.events.models import Event
from apps.events.services import TriggerRequest, event_trigger
from apps.inbox.models import InboxMessage
from apps.preferences.models import ALL_CHANNELS, Preference, QuietHours
from apps.workflows import accounting, engine
from apps.workflows.definitions import iter_steps
from apps.workflows.models import FrequencyCap, Run, StepRun
from tests.factories import CategoryFactory, IntegrationFactory, SubscriberFactory, TemplateFactory
from tests.workflows.conftest import make_workflow, published_template

pytestmark = pytest.mark.django_db

START = datetime(2026, 3, 10, 10, 0, tzinfo=UTC)  # a Tuesday, 10:00 UTC
PERIOD = {"start": START - timedelta(days=1), "end": START + timedelta(days=3)}


@pytest.fixture
def clock() -> Iterator[Any]:
    with time_machine.travel(START, tick=False) as traveller:
        yield traveller


@pytest.fixture
def fire(tenant: Any, django_capture_on_commit_callbacks: Any) -> Any:
    def _fire(workflow: str, to: list[Any], payload: dict[str, Any] | None = None, **kwargs: Any) -> Event:
        request = TriggerRequest(workflow=workflow, to=to, payload=payload or {}, **kwargs)
        with django_capture_on_commit_callbacks(execute=True):
            return event_trigger(environment=tenant.environment, request=request)

    return _fire


@pytest.fixture
def move(clock: Any, django_capture_on_commit_callbacks: Any) -> Any:
    def _move(when: datetime) -> None:
        clock.move_to(when)
        for _ in range(3):
            with django_capture_on_commit_callbacks(execute=True):
                engine.sweep()

    return _move


@pytest.fixture
def env(tenant: Any) -> Any:
    environment = tenant.environment
    published_template(environment, "note", "in_app", title_en="{{ payload.title | default('note') }}", body_en="")
    published_template(environment, "mail", "email", subject_en="mail", body_en="<p>{{ payload.title }}</p>")
    published_template(environment, "text", "sms", body_en="{{ payload.title | default('text') }}")
    return environment


def report(env: Any) -> dict[str, Any]:
    return savings_report(environment=env, **PERIOD)


def counted(data: dict[str, Any]) -> dict[str, int]:
    return {item["lever"]: item["counted"] for item in data["avoided"] if item["counted"]}


def net(data: dict[str, Any]) -> dict[str, int]:
    return {item["lever"]: item["messages"] for item in data["avoided"] if item["messages"]}


def others(data: dict[str, Any]) -> dict[str, int]:
    return {item["reason"]: item["messages"] for item in data["other"] if item["messages"]}


def assert_identity(data: dict[str, Any]) -> None:
    """baseline = actual + Σ avoided (net) + Σ other, in total and in every row."""
    avoided = sum(item["messages"] for item in data["avoided"])
    other = sum(item["messages"] for item in data["other"])
    assert data["baseline"]["messages"] == data["actual"]["messages"] + avoided + other
    for row in [*data["by_channel"], *data["by_workflow"]]:
        parts = (row["actual"]["messages"], row["avoided"]["messages"], row["other"]["messages"])
        assert row["baseline"]["messages"] == sum(parts), row


def drill(env: Any, lever: str) -> list[dict[str, Any]]:
    rows, before, pages = [], None, 0
    while True:
        page, before = savings_runs(environment=env, lever=lever, before=before, limit=2, **PERIOD)
        rows += page
        pages += 1
        if before is None:
            return rows
        assert pages < 100


def assert_drill_down_matches(env: Any, data: dict[str, Any]) -> None:
    for item in data["avoided"]:
        assert len(drill(env, item["lever"])) == item["counted"], item["lever"]
    for item in data["other"]:
        assert len(drill(env, f"other:{item['reason']}")) == item["messages"], item["reason"]


# --------------------------------------------------------------------------------------------
# One lever at a time
# --------------------------------------------------------------------------------------------


def test_preference_opt_out_and_unsubscribed_are_two_levers(env, fire, clock):
    CategoryFactory(environment=env, key="social")
    make_workflow(
        env,
        "liked",
        [{"id": "n", "type": "in_app", "template": "note"}, {"id": "e", "type": "email", "template": "mail"}],
        "social",
    )
    picky = SubscriberFactory(environment=env, subscriber_id="picky")
    Preference.objects.create(environment=env, subscriber=picky, channel="email", enabled=False)
    gone = SubscriberFactory(environment=env, subscriber_id="gone")
    Preference.objects.create(environment=env, subscriber=gone, channel=ALL_CHANNELS, enabled=False)
    SubscriberFactory(environment=env, subscriber_id="keen")
    fire("liked", ["picky", "gone", "keen"])

    data = report(env)
    assert data["baseline"]["messages"] == 6
    assert data["recipients"] == 3
    assert counted(data) == {"preference": 1, "unsubscribed": 2}, data
    assert data["actual"]["messages"] == 3, list(
        StepRun.objects.values_list("run__subscriber__subscriber_id", "reason")
    )
    assert_identity(data)
    rows = drill(env, "unsubscribed")
    assert {(r["subscriber_id"], r["channel"], r["reason"]) for r in rows} == {
        ("gone", "in_app", "unsubscribed"),
        ("gone", "email", "unsubscribed"),
    }
    assert_drill_down_matches(env, data)


def test_no_address_and_suppressed_address(env, fire, clock):
    make_workflow(
        env, "all", [{"id": "e", "type": "email", "template": "mail"}, {"id": "s", "type": "sms", "template": "text"}]
    )
    SubscriberFactory(environment=env, subscriber_id="u1", email="u1@example.com", phone="")
    SubscriberFactory(environment=env, subscriber_id="u2", email="bounced@example.com", phone="+15550002")
    Suppression.objects.create(environment=env, channel="email", address="bounced@example.com", reason="bounced")
    fire("all", ["u1", "u2"])

    data = report(env)
    assert counted(data) == {"no_address": 2}
    assert data["actual"]["messages"] == 2
    assert {r["reason"] for r in drill(env, "no_address")} == {"no_address"}
    assert_identity(data)


def test_a_digest_counts_one_send_and_merges_the_others(env, fire, move, clock):
    make_workflow(
        env,
        "comments",
        [
            {"id": "batch", "type": "digest", "key": "payload.post", "window": "1h"},
            {"id": "mail", "type": "email", "template": "mail"},
        ],
    )
    SubscriberFactory(environment=env, subscriber_id="u1")
    for index in range(3):
        fire("comments", ["u1"], {"post": "p1", "title": f"c{index}"})
    assert report(env)["baseline"]["messages"] == 0  # nothing finished yet: nothing counted

    move(START + timedelta(hours=1, seconds=1))
    data = report(env)
    assert (data["baseline"]["messages"], data["actual"]["messages"]) == (3, 1)
    assert counted(data) == {"digest": 2}
    assert {r["reason"] for r in drill(env, "digest")} == {"digest_merged"}
    assert_identity(data)
    assert_drill_down_matches(env, data)


def test_a_frequency_cap_holds_and_the_category_digest_replaces_one(env, fire, move, clock):
    CategoryFactory(environment=env, key="social", digest_schedule="daily 18:00")
    make_workflow(env, "liked", [{"id": "e", "type": "email", "template": "mail"}], "social")
    FrequencyCap.objects.create(environment=env, channel="email", limit=1, window="1d")
    SubscriberFactory(environment=env, subscriber_id="u1", timezone="UTC")
    for index in range(3):
        fire("liked", ["u1"], {"title": f"like {index}"})

    held = report(env)
    assert counted(held) == {"frequency_cap": 2} and net(held) == {"frequency_cap": 2}
    move(datetime(2026, 3, 10, 18, 0, 1, tzinfo=UTC))
    data = report(env)
    assert data["actual"]["messages"] == 2  # the first like and the digest
    assert counted(data) == {"frequency_cap": 2} and net(data) == {"frequency_cap": 1}
    assert next(i for i in data["avoided"] if i["lever"] == "frequency_cap")["replaced_by_digests"] == 1
    assert [row["workflow"] for row in data["by_workflow"]] == [None, "liked"]
    assert_identity(data)
    assert_drill_down_matches(env, data)


def test_a_daily_digest_choice_is_the_digest_lever(env, fire, move, clock):
    from apps.preferences.models import CategoryFrequency

    social = CategoryFactory(environment=env, key="social", digest_schedule="daily 18:00")
    make_workflow(env, "liked", [{"id": "e", "type": "email", "template": "mail"}], "social")
    subscriber = SubscriberFactory(environment=env, subscriber_id="u1", timezone="UTC")
    CategoryFrequency.objects.create(environment=env, subscriber=subscriber, category=social, frequency="daily")
    fire("liked", ["u1"])
    fire("liked", ["u1"])
    assert counted(report(env)) == {"digest": 2}
    assert {r["reason"] for r in drill(env, "digest")} == {"frequency_preference"}
    move(datetime(2026, 3, 10, 18, 0, 1, tzinfo=UTC))
    data = report(env)
    assert net(data) == {"digest": 1} and data["actual"]["messages"] == 1
    assert_identity(data)


def test_a_throttle_ends_the_run_and_its_messages_are_throttled(env, fire, clock):
    make_workflow(
        env,
        "ping",
        [
            {"id": "cap", "type": "throttle", "limit": 1, "window": "1h"},
            {"id": "n", "type": "in_app", "template": "note"},
            {"id": "s", "type": "sms", "template": "text"},
        ],
    )
    SubscriberFactory(environment=env, subscriber_id="u1", phone="+15550001")
    fire("ping", ["u1"])
    fire("ping", ["u1"])
    data = report(env)
    assert counted(data) == {"throttle": 2}
    assert data["actual"]["messages"] == 2
    assert {(r["step_id"], r["reason"]) for r in drill(env, "throttle")} == {("n", "throttled"), ("s", "throttled")}
    assert_identity(data)


@pytest.fixture
def escalation(env: Any) -> Any:
    return make_workflow(
        env,
        "incident",
        [
            {
                "id": "reach",
                "type": "escalate",
                "stop_on": "read",
                "channels": [
                    {"channel": "in_app", "template": "note"},
                    {"channel": "email", "template": "mail", "after": "1h"},
                    {"channel": "sms", "template": "text", "after": "4h"},
                ],
            },
        ],
    )


def test_an_escalation_stopped_by_engagement_avoids_the_paid_channels(escalation, env, fire, move, clock):
    SubscriberFactory(environment=env, subscriber_id="u1", phone="+15550001")
    SubscriberFactory(environment=env, subscriber_id="u2", phone="+15550002")
    fire("incident", ["u1", "u2"], {"title": "db down"})
    read = Run.objects.get(subscriber__subscriber_id="u1")
    InboxMessage.objects.filter(message__run=read).update(seen_at=START, read_at=START + timedelta(minutes=30))
    move(START + timedelta(hours=1))
    move(START + timedelta(hours=4))
    data = report(env)
    assert data["baseline"]["messages"] == 6
    assert counted(data) == {"escalation": 2}
    assert data["actual"]["messages"] == 4
    by_channel = {row["channel"]: row for row in data["by_channel"]}
    assert by_channel["sms"]["avoided"]["messages"] == 1 and by_channel["email"]["avoided"]["messages"] == 1
    assert {(r["subscriber_id"], r["channel"]) for r in drill(env, "escalation")} == {("u1", "email"), ("u1", "sms")}
    assert_identity(data)


def test_escalation_stages_opted_out_or_without_address(escalation, env, fire, move, clock):
    subscriber = SubscriberFactory(environment=env, subscriber_id="u1", phone="")
    Preference.objects.create(environment=env, subscriber=subscriber, channel="email", enabled=False)
    gone = SubscriberFactory(environment=env, subscriber_id="gone", phone="+15550009")
    Preference.objects.create(environment=env, subscriber=gone, channel=ALL_CHANNELS, enabled=False)
    fire("incident", ["u1", "gone"])
    move(START + timedelta(hours=4))
    data = report(env)
    assert counted(data) == {"preference": 1, "no_address": 1, "unsubscribed": 3}
    assert_identity(data)
    assert_drill_down_matches(env, data)


def test_conditions_and_branches_not_taken(env, fire, clock):
    make_workflow(
        env,
        "routed",
        [
            {"id": "maybe", "type": "email", "template": "mail", "if": "payload.urgent"},
            {
                "id": "route",
                "type": "branch",
                "branches": [
                    {"if": "payload.plan == 'pro'", "steps": [{"id": "pro-sms", "type": "sms", "template": "text"}]},
                    {"if": "payload.never", "steps": [{"id": "never-mail", "type": "email", "template": "mail"}]},
                ],
                "else": [{"id": "free-note", "type": "in_app", "template": "note"}],
            },
        ],
    )
    SubscriberFactory(environment=env, subscriber_id="u1", phone="+15550001")
    fire("routed", ["u1"], {"plan": "pro"})
    data = report(env)
    assert data["baseline"]["messages"] == 4
    assert data["actual"]["messages"] == 1  # pro-sms
    assert counted(data) == {"condition": 3}
    assert {(r["step_id"], r["reason"]) for r in drill(env, "condition")} == {
        ("maybe", "condition_false"),
        ("never-mail", "branch_not_taken"),
        ("free-note", "branch_not_taken"),
    }
    assert_identity(data)


def test_an_exit_step_and_a_branch_that_ends(env, fire, clock):
    make_workflow(
        env,
        "done",
        [
            {"id": "bye", "type": "exit", "if": "payload.done"},
            {
                "id": "route",
                "type": "branch",
                "branches": [
                    {"if": "payload.stop", "end": True, "steps": [{"id": "n", "type": "in_app", "template": "note"}]}
                ],
            },
            {"id": "e", "type": "email", "template": "mail"},
        ],
    )
    SubscriberFactory(environment=env, subscriber_id="u1")
    fire("done", ["u1"], {"done": True})
    fire("done", ["u1"], {"stop": True})
    data = report(env)
    assert counted(data) == {"exit": 3}
    assert {r["reason"] for r in drill(env, "exit")} == {"exit", "branch_ended"}
    assert data["actual"]["messages"] == 1
    assert_identity(data)


def test_cancelled_runs_are_other_not_savings(env, api, fire, clock):
    make_workflow(
        env,
        "later",
        [{"id": "wait", "type": "delay", "for": "1h"}, {"id": "e", "type": "email", "template": "mail"}],
    )
    SubscriberFactory(environment=env, subscriber_id="u1")
    fire("later", ["u1"], transaction_id="t1")
    assert api.delete("/api/v1/events/t1").status_code == 200
    data = report(env)
    assert others(data) == {"cancelled": 1} and counted(data) == {}
    assert data["recipients"] == 1
    assert drill(env, "other:cancelled")[0]["transaction_id"] == "t1"
    assert_identity(data)


def test_quiet_hours_defer_and_are_not_a_saving(env, fire, move, clock):
    make_workflow(env, "news", [{"id": "e", "type": "email", "template": "mail"}])
    subscriber = SubscriberFactory(environment=env, subscriber_id="u1", timezone="UTC")
    QuietHours.objects.create(environment=env, subscriber=subscriber, start="09:00", end="12:00")
    fire("news", ["u1"])
    assert report(env)["baseline"]["messages"] == 0  # waiting: not finished, not counted
    move(datetime(2026, 3, 10, 12, 0, 1, tzinfo=UTC))
    data = report(env)
    assert (data["baseline"]["messages"], data["actual"]["messages"]) == (1, 1)
    assert counted(data) == {} and others(data) == {}


# --------------------------------------------------------------------------------------------
# Money
# --------------------------------------------------------------------------------------------


def test_costs_use_integration_prices_and_sms_segments(env, fire, clock, settings):
    settings.CLARION = {**settings.CLARION, "MESSAGE_PRICES": {"email": "0.001", "sms": "0.01"}}
    make_workflow(
        env, "all", [{"id": "e", "type": "email", "template": "mail"}, {"id": "s", "type": "sms", "template": "text"}]
    )
    SubscriberFactory(environment=env, subscriber_id="u1", phone="+15550001")
    SubscriberFactory(environment=env, subscriber_id="u2", phone="")
    fire("all", ["u1", "u2"], {"title": "x" * 161})  # two GSM-7 segments
    # Prices are read when the report is: the first active integration by priority, else the default.
    IntegrationFactory(environment=env, channel="sms", provider="http", priority=1, price=Decimal("0.05"))
    IntegrationFactory(environment=env, channel="sms", provider="http", priority=0, price=None, active=False)
    IntegrationFactory(environment=env, channel="sms", provider="http", priority=2, price=Decimal("0.9"))
    assert channel_prices(environment=env)["sms"] == Decimal("0.05")
    assert channel_prices(environment=env)["email"] == Decimal("0.001")
    data = report(env)
    assert data["currency"] == "USD"
    # actual: 2 emails (0.002) + 1 SMS of 2 segments (0.10); avoided: u2's SMS at the average, 2 segments
    assert data["actual"]["cost"] == "0.102000"
    assert data["avoided"][[i["lever"] for i in data["avoided"]].index("no_address")]["cost"] == "0.100000"
    assert data["baseline"]["cost"] == "0.202000"
    by_channel = {row["channel"]: row for row in data["by_channel"]}
    assert by_channel["sms"]["price"] == "0.050000"


@pytest.mark.parametrize(
    ("body", "segments"),
    [
        ("", 1),
        ("a" * 160, 1),
        ("a" * 161, 2),
        ("a" * 306, 2),
        ("a" * 307, 3),
        ("€" * 80, 1),  # extension characters take two units: 160
        ("€" * 81, 2),
        ("ł" * 70, 1),  # not GSM-7: UCS-2
        ("ł" * 71, 2),
        ("ł" * 134, 2),
        ("ł" * 135, 3),
        ("😀" * 35, 1),  # outside the BMP: two UCS-2 units each
        ("😀" * 36, 2),
    ],
)
def test_sms_segments(body, segments):
    assert accounting.sms_segments(body) == segments


# --------------------------------------------------------------------------------------------
# The identity, the recount, and what it costs
# --------------------------------------------------------------------------------------------


def _mixed_workload(env: Any, fire: Any, move: Any, api: Any, clock: Any) -> None:
    CategoryFactory(environment=env, key="social", digest_schedule="daily 18:00")
    make_workflow(
        env,
        "liked",
        [{"id": "n", "type": "in_app", "template": "note"}, {"id": "e", "type": "email", "template": "mail"}],
        "social",
    )
    make_workflow(
        env,
        "comments",
        [
            {"id": "batch", "type": "digest", "key": "payload.post", "window": "1h"},
            {"id": "mail", "type": "email", "template": "mail", "if": "not payload.quiet"},
        ],
    )
    make_workflow(
        env,
        "later",
        [
            {"id": "cap", "type": "throttle", "limit": 2, "window": "1d"},
            {"id": "wait", "type": "delay", "for": "2h"},
            {"id": "s", "type": "sms", "template": "text"},
        ],
    )
    FrequencyCap.objects.create(environment=env, channel="email", limit=3, window="1d")
    for index in range(6):
        SubscriberFactory(
            environment=env, subscriber_id=f"u{index}", timezone="UTC", phone="" if index % 3 == 0 else "+1555000"
        )
    Preference.objects.create(
        environment=env,
        subscriber=SubscriberFactory(environment=env, subscriber_id="off"),
        channel="email",
        enabled=False,
    )
    everyone = [f"u{index}" for index in range(6)] + ["off"]
    for round_ in range(3):
        fire("liked", everyone, {"title": f"like {round_}"})
        fire("comments", everyone[:4], {"post": "p1", "quiet": round_ == 2})
        fire("later", everyone[:3], transaction_id=f"later-{round_}")
    fire("comments", ["u5"], {"post": "p2", "quiet": True})  # leads its own digest: the mail's `if` is false
    api.delete("/api/v1/events/later-2")  # throttled already (limit 2): nothing left to cancel
    fire("later", ["u4"], transaction_id="later-cancel")
    api.delete("/api/v1/events/later-cancel")
    move(START + timedelta(hours=2, seconds=1))
    move(datetime(2026, 3, 10, 18, 0, 1, tzinfo=UTC))


def _recount(env: Any) -> dict[str, int]:
    """The report's message counts, recounted from the trace without ``accounting``: runs,
    their versions' steps, StepRun decisions and Message rows."""
    runs = list(Run.objects.filter(environment=env).select_related("workflow_version"))
    assert all(run.status in ("completed", "cancelled", "failed") for run in runs)
    count: Tally[str] = Tally()
    for run in runs:
        steps = run.workflow_version.steps
        top = [step["id"] for step in steps]

        def slots_of(step: dict[str, Any]) -> int:
            if step["type"] == "escalate":
                return len(step["channels"])
            return 1 if step["type"] in ("in_app", "email", "sms", "push", "chat", "webhook") else 0

        slots = sum(slots_of(step) for step in iter_steps(steps))
        count["baseline"] += slots
        sent = Message.objects.filter(run=run).count()
        count["actual"] += sent
        decided = sent
        for step_run in StepRun.objects.filter(run=run):
            lever = {
                "preference": "unsubscribed" if step_run.detail.get("rule") == "unsubscribed" else "preference",
                "no_address": "no_address",
                "frequency_cap": "frequency_cap",
                "frequency_preference": "digest",
            }.get(step_run.reason)
            if step_run.decision in ("skipped", "held") and lever:
                count[f"avoided:{lever}"] += 1
                decided += 1
            elif step_run.reason == "condition_false":
                step = next(s for s in iter_steps(steps) if s["id"] == step_run.step_id)
                count["avoided:condition"] += slots_of(step)
                decided += slots_of(step)
        # what the run never reached: after the step that ended it
        rest = slots - decided
        last = StepRun.objects.filter(run=run).last()
        if run.status == "cancelled":
            count["other:cancelled"] += rest
        elif last is not None and last.reason in ("throttled", "digest_merged", "exit"):
            lever = {"throttled": "throttle", "digest_merged": "digest", "exit": "exit"}[last.reason]
            count[f"avoided:{lever}"] += rest
        else:
            assert rest == 0, (run, top)
    digests = Message.objects.filter(environment=env, run__isnull=True, data__has_key="digest_bucket")
    count["actual"] += digests.count()
    count["replaced"] += digests.count()
    return +count


def test_the_report_equals_an_independent_recount_from_the_trace(env, api, fire, move, clock):
    _mixed_workload(env, fire, move, api, clock)
    data = report(env)
    recount = _recount(env)
    assert data["baseline"]["messages"] == recount["baseline"]
    assert data["actual"]["messages"] == recount["actual"]
    assert counted(data) == {k.split(":")[1]: v for k, v in recount.items() if k.startswith("avoided:")}
    assert sum(i["replaced_by_digests"] for i in data["avoided"]) == recount["replaced"]
    assert others(data) == {k.split(":")[1]: v for k, v in recount.items() if k.startswith("other:")}
    # every lever of the workload is there
    assert set(counted(data)) == {"preference", "digest", "frequency_cap", "throttle", "no_address", "condition"}
    assert data["recipients"] == Run.objects.filter(environment=env).count()
    assert_identity(data)
    assert_drill_down_matches(env, data)


def test_the_report_is_two_queries_whatever_the_volume(env, api, fire, move, clock, django_assert_num_queries):
    with django_assert_num_queries(2):  # the counts (rollups and deltas in one statement), the prices
        empty = report(env)
    assert empty["baseline"] == {"messages": 0, "cost": "0.000000"}
    _mixed_workload(env, fire, move, api, clock)
    with django_assert_num_queries(2):
        assert report(env)["baseline"]["messages"] > 0


def test_a_chunk_of_finishing_runs_writes_its_counts_in_one_insert(env, fire, clock, monkeypatch):
    from apps.analytics.counters import Tally

    make_workflow(
        env,
        "all",
        [{"id": "n", "type": "in_app", "template": "note"}, {"id": "e", "type": "email", "template": "mail"}],
    )
    for index in range(5):
        SubscriberFactory(environment=env, subscriber_id=f"u{index}", email="" if index % 2 else "a@example.com")
    writes: list[set[str]] = []
    original = Tally.write

    def spied(self: Tally) -> int:
        writes.append({key.metric for key in self.sums})
        return original(self)

    monkeypatch.setattr(Tally, "write", spied)
    with CaptureQueriesContext(connection) as queries:
        fire("all", [f"u{index}" for index in range(5)])
    engine_writes = [metrics for metrics in writes if "baseline" in metrics]
    assert len(engine_writes) == 1  # one Tally, one bulk INSERT, for the whole chunk
    assert {"recipients", "actual", "avoided:no_address", "skipped:no_address"} <= engine_writes[0]
    inserts = [q["sql"] for q in queries.captured_queries if q["sql"].startswith('INSERT INTO "analytics_counter"')]
    assert len(inserts) == len([metrics for metrics in writes if metrics])
    rows = Counter.objects.filter(
        environment=env, metric__in=["baseline", "actual", "avoided:no_address", "recipients"]
    )
    totals = {metric: sum(r.value for r in rows if r.metric == metric) for metric in {r.metric for r in rows}}
    assert totals == {"baseline": 10, "actual": 8, "avoided:no_address": 2, "recipients": 5}


def test_an_environment_sees_only_its_own_savings(env, fire, clock, other_tenant):
    make_workflow(env, "news", [{"id": "e", "type": "email", "template": "mail"}])
    SubscriberFactory(environment=env, subscriber_id="u1")
    fire("news", ["u1"])
    assert report(env)["baseline"]["messages"] == 1
    theirs = savings_report(environment=other_tenant.environment, **PERIOD)
    assert theirs["baseline"]["messages"] == 0 and theirs["by_workflow"] == []
    assert savings_runs(environment=other_tenant.environment, lever="condition", **PERIOD) == ([], None)


def test_a_counting_bug_never_stops_the_engine(env, fire, clock, monkeypatch, caplog):
    make_workflow(env, "news", [{"id": "e", "type": "email", "template": "mail"}])
    SubscriberFactory(environment=env, subscriber_id="u1")

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise KeyError("surprise")

    monkeypatch.setattr(accounting, "run_outcomes", broken)
    run = Run.objects.get(event=fire("news", ["u1"]))
    assert run.status == Run.Status.COMPLETED and Message.objects.filter(run=run).count() == 1
    assert "could not count finished run" in caplog.text
    assert report(env)["baseline"]["messages"] == 0 and report(env)["recipients"] == 1


def test_cancelled_in_quiet_hours_and_failed_steps_are_other(env, api, fire, clock):
    make_workflow(env, "news", [{"id": "e", "type": "email", "template": "mail"}])
    TemplateFactory(environment=env, key="draft", channel="email")  # never published
    make_workflow(env, "broken", [{"id": "e", "type": "email", "template": "draft"}])
    subscriber = SubscriberFactory(environment=env, subscriber_id="u1", timezone="UTC")
    QuietHours.objects.create(environment=env, subscriber=subscriber, start="09:00", end="12:00")
    fire("news", ["u1"], transaction_id="quiet")
    assert api.delete("/api/v1/events/quiet").status_code == 200
    SubscriberFactory(environment=env, subscriber_id="u2")
    fire("broken", ["u2"])
    data = report(env)
    assert others(data) == {"cancelled": 1, "template_not_published": 1}
    assert counted(data) == {} and data["actual"]["messages"] == 0
    assert [r["reason"] for r in drill(env, "other:template_not_published")] == ["template_not_published"]
    assert_identity(data)


def test_a_member_on_a_newer_version_is_counted_against_its_own_version(env, fire, move, clock):
    digest = {"id": "batch", "type": "digest", "key": "payload.post", "window": "1h"}
    make_workflow(env, "comments", [digest, {"id": "mail", "type": "email", "template": "mail"}])
    SubscriberFactory(environment=env, subscriber_id="u1", phone="+15550001")
    fire("comments", ["u1"], {"post": "p1"})  # leads the bucket, on version 1 (one message)
    make_workflow(
        env,
        "comments",
        [digest, {"id": "mail", "type": "email", "template": "mail"}, {"id": "s", "type": "sms", "template": "text"}],
    )
    fire("comments", ["u1"], {"post": "p1"})  # a member, on version 2 (two messages)
    move(START + timedelta(hours=1, seconds=1))
    data = report(env)
    assert (data["baseline"]["messages"], data["actual"]["messages"]) == (3, 1)
    assert counted(data) == {"digest": 2}
    assert_identity(data)
