"""Every step type and its documented edge cases, on a controllable clock (time-machine)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import time_machine
from django.core import mail

from apps.delivery.models import Message
from apps.events.models import Event
from apps.events.services import TriggerRequest, event_trigger
from apps.inbox.models import InboxMessage
from apps.preferences.models import Preference, QuietHours
from apps.workflows import engine
from apps.workflows.models import DigestBucket, FrequencyCap, Run, StepRun
from tests.factories import CategoryFactory, SubscriberFactory
from tests.workflows.conftest import make_workflow, published_template

pytestmark = pytest.mark.django_db

# A Tuesday, 10:00 UTC.
START = datetime(2026, 3, 10, 10, 0, tzinfo=UTC)


@pytest.fixture
def clock() -> Iterator[Any]:
    with time_machine.travel(START, tick=False) as traveller:
        yield traveller


@pytest.fixture
def fire(tenant: Any, django_capture_on_commit_callbacks: Any) -> Any:
    """Trigger a workflow for recipients, running the fan-out and the engine inline."""

    def _fire(workflow: str, to: list[Any], payload: dict[str, Any] | None = None, **kwargs: Any) -> Event:
        request = TriggerRequest(workflow=workflow, to=to, payload=payload or {}, **kwargs)
        with django_capture_on_commit_callbacks(execute=True):
            return event_trigger(environment=tenant.environment, request=request)

    return _fire


@pytest.fixture
def move(clock: Any, django_capture_on_commit_callbacks: Any) -> Any:
    """Move the clock to ``when`` and let the sweeper re-drive whatever is due."""

    def _move(when: datetime) -> None:
        clock.move_to(when)
        for _ in range(3):  # woken leaders may wake others (a filled digest, a handed-on lead)
            with django_capture_on_commit_callbacks(execute=True):
                engine.sweep()

    return _move


def decisions(run: Run) -> list[tuple[str, str, str]]:
    return [(s.step_id, s.decision, s.reason) for s in run.step_runs.order_by("id")]


@pytest.fixture
def env(tenant: Any) -> Any:
    environment = tenant.environment
    published_template(environment, "note", "in_app", title_en="{{ payload.title | default('note') }}", body_en="")
    published_template(
        environment,
        "mail",
        "email",
        subject_en="{{ payload.title | default('mail') }}",
        body_en="<p>{{ payload.title | default('') }}</p>",
    )
    published_template(environment, "text", "sms", body_en="{{ payload.title | default('text') }}")
    return environment


# --------------------------------------------------------------------------------------------
# delay
# --------------------------------------------------------------------------------------------


def test_delay_of_a_year_survives_in_the_database(env, fire, move, clock):
    make_workflow(
        env,
        "yearly",
        [{"id": "wait", "type": "delay", "for": "365d"}, {"id": "n", "type": "in_app", "template": "note"}],
    )
    SubscriberFactory(environment=env, subscriber_id="u1")
    event = fire("yearly", ["u1"])
    run = Run.objects.get(event=event)
    assert (run.status, run.resume_at) == (Run.Status.WAITING, START + timedelta(days=365))

    move(START + timedelta(days=364))
    assert InboxMessage.objects.count() == 0
    # Nothing lives in memory: a fresh process (the sweeper) finds the row and carries on.
    move(START + timedelta(days=365, seconds=1))
    run.refresh_from_db()
    assert run.status == Run.Status.COMPLETED
    assert InboxMessage.objects.count() == 1


def test_delay_until_a_payload_timestamp(env, fire, move, clock):
    make_workflow(
        env,
        "remind",
        [{"id": "wait", "type": "delay", "until": "payload.due_at"}, {"id": "n", "type": "in_app", "template": "note"}],
    )
    SubscriberFactory(environment=env, subscriber_id="u1")
    due = START + timedelta(hours=5)
    event = fire("remind", ["u1"], {"due_at": due.isoformat().replace("+00:00", "Z")})
    run = Run.objects.get(event=event)
    assert run.resume_at == due
    assert decisions(run) == [("wait", "waiting", "delay")]
    move(due)
    run.refresh_from_db()
    assert run.status == Run.Status.COMPLETED


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        ({}, "delay_timestamp_missing"),
        ({"due_at": "next tuesday"}, "delay_timestamp_invalid"),
        ({"due_at": "2020-01-01T00:00:00Z"}, "delay_timestamp_past"),
    ],
)
def test_delay_until_a_missing_invalid_or_past_timestamp_skips_with_a_reason(env, fire, clock, payload, reason):
    make_workflow(
        env,
        "remind",
        [{"id": "wait", "type": "delay", "until": "payload.due_at"}, {"id": "n", "type": "in_app", "template": "note"}],
    )
    SubscriberFactory(environment=env, subscriber_id="u1")
    run = Run.objects.get(event=fire("remind", ["u1"], payload))
    assert run.status == Run.Status.COMPLETED
    assert decisions(run) == [("wait", "skipped", reason), ("n", "executed", "sent")]
    assert InboxMessage.objects.count() == 1  # nothing silently lost


def test_delay_until_next_allowed_time_in_the_subscribers_timezone(env, fire, move, clock):
    make_workflow(
        env,
        "morning",
        [
            {"id": "wait", "type": "delay", "until_next": "weekdays 09:00"},
            {"id": "n", "type": "in_app", "template": "note"},
        ],
    )
    # 10:00 UTC on Tuesday is 19:00 in Tokyo: the next weekday 09:00 there is Wednesday 00:00 UTC.
    SubscriberFactory(environment=env, subscriber_id="tokyo", timezone="Asia/Tokyo")
    # In New York it is 06:00 (EDT since 8 March): 09:00 today is 13:00 UTC.
    SubscriberFactory(environment=env, subscriber_id="ny", timezone="America/New_York")
    event = fire("morning", ["tokyo", "ny"])
    resume = {r.subscriber.subscriber_id: r.resume_at for r in Run.objects.filter(event=event)}
    assert resume == {"tokyo": datetime(2026, 3, 11, 0, 0, tzinfo=UTC), "ny": datetime(2026, 3, 10, 13, 0, tzinfo=UTC)}


def test_delay_until_next_on_a_friday_evening_waits_for_monday(env, fire, clock):
    make_workflow(
        env,
        "morning",
        [
            {"id": "wait", "type": "delay", "until_next": "weekdays 09:00"},
            {"id": "n", "type": "in_app", "template": "note"},
        ],
    )
    SubscriberFactory(environment=env, subscriber_id="u1", timezone="Europe/Paris")
    clock.move_to(datetime(2026, 3, 13, 18, 0, tzinfo=UTC))  # Friday 19:00 in Paris
    run = Run.objects.get(event=fire("morning", ["u1"]))
    assert run.resume_at == datetime(2026, 3, 16, 8, 0, tzinfo=UTC)  # Monday 09:00 CET


def test_delay_until_next_window_does_not_wait_inside_the_window(env, fire, clock):
    make_workflow(
        env,
        "office",
        [
            {"id": "wait", "type": "delay", "until_next": "weekdays 09:00-17:00", "timezone": "Europe/Paris"},
            {"id": "n", "type": "in_app", "template": "note"},
        ],
    )
    SubscriberFactory(environment=env, subscriber_id="u1")  # no timezone of its own: the step's
    run = Run.objects.get(event=fire("office", ["u1"]))
    assert run.status == Run.Status.COMPLETED
    assert decisions(run)[0] == ("wait", "skipped", "within_allowed_time")


# --------------------------------------------------------------------------------------------
# branch and exit
# --------------------------------------------------------------------------------------------


@pytest.fixture
def routed(env: Any) -> Any:
    return make_workflow(
        env,
        "routed",
        [
            {
                "id": "route",
                "type": "branch",
                "branches": [
                    {
                        "if": "payload.amount > 1000",
                        "name": "big",
                        "steps": [{"id": "big", "type": "email", "template": "mail"}],
                    },
                    {
                        "if": "subscriber.data.vip",
                        "name": "vip",
                        "end": True,
                        "steps": [{"id": "vip", "type": "in_app", "template": "note"}],
                    },
                ],
                "else": [{"id": "small", "type": "in_app", "template": "note"}],
            },
            {"id": "after", "type": "in_app", "template": "note", "if": "steps.route.branch != 'else'"},
        ],
    )


def test_branch_takes_the_first_matching_branch_then_continues(routed, fire, clock):
    SubscriberFactory(environment=routed.environment, subscriber_id="u1")
    run = Run.objects.get(event=fire("routed", ["u1"], {"amount": 5000}))
    assert decisions(run) == [
        ("route", "executed", "branch_taken"),
        ("big", "executed", "queued"),
        ("after", "executed", "sent"),
    ]
    assert run.step_results["route"]["branch"] == 0


def test_a_branch_can_end_the_workflow(routed, fire, clock):
    SubscriberFactory(environment=routed.environment, subscriber_id="vip", data={"vip": True})
    run = Run.objects.get(event=fire("routed", ["vip"], {"amount": 5}))
    assert decisions(run) == [
        ("route", "executed", "branch_taken"),
        ("vip", "executed", "sent"),
        ("route", "executed", "branch_ended"),
    ]
    assert run.status == Run.Status.COMPLETED


def test_branch_else_and_earlier_results_in_later_conditions(routed, fire, clock):
    SubscriberFactory(environment=routed.environment, subscriber_id="u2")
    run = Run.objects.get(event=fire("routed", ["u2"], {"amount": 5}))
    assert decisions(run) == [
        ("route", "executed", "branch_else"),
        ("small", "executed", "sent"),
        ("after", "skipped", "condition_false"),
    ]


def email_then_sms_if(env: Any, key: str, condition: str) -> None:
    """email now; an hour later, SMS when ``condition`` (over the email step's result) holds."""
    make_workflow(
        env,
        key,
        [
            {"id": "email", "type": "email", "template": "mail"},
            {"id": "wait", "type": "delay", "for": "1h"},
            {
                "id": "check",
                "type": "branch",
                "branches": [{"if": condition, "steps": [{"id": "sms", "type": "sms", "template": "text"}]}],
            },
        ],
    )


def test_branch_on_an_earlier_email_status(env, fire, move, clock):
    email_then_sms_if(env, "fallback", "steps.email.status == 'skipped'")
    SubscriberFactory(environment=env, subscriber_id="u1", email="", phone="+15550001")
    event = fire("fallback", ["u1"])
    move(START + timedelta(hours=1, seconds=1))
    run = Run.objects.get(event=event)
    assert decisions(run)[0] == ("email", "skipped", "no_address")
    assert ("sms", "executed", "queued") in decisions(run)


def test_exit_step_ends_the_run(env, fire, clock):
    make_workflow(
        env,
        "stop",
        [
            {"id": "bye", "type": "exit", "reason": "not needed", "if": "payload.done"},
            {"id": "n", "type": "in_app", "template": "note"},
        ],
    )
    SubscriberFactory(environment=env, subscriber_id="u1")
    run = Run.objects.get(event=fire("stop", ["u1"], {"done": True}))
    assert decisions(run) == [("bye", "executed", "exit")]
    assert InboxMessage.objects.count() == 0


# --------------------------------------------------------------------------------------------
# throttle
# --------------------------------------------------------------------------------------------


def test_throttle_allows_n_runs_per_window_per_subscriber_and_key(env, fire, move, clock):
    make_workflow(
        env,
        "alerts",
        [
            {"id": "cap", "type": "throttle", "limit": 2, "window": "1h", "key": "payload.project"},
            {"id": "n", "type": "in_app", "template": "note"},
        ],
    )
    SubscriberFactory(environment=env, subscriber_id="u1")
    SubscriberFactory(environment=env, subscriber_id="u2")
    runs = [
        Run.objects.get(event=fire("alerts", ["u1"], {"project": "a"}), subscriber__subscriber_id="u1")
        for _ in range(3)
    ]
    other_key = Run.objects.get(event=fire("alerts", ["u1"], {"project": "b"}))
    other_subscriber = Run.objects.get(event=fire("alerts", ["u2"], {"project": "a"}))

    assert [decisions(r)[0][2] for r in runs] == ["under_limit", "under_limit", "throttled"]
    third = runs[2]
    third.refresh_from_db()
    assert third.status == Run.Status.COMPLETED
    assert third.step_runs.get(step_id="cap").detail == {"limit": 2, "window": "1h", "count": 2, "key": "a"}
    assert decisions(other_key)[0][2] == decisions(other_subscriber)[0][2] == "under_limit"
    assert InboxMessage.objects.filter(subscriber__subscriber_id="u1").count() == 3

    clock.move_to(START + timedelta(minutes=61))
    later = Run.objects.get(event=fire("alerts", ["u1"], {"project": "a"}))
    assert decisions(later)[0][2] == "under_limit"


def test_throttle_counts_a_rerun_of_the_same_run_once(env, fire, clock):
    from apps.workflows.limits import limit_acquire

    first = limit_acquire(
        environment_id=env.pk, key="k", limit=1, window=timedelta(hours=1), hit_key="run:1", now=START
    )
    again = limit_acquire(
        environment_id=env.pk, key="k", limit=1, window=timedelta(hours=1), hit_key="run:1", now=START
    )
    other = limit_acquire(
        environment_id=env.pk, key="k", limit=1, window=timedelta(hours=1), hit_key="run:2", now=START
    )
    assert (first.allowed, again.allowed, other.allowed) == (True, True, False)


# --------------------------------------------------------------------------------------------
# channel steps without an address
# --------------------------------------------------------------------------------------------


def test_channel_steps_skip_without_an_address(env, fire, clock):
    make_workflow(
        env, "all", [{"id": "e", "type": "email", "template": "mail"}, {"id": "s", "type": "sms", "template": "text"}]
    )
    SubscriberFactory(environment=env, subscriber_id="u1", email="", phone="")
    run = Run.objects.get(event=fire("all", ["u1"]))
    assert decisions(run) == [("e", "skipped", "no_address"), ("s", "skipped", "no_address")]
    assert run.status == Run.Status.COMPLETED
    assert run.step_results["e"] == {"status": "skipped", "reason": "no_address", "channel": "email"}


# --------------------------------------------------------------------------------------------
# digest
# --------------------------------------------------------------------------------------------


@pytest.fixture
def digest_flow(env: Any) -> Any:
    published_template(
        env,
        "digest-mail",
        "email",
        subject_en="{{ digest.count }} new comments on {{ payload.post }}",
        body_en="<ul>{% for e in digest.events %}<li>{{ e.payload.comment }}</li>{% endfor %}</ul>",
    )

    def _make(**options: Any) -> Any:
        step = {"id": "batch", "type": "digest", "key": "payload.post", **options}
        if "window" not in step and "schedule" not in step:
            step["window"] = "1h"
        return make_workflow(env, "comments", [step, {"id": "mail", "type": "email", "template": "digest-mail"}])

    return _make


def test_digest_collects_events_and_sends_one_message(digest_flow, env, fire, move, clock):
    digest_flow()
    SubscriberFactory(environment=env, subscriber_id="u1")
    events = []
    for index in range(3):
        clock.move_to(START + timedelta(minutes=index * 10))
        events.append(fire("comments", ["u1"], {"post": "p1", "comment": f"c{index}"}))
    fire("comments", ["u1"], {"post": "p2", "comment": "other post"})

    bucket = DigestBucket.objects.get(digest_key="p1")
    assert (bucket.status, bucket.entry_count, bucket.closes_at) == ("open", 3, START + timedelta(hours=1))
    runs = [Run.objects.get(event=e) for e in events]
    assert [r.status for r in runs] == [Run.Status.WAITING] * 3
    assert runs[0].resume_at == START + timedelta(hours=1) and runs[1].resume_at is None
    assert mail.outbox == []

    move(START + timedelta(hours=1, seconds=1))
    p1 = [m for m in mail.outbox if "p1" in m.subject]
    assert len(p1) == 1
    assert p1[0].subject == "3 new comments on p1"
    assert "<li>c0</li><li>c1</li><li>c2</li>" in p1[0].alternatives[0][0]
    for run in runs:
        run.refresh_from_db()
    assert [r.status for r in runs] == [Run.Status.COMPLETED] * 3
    assert decisions(runs[0])[-2:] == [("batch", "executed", "digest_sent"), ("mail", "executed", "queued")]
    assert decisions(runs[1])[-1] == ("batch", "executed", "digest_merged")
    assert runs[0].step_results["batch"]["count"] == 3

    # After the window closed, the same key starts a new digest.
    fire("comments", ["u1"], {"post": "p1", "comment": "late"})
    assert DigestBucket.objects.filter(digest_key="p1").count() == 2
    assert DigestBucket.objects.get(digest_key="p1", status="open").entry_count == 1


def test_digest_joins_and_sends_cost_queries_per_chunk_not_per_recipient(
    digest_flow, env, fire, move, clock, monkeypatch
):
    """Joining open digests and sending them cost the same statements for 5 recipients as for 40
    (locks, entries, counts and the members' trace are set-based), and every digest is whole."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from apps.workflows import digests

    digest_flow()
    ids = [f"q{n:02d}" for n in range(40)]
    for subscriber_id in ids:
        SubscriberFactory(environment=env, subscriber_id=subscriber_id)
    statements: dict[str, list[int]] = {"digests_join": [], "digest_members_complete": [], "digest_events": []}
    for name, calls in statements.items():
        original = getattr(digests, name)

        def counted(*args: Any, _original: Any = original, _calls: list[int] = calls, **kwargs: Any) -> Any:
            with CaptureQueriesContext(connection) as captured:
                result = _original(*args, **kwargs)
            _calls.append(len(captured.captured_queries))
            return result

        monkeypatch.setattr(digests, name, counted)

    fire("comments", ids, {"post": "p1", "comment": "first"})  # opens 40 buckets
    fire("comments", ids[:5], {"post": "p1", "comment": "few"})
    fire("comments", ids, {"post": "p1", "comment": "all"})
    assert statements["digests_join"][1] == statements["digests_join"][2] <= 4  # lock, entries, counts

    move(START + timedelta(hours=1, seconds=1))
    assert statements["digest_members_complete"] == [2]  # one INSERT … SELECT, one UPDATE, for 40 digests
    assert statements["digest_events"] == [2]  # the entries, then each distinct event once
    subjects = sorted(m.subject for m in mail.outbox)
    assert subjects == ["2 new comments on p1"] * 35 + ["3 new comments on p1"] * 5
    runs = Run.objects.filter(event__workflow__key="comments")
    assert set(runs.values_list("status", flat=True)) == {Run.Status.COMPLETED}
    assert StepRun.objects.filter(run__in=runs, reason="digest_merged").count() == 5 * 2 + 35


def test_runs_joining_a_digest_load_nothing_for_the_steps_behind_it(digest_flow, env, fire, move, clock, monkeypatch):
    """A chunk of runs that join their digests loads nothing for the email step behind it (no
    template, preference, address, quiet hours or cap): they wait in their buckets whatever those
    say. The leaders that carry the digests out load them, and send."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from apps.workflows.engine import chunks

    digest_flow()
    ids = [f"j{n:02d}" for n in range(20)]
    for subscriber_id in ids:
        SubscriberFactory(environment=env, subscriber_id=subscriber_id)
    loads: list[tuple[int, int]] = []  # (statements, template versions loaded)
    original = chunks.load_chunk

    def counted(runs: list[Run], now: datetime) -> Any:
        with CaptureQueriesContext(connection) as captured:
            data = original(runs, now)
        loads.append((len(captured.captured_queries), len(data.templates) + len(data.pinned)))
        return data

    monkeypatch.setattr(chunks, "load_chunk", counted)
    fire("comments", ids, {"post": "p1", "comment": "first"})  # opens 20 buckets
    fire("comments", ids, {"post": "p1", "comment": "second"})
    assert loads == [(0, 0), (0, 0)]

    move(START + timedelta(hours=1, seconds=1))
    statements, templates = loads[2]
    assert statements > 0 and templates == 1  # the email step's pinned version
    assert sorted(m.subject for m in mail.outbox) == ["2 new comments on p1"] * 20


def test_the_steps_ahead_stop_at_a_digest_joined_now_only_on_the_straight_path():
    from apps.workflows.definitions import compile_steps
    from apps.workflows.steps.base import steps_ahead

    digest = {"id": "d", "type": "digest", "window": "1h"}
    mail = {"id": "m", "type": "email", "template": "t"}
    late = {"id": "late", "type": "sms", "template": "t"}
    run = Run(step_index=0, step_results={})

    def ahead(steps: list[dict[str, Any]]) -> list[str]:
        return [step["id"] for step in steps_ahead(run, compile_steps(steps))]

    assert ahead([mail, digest, late]) == ["m", "d"]
    assert ahead([{**digest, "if": "payload.x"}, late]) == ["d", "late"]  # it may be skipped
    branch = {"id": "b", "type": "branch", "branches": [{"if": "payload.x", "steps": [digest]}], "else": [mail]}
    assert ahead([branch, late]) == ["b", "d", "m", "late"]  # the other arm and what follows may run
    run.step_index = 1  # inside the arm: the digest comes first on its path
    assert ahead([branch, late]) == ["d"]
    run.step_index, run.step_results = 0, {"d": {"type": "digest", "in_progress": True, "role": "leader"}}
    assert ahead([digest, late]) == ["d", "late"]  # a leader woken to carry its digest on goes on


def test_digest_max_events_closes_early(digest_flow, env, fire, move, clock):
    digest_flow(max_events=2)
    SubscriberFactory(environment=env, subscriber_id="u1")
    for index in range(3):
        fire("comments", ["u1"], {"post": "p1", "comment": f"c{index}"})
    # the first bucket filled at 2 and is due now; the third event opened the next one
    assert list(DigestBucket.objects.order_by("id").values_list("status", "entry_count")) == [
        ("sent", 2),
        ("open", 1),
    ]
    assert [m.subject for m in mail.outbox] == ["2 new comments on p1"]


def test_digest_look_back_sends_the_first_event_at_once(digest_flow, env, fire, move, clock):
    digest_flow(lookback="30m")
    SubscriberFactory(environment=env, subscriber_id="u1")
    first = fire("comments", ["u1"], {"post": "p1", "comment": "c0"})
    assert [m.subject for m in mail.outbox] == ["1 new comments on p1"]
    assert decisions(Run.objects.get(event=first))[:2] == [
        ("batch", "executed", "digest_lookback_quiet"),
        ("batch", "executed", "digest_lookback_passthrough"),
    ]
    clock.move_to(START + timedelta(minutes=5))
    fire("comments", ["u1"], {"post": "p1", "comment": "c1"})
    fire("comments", ["u1"], {"post": "p1", "comment": "c2"})
    assert len(mail.outbox) == 1  # the burst that followed is digested
    move(START + timedelta(hours=1, seconds=1))
    assert [m.subject for m in mail.outbox] == ["1 new comments on p1", "2 new comments on p1"]

    # Quiet for longer than the look-back: the next one goes out at once again.
    clock.move_to(START + timedelta(hours=3))
    fire("comments", ["u1"], {"post": "p1", "comment": "c3"})
    assert len(mail.outbox) == 3


def test_scheduled_digest_closes_at_the_subscribers_local_time(digest_flow, env, fire, move, clock):
    digest_flow(schedule="daily 09:00")
    SubscriberFactory(environment=env, subscriber_id="u1", timezone="Europe/Berlin")
    fire("comments", ["u1"], {"post": "p1", "comment": "c0"})
    bucket = DigestBucket.objects.get()
    assert bucket.closes_at == datetime(2026, 3, 11, 8, 0, tzinfo=UTC)  # 09:00 CET tomorrow
    move(datetime(2026, 3, 11, 8, 0, 1, tzinfo=UTC))
    assert [m.subject for m in mail.outbox] == ["1 new comments on p1"]


def test_flush_closes_matching_digests_now(digest_flow, env, api, fire, clock, django_capture_on_commit_callbacks):
    digest_flow()
    SubscriberFactory(environment=env, subscriber_id="u1")
    SubscriberFactory(environment=env, subscriber_id="u2")
    fire("comments", ["u1", "u2"], {"post": "p1", "comment": "c0"})
    with django_capture_on_commit_callbacks(execute=True):
        response = api.post("/api/v1/digests/flush", {"workflow": "comments", "subscriber_id": "u1"}, format="json")
    assert response.status_code == 200 and response.json() == {"flushed": 1}
    assert [m.to for m in mail.outbox] == [[env.subscribers.get(subscriber_id="u1").email]]
    assert DigestBucket.objects.get(subscriber__subscriber_id="u2").status == "open"
    assert api.post("/api/v1/digests/flush", {"workflow": "nope"}, format="json").status_code == 404


def test_flush_closes_digests_in_the_same_statements_for_2_or_8(digest_flow, env, fire, clock):
    """The flush locks, closes and wakes in a fixed number of statements (one on PostgreSQL): a
    bucket with a leader closes (its leader is woken now), one without is empty; only the buckets
    that match."""
    from django.db import connection, transaction
    from django.test.utils import CaptureQueriesContext

    from apps.workflows import digests

    flow = digest_flow()
    ids = [f"f{n}" for n in range(10)]
    for subscriber_id in ids:
        SubscriberFactory(environment=env, subscriber_id=subscriber_id)
    fire("comments", ids[:2], {"post": "small", "comment": "c"})
    fire("comments", ids[2:], {"post": "large", "comment": "c"})
    leaderless = DigestBucket.objects.create(
        environment=env,
        subscriber=env.subscribers.get(subscriber_id="f0"),
        workflow=flow,
        scope="wf:leaderless",
        step_id="batch",
        digest_key="large",
        opened_at=START,
        closes_at=START + timedelta(hours=1),
        last_event_at=START,
    )
    now = START + timedelta(minutes=5)
    clock.move_to(now)
    counts = []
    for key in ("small", "large"):
        with CaptureQueriesContext(connection) as captured, transaction.atomic():
            leaders = digests.digests_flush(environment_id=env.pk, key=key)
        counts.append(len(captured.captured_queries))
        buckets = DigestBucket.objects.filter(digest_key=key).exclude(pk=leaderless.pk)
        assert leaders == sorted(buckets.values_list("leader_run_id", flat=True))
        assert set(buckets.values_list("status", flat=True)) == {"closing"}
        assert set(Run.objects.filter(pk__in=leaders).values_list("resume_at", flat=True)) == {now}
        statements = [q["sql"] for q in captured.captured_queries if "SAVEPOINT" not in q["sql"]]
        if connection.vendor == "postgresql":
            assert len(statements) == 1
    assert counts[0] == counts[1]
    leaderless.refresh_from_db()
    assert (leaderless.status, leaderless.closed_at) == ("empty", now)
    assert digests.digests_flush(environment_id=env.pk) == []  # nothing open is left


def test_cancelling_the_leader_hands_the_digest_to_the_next_event(digest_flow, env, api, fire, move, clock):
    digest_flow()
    SubscriberFactory(environment=env, subscriber_id="u1")
    leader = fire("comments", ["u1"], {"post": "p1", "comment": "c0"}, transaction_id="t0")
    fire("comments", ["u1"], {"post": "p1", "comment": "c1"}, transaction_id="t1")
    fire("comments", ["u1"], {"post": "p1", "comment": "c2"}, transaction_id="t2")
    assert api.delete("/api/v1/events/t0").json()["cancelled_runs"] == 1

    bucket = DigestBucket.objects.get()
    successor = Run.objects.get(event__transaction_id="t1")
    assert (bucket.entry_count, bucket.leader_run_id) == (2, successor.pk)
    assert successor.resume_at == bucket.closes_at
    move(START + timedelta(hours=1, seconds=1))
    assert [m.subject for m in mail.outbox] == ["2 new comments on p1"]
    assert "c0" not in mail.outbox[0].alternatives[0][0]
    assert Run.objects.get(event=leader).status == Run.Status.CANCELLED


# --------------------------------------------------------------------------------------------
# frequency cap
# --------------------------------------------------------------------------------------------


def test_frequency_cap_holds_messages_for_the_category_digest(env, api, fire, move, clock):
    CategoryFactory(environment=env, key="social", digest_schedule="daily 18:00")
    CategoryFactory(environment=env, key="security", critical=True)
    make_workflow(env, "liked", [{"id": "e", "type": "email", "template": "mail"}], "social")
    make_workflow(env, "login", [{"id": "e", "type": "email", "template": "mail"}], "security")
    response = api.post("/api/v1/frequency-caps", {"channel": "email", "limit": 2, "window": "1d"}, format="json")
    assert response.status_code == 201, response.content
    SubscriberFactory(environment=env, subscriber_id="u1", timezone="UTC")

    runs = [Run.objects.get(event=fire("liked", ["u1"], {"title": f"like {i}"})) for i in range(3)]
    assert [decisions(r)[0][1:] for r in runs] == [
        ("executed", "queued"),
        ("executed", "queued"),
        ("held", "frequency_cap"),
    ]
    held = runs[2].step_runs.get()
    assert held.detail["cap"] == "2 per 1d" and held.detail["digest_at"] == "2026-03-10T18:00:00+00:00"
    # a critical category bypasses the cap
    critical = Run.objects.get(event=fire("login", ["u1"], {"title": "new login"}))
    assert decisions(critical) == [("e", "executed", "queued")]
    assert len(mail.outbox) == 3

    fire("liked", ["u1"], {"title": "like 3"})
    move(datetime(2026, 3, 10, 18, 0, 1, tzinfo=UTC))
    digest = mail.outbox[-1]
    assert digest.subject == "2 new notifications"
    assert "like 2" in digest.alternatives[0][0] and "like 3" in digest.alternatives[0][0]
    assert Message.objects.filter(data__category="social", run__isnull=True).count() == 1


def test_category_specific_cap_wins_over_the_channel_cap(env, fire, clock):
    social = CategoryFactory(environment=env, key="social")
    make_workflow(env, "liked", [{"id": "n", "type": "in_app", "template": "note"}], "social")
    FrequencyCap.objects.create(environment=env, channel="in_app", limit=5, window="1h")
    FrequencyCap.objects.create(environment=env, channel="in_app", category=social, limit=1, window="1h")
    SubscriberFactory(environment=env, subscriber_id="u1")
    _first, second = (Run.objects.get(event=fire("liked", ["u1"])) for _ in range(2))
    assert decisions(second)[0][1:] == ("held", "frequency_cap")


# --------------------------------------------------------------------------------------------
# quiet hours
# --------------------------------------------------------------------------------------------


def test_quiet_hours_hold_non_critical_messages_until_the_window_ends(env, fire, move, clock):
    CategoryFactory(environment=env, key="security", critical=True)
    make_workflow(
        env,
        "news",
        [{"id": "n", "type": "in_app", "template": "note"}, {"id": "e", "type": "email", "template": "mail"}],
    )
    make_workflow(env, "login", [{"id": "e", "type": "email", "template": "mail"}], "security")
    subscriber = SubscriberFactory(environment=env, subscriber_id="u1", timezone="Asia/Tokyo")
    QuietHours.objects.create(environment=env, subscriber=subscriber, start="22:00", end="07:00")
    clock.move_to(datetime(2026, 3, 10, 14, 0, tzinfo=UTC))  # 23:00 in Tokyo

    run = Run.objects.get(event=fire("news", ["u1"], {"title": "daily news"}))
    assert decisions(run) == [("n", "executed", "sent"), ("e", "waiting", "quiet_hours")]  # the inbox is silent
    assert run.resume_at == datetime(2026, 3, 10, 22, 0, tzinfo=UTC)  # 07:00 Tokyo
    critical = Run.objects.get(event=fire("login", ["u1"], {"title": "new login"}))
    assert decisions(critical) == [("e", "executed", "queued")]
    assert [m.subject for m in mail.outbox] == ["new login"]

    move(datetime(2026, 3, 10, 22, 0, tzinfo=UTC))
    run.refresh_from_db()
    assert run.status == Run.Status.COMPLETED
    assert [m.subject for m in mail.outbox] == ["new login", "daily news"]


def test_quiet_hours_api(api, env):
    SubscriberFactory(environment=env, subscriber_id="u1")
    url = "/api/v1/subscribers/u1/quiet-hours"
    assert api.get(url).status_code == 404
    response = api.put(
        url, {"start": "22:00", "end": "07:00", "timezone": "Europe/Paris", "channels": ["sms"]}, format="json"
    )
    assert response.status_code == 200
    assert response.json() == {
        "start": "22:00",
        "end": "07:00",
        "timezone": "Europe/Paris",
        "days": [],
        "channels": ["sms"],
    }
    bad = api.put(url, {"start": "22:00", "end": "22:00", "timezone": "Mars/Base"}, format="json")
    assert bad.status_code == 422
    assert set(bad.json()["error"]["details"]) == {"end", "timezone"}
    assert api.delete(url).status_code == 204
    assert not QuietHours.objects.exists()


# --------------------------------------------------------------------------------------------
# escalate
# --------------------------------------------------------------------------------------------


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
            {"id": "done", "type": "in_app", "template": "note"},
        ],
    )


def test_escalation_goes_through_channels_until_the_end(escalation, env, fire, move, clock):
    SubscriberFactory(environment=env, subscriber_id="u1", phone="+15550001")
    event = fire("incident", ["u1"], {"title": "db down"})
    run = Run.objects.get(event=event)
    assert run.resume_at == START + timedelta(hours=1)
    move(START + timedelta(hours=1))
    assert Message.objects.filter(run=run, channel="email").exists()
    move(START + timedelta(hours=4))
    run.refresh_from_db()
    assert run.status == Run.Status.COMPLETED
    assert sorted(Message.objects.filter(run=run).values_list("channel", flat=True)) == [
        "email",
        "in_app",
        "in_app",
        "sms",
    ]
    assert run.step_results["reach"]["channels"] == {"in_app": "sent", "email": "queued", "sms": "queued"}


def test_escalation_stops_when_the_subscriber_reads(escalation, env, fire, move, clock):
    SubscriberFactory(environment=env, subscriber_id="u1", phone="+15550001")
    run = Run.objects.get(event=fire("incident", ["u1"], {"title": "db down"}))
    clock.move_to(START + timedelta(minutes=30))
    InboxMessage.objects.filter(message__run=run).update(seen_at=START, read_at=START + timedelta(minutes=30))
    move(START + timedelta(hours=1))
    run.refresh_from_db()
    assert ("reach", "executed", "escalation_stopped") in decisions(run)
    assert list(Message.objects.filter(run=run).values_list("channel", flat=True)) == ["in_app", "in_app"]
    assert run.status == Run.Status.COMPLETED


def test_escalation_skips_channels_without_address_or_opted_out(escalation, env, fire, move, clock):
    subscriber = SubscriberFactory(environment=env, subscriber_id="u1", phone="")
    Preference.objects.create(environment=env, subscriber=subscriber, channel="email", enabled=False)
    run = Run.objects.get(event=fire("incident", ["u1"]))
    move(START + timedelta(hours=4))
    run.refresh_from_db()
    trace = decisions(run)
    assert ("reach", "skipped", "preference") in trace and ("reach", "skipped", "no_address") in trace
    assert run.step_results["reach"]["channels"] == {"in_app": "sent", "email": "preference", "sms": "no_address"}


def test_a_cancellation_key_stops_a_waiting_escalation(escalation, env, api, fire, move, clock):
    SubscriberFactory(environment=env, subscriber_id="u1")
    first = fire("incident", ["u1"], cancellation_key="incident-7")
    second = fire("incident", ["u1"], cancellation_key="incident-7")
    other = fire("incident", ["u1"], cancellation_key="incident-8")
    response = api.post("/api/v1/events/cancel", {"cancellation_key": "incident-7"}, format="json")
    assert response.json() == {"cancellation_key": "incident-7", "events": 2, "cancelled_runs": 2}
    move(START + timedelta(hours=1))
    assert not Message.objects.filter(run__event__in=[first, second], channel="email").exists()
    assert Message.objects.filter(run__event=other, channel="email").exists()
    assert decisions(Run.objects.get(event=first))[-1] == ("reach", "cancelled", "cancelled_by_key")
    again = api.post("/api/v1/events/cancel", {"cancellation_key": "incident-7"}, format="json")
    assert again.json()["cancelled_runs"] == 0


def test_delete_event_stops_a_delay(env, api, fire, move, clock):
    make_workflow(
        env, "later", [{"id": "wait", "type": "delay", "for": "1d"}, {"id": "n", "type": "in_app", "template": "note"}]
    )
    SubscriberFactory(environment=env, subscriber_id="u1")
    fire("later", ["u1"], transaction_id="tx-later")
    assert api.delete("/api/v1/events/tx-later").json()["cancelled_runs"] == 1
    move(START + timedelta(days=2))
    assert InboxMessage.objects.count() == 0


def test_admin_lists_digests_and_sends_one_now(
    digest_flow, env, fire, admin_client, clock, django_capture_on_commit_callbacks
):
    digest_flow()
    SubscriberFactory(environment=env, subscriber_id="u1")
    fire("comments", ["u1"], {"post": "p1", "comment": "c0"})
    bucket = DigestBucket.objects.get()
    assert admin_client.get("/admin/workflows/digestbucket/").status_code == 200
    assert admin_client.get("/admin/workflows/frequencycap/").status_code == 200
    assert admin_client.get("/admin/preferences/quiethours/").status_code == 200
    with django_capture_on_commit_callbacks(execute=True):
        response = admin_client.post(
            "/admin/workflows/digestbucket/", {"action": "flush", "_selected_action": [bucket.pk]}, follow=True
        )
    assert response.status_code == 200
    assert [m.subject for m in mail.outbox] == ["1 new comments on p1"]


def test_in_app_action_buttons_reach_the_inbox(env, fire, clock):
    published_template(
        env,
        "invite",
        "in_app",
        title_en="Join {{ payload.team }}?",
        body_en="",
        primary_action_label_en="Accept",
        primary_action_url="https://app.example.com/invites/{{ payload.id }}/accept",
        secondary_action_label_en="Decline",
        secondary_action_url="https://app.example.com/invites/{{ payload.id }}/decline",
    )
    make_workflow(env, "invite", [{"id": "n", "type": "in_app", "template": "invite"}])
    SubscriberFactory(environment=env, subscriber_id="u1")
    fire("invite", ["u1"], {"team": "Ops", "id": 7})
    inbox = InboxMessage.objects.get()
    assert inbox.actions == [
        {
            "id": "primary-0",
            "label": "Accept",
            "url": "https://app.example.com/invites/7/accept",
            "kind": "primary",
            "completed_at": None,
        },
        {
            "id": "secondary-1",
            "label": "Decline",
            "url": "https://app.example.com/invites/7/decline",
            "kind": "secondary",
            "completed_at": None,
        },
    ]


def test_branch_sees_the_delivery_status_of_an_earlier_email(env, fire, move, clock):
    email_then_sms_if(env, "bounce", "steps.email.status == 'bounced'")
    SubscriberFactory(environment=env, subscriber_id="u1", phone="+15550001")
    SubscriberFactory(environment=env, subscriber_id="u2", phone="+15550002")
    event = fire("bounce", ["u1", "u2"])
    Message.objects.filter(run__subscriber__subscriber_id="u1", channel="email").update(status="bounced")
    move(START + timedelta(hours=1, seconds=1))
    bounced, delivered = (Run.objects.get(event=event, subscriber__subscriber_id=s) for s in ("u1", "u2"))
    assert ("sms", "executed", "queued") in decisions(bounced)
    assert decisions(delivered)[-1] == ("check", "executed", "branch_else")
    assert bounced.step_results["email"]["status"] == "bounced"


def test_escalation_stops_when_an_email_is_opened(env, fire, move, clock):
    make_workflow(
        env,
        "nudge",
        [
            {
                "id": "reach",
                "type": "escalate",
                "stop_on": "read",
                "channels": [
                    {"channel": "email", "template": "mail"},
                    {"channel": "sms", "template": "text", "after": "2h"},
                ],
            }
        ],
    )
    SubscriberFactory(environment=env, subscriber_id="u1", phone="+15550001")
    run = Run.objects.get(event=fire("nudge", ["u1"]))
    Message.objects.filter(run=run, channel="email").update(status="opened", opened_at=START)
    move(START + timedelta(hours=2))
    assert not Message.objects.filter(run=run, channel="sms").exists()
    assert decisions(Run.objects.get(pk=run.pk))[-1] == ("reach", "executed", "escalation_stopped")


def test_a_daily_digest_choice_holds_the_categorys_messages_until_the_subscribers_morning(env, fire, move, clock):
    from apps.preferences.models import CategoryFrequency

    social = CategoryFactory(environment=env, key="social", digest_schedule="daily 08:00")
    make_workflow(
        env,
        "liked",
        [{"id": "n", "type": "in_app", "template": "note"}, {"id": "e", "type": "email", "template": "mail"}],
        "social",
    )
    daily = SubscriberFactory(environment=env, subscriber_id="daily", timezone="Europe/Paris")
    SubscriberFactory(environment=env, subscriber_id="instant")
    CategoryFrequency.objects.create(environment=env, subscriber=daily, category=social, frequency="daily")

    first = fire("liked", ["daily", "instant"], {"title": "like 1"})
    fire("liked", ["daily"], {"title": "like 2"})
    held = Run.objects.get(event=first, subscriber=daily)
    assert decisions(held) == [("n", "executed", "sent"), ("e", "held", "frequency_preference")]  # the inbox is instant
    detail = held.step_runs.get(step_id="e").detail
    assert detail["frequency"] == "daily" and detail["digest_at"] == "2026-03-11T07:00:00+00:00"  # 08:00 in Paris
    assert [m.subject for m in mail.outbox] == ["like 1"]  # only the instant subscriber's

    move(datetime(2026, 3, 11, 7, 0, 1, tzinfo=UTC))
    digest = mail.outbox[-1]
    assert digest.to == [daily.email] and digest.subject == "2 new notifications"
    assert "like 1" in digest.alternatives[0][0] and "like 2" in digest.alternatives[0][0]


def test_every_email_carries_preference_links_and_one_click_unsubscribe_headers(env, fire, clock):
    CategoryFactory(environment=env, key="social")
    CategoryFactory(environment=env, key="security", critical=True)
    make_workflow(env, "liked", [{"id": "e", "type": "email", "template": "mail"}], "social")
    make_workflow(env, "login", [{"id": "e", "type": "email", "template": "mail"}], "security")
    SubscriberFactory(environment=env, subscriber_id="u1")
    fire("liked", ["u1"], {"title": "liked"})
    fire("login", ["u1"], {"title": "login"})
    liked, login = mail.outbox
    assert liked.extra_headers["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert "/unsubscribe/" in liked.extra_headers["List-Unsubscribe"]
    headers = Message.objects.get(subject="liked").data["headers"]
    assert headers["List-Unsubscribe"] == liked.extra_headers["List-Unsubscribe"]
    # a critical category cannot be unsubscribed from: no one-click header
    assert "List-Unsubscribe" not in login.extra_headers


def test_workflow_defaults_and_unsubscribe_from_everything_are_explained(env, fire, clock):
    from apps.preferences.models import ALL_CHANNELS, WorkflowPreference

    CategoryFactory(environment=env, key="social")
    quiet = make_workflow(env, "digesty", [{"id": "e", "type": "email", "template": "mail"}], "social")
    make_workflow(env, "liked", [{"id": "e", "type": "email", "template": "mail"}], "social")
    WorkflowPreference.objects.create(environment=env, workflow=quiet, default_channels={"email": False})
    SubscriberFactory(environment=env, subscriber_id="u1")
    gone = SubscriberFactory(environment=env, subscriber_id="gone")
    Preference.objects.create(environment=env, subscriber=gone, channel=ALL_CHANNELS, enabled=False)

    off_by_workflow = Run.objects.get(event=fire("digesty", ["u1"]))
    step = off_by_workflow.step_runs.get()
    assert (step.reason, step.detail["rule"]) == ("preference", "workflow_default")
    assert step.detail["message"] == "email is off by default for this workflow"
    # the same subscriber, another workflow of the same category: sent
    assert decisions(Run.objects.get(event=fire("liked", ["u1"]))) == [("e", "executed", "queued")]
    unsubscribed = Run.objects.get(event=fire("liked", ["gone"])).step_runs.get()
    assert unsubscribed.detail["rule"] == "unsubscribed"
    assert unsubscribed.detail["message"] == "the subscriber unsubscribed from everything non-critical"


def test_flush_sends_category_digests_too(env, api, fire, clock, django_capture_on_commit_callbacks):
    CategoryFactory(environment=env, key="social")
    make_workflow(env, "liked", [{"id": "e", "type": "email", "template": "mail"}], "social")
    FrequencyCap.objects.create(environment=env, channel="email", limit=1, window="1d")
    SubscriberFactory(environment=env, subscriber_id="u1")
    for index in range(3):
        fire("liked", ["u1"], {"title": f"like {index}"})
    assert len(mail.outbox) == 1
    both = api.post("/api/v1/digests/flush", {"workflow": "liked", "category": "social"}, format="json")
    assert both.status_code == 400
    with django_capture_on_commit_callbacks(execute=True):
        response = api.post("/api/v1/digests/flush", {"category": "social", "subscriber_id": "u1"}, format="json")
    assert response.json() == {"flushed": 1}
    assert mail.outbox[-1].subject == "2 new notifications"
    assert api.post("/api/v1/digests/flush", {"category": "nope"}, format="json").status_code == 422


def test_holding_a_chunks_messages_for_the_digest_costs_the_same_queries_for_10_or_40(env, fire, clock):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from apps.preferences.models import CategoryFrequency

    social = CategoryFactory(environment=env, key="social")
    make_workflow(env, "liked", [{"id": "e", "type": "email", "template": "mail"}], "social")

    def held_queries(count: int, prefix: str) -> int:
        subscribers = [SubscriberFactory(environment=env, subscriber_id=f"{prefix}-{i}") for i in range(count)]
        CategoryFrequency.objects.bulk_create(
            [CategoryFrequency(environment=env, subscriber=s, category=social, frequency="daily") for s in subscribers]
        )
        with CaptureQueriesContext(connection) as queries:
            fire("liked", [s.subscriber_id for s in subscribers])
        return len(queries)

    assert held_queries(10, "a") == held_queries(40, "b")
    assert DigestBucket.objects.filter(status="open").count() == 50
    assert StepRun.objects.filter(reason="frequency_preference").count() == 50
