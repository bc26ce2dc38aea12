"""The "why not?" dry run: the same decisions as the real engine, and nothing written, queued or sent."""

from __future__ import annotations

import socket
from datetime import UTC, datetime, time, timedelta
from typing import Any

import pytest
import time_machine
from django.core import mail
from django.db import connection
from django.test.utils import CaptureQueriesContext

import apps.core.tasks
from apps.analytics.models import Counter
from apps.core.models import DeferredTask
from apps.delivery.models import DeliveryAttempt, Message, MessageEvent
from apps.events.models import Event
from apps.events.services import TriggerRequest, event_trigger
from apps.inbox.models import InboxMessage
from apps.preferences.models import Preference, QuietHours
from apps.subscribers.models import Subscriber
from apps.workflows.dryrun import DryRunRefused, workflow_dry_run
from apps.workflows.models import DigestBucket, DigestEntry, LimitHit, LimitScope, Run, StepRun, Workflow
from tests.factories import CategoryFactory, SubscriberFactory
from tests.workflows.conftest import make_workflow, published_template

pytestmark = pytest.mark.django_db

NOON = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
PAYLOAD = {"post_title": "Hello", "comment": "First!"}


@pytest.fixture(autouse=True)
def _noon() -> Any:
    with time_machine.travel(NOON, tick=False):
        yield


def real_decisions(env: Any, capture: Any, workflow: Workflow, subscriber: Subscriber, payload: Any) -> list[Any]:
    """What the real engine decides now for this subscriber: the StepRuns of a real trigger."""
    request = TriggerRequest(workflow=workflow.key, to=[subscriber.subscriber_id], payload=payload)
    with capture(execute=True):
        event = event_trigger(environment=env, request=request)
    run = Run.objects.get(event=event)
    return [(s.step_id, s.decision, s.reason) for s in run.step_runs.order_by("id")]


def dry_decisions(workflow: Workflow, subscriber: Subscriber, payload: Any) -> list[Any]:
    """The dry run's decisions taken now (before any wait ends)."""
    result = workflow_dry_run(subscriber=subscriber, workflow=workflow, payload=payload)
    return [(s.step_id, s.decision, s.reason) for s in result.steps if s.after_wait is None]


def agree(env: Any, capture: Any, workflow: Workflow, subscriber: Subscriber, payload: Any = PAYLOAD) -> list[Any]:
    workflow.refresh_from_db()
    dry = dry_decisions(workflow, subscriber, payload)
    real = real_decisions(env, capture, workflow, subscriber, payload)
    assert dry == real
    return dry


def email_workflow(env: Any, key: str = "notice", category_key: str | None = None, **step: Any) -> Workflow:
    published_template(env, f"{key}-email", "email", subject_en="Hi {{ subscriber.first_name }}", body_en="<p>x</p>")
    return make_workflow(
        env, key, [{"id": "mail", "type": "email", "template": f"{key}-email", **step}], category_key=category_key
    )


def test_opted_out_channel_is_skipped_by_preference(tenant, django_capture_on_commit_callbacks):
    env = tenant.environment
    category = CategoryFactory(environment=env, key="billing")
    workflow = email_workflow(env, category_key="billing")
    subscriber = SubscriberFactory(environment=env)
    Preference.objects.create(environment=env, subscriber=subscriber, category=category, channel="email", enabled=False)

    result = workflow_dry_run(subscriber=subscriber, workflow=workflow, payload={})
    step = result.steps[0]
    assert (step.outcome, step.reason, step.detail["rule"]) == ("skipped", "preference", "subscriber_category")
    assert step.words == "email is off for category billing"
    assert agree(env, django_capture_on_commit_callbacks, workflow, subscriber, {}) == [
        ("mail", "skipped", "preference")
    ]


def test_no_email_address_is_skipped_no_address(tenant, django_capture_on_commit_callbacks):
    env = tenant.environment
    workflow = email_workflow(env)
    subscriber = SubscriberFactory(environment=env, email="")
    result = workflow_dry_run(subscriber=subscriber, workflow=workflow, payload={})
    assert result.steps[0].words == "the subscriber has no email address"
    assert agree(env, django_capture_on_commit_callbacks, workflow, subscriber, {}) == [
        ("mail", "skipped", "no_address")
    ]


def test_false_condition_is_skipped_with_the_condition_in_words(tenant, django_capture_on_commit_callbacks):
    env = tenant.environment
    workflow = email_workflow(env, **{"if": "payload.urgent"})
    subscriber = SubscriberFactory(environment=env)
    result = workflow_dry_run(subscriber=subscriber, workflow=workflow, payload={"urgent": False})
    assert result.steps[0].words == "the condition payload.urgent is false"
    assert agree(env, django_capture_on_commit_callbacks, workflow, subscriber, {"urgent": False}) == [
        ("mail", "skipped", "condition_false")
    ]


def test_critical_category_ignores_the_opt_out(tenant, django_capture_on_commit_callbacks):
    env = tenant.environment
    category = CategoryFactory(environment=env, key="security", critical=True)
    workflow = email_workflow(env, category_key="security")
    subscriber = SubscriberFactory(environment=env)
    Preference.objects.create(environment=env, subscriber=subscriber, category=category, channel="email", enabled=False)
    Preference.objects.create(environment=env, subscriber=subscriber, category=None, channel="all", enabled=False)
    result = workflow_dry_run(subscriber=subscriber, workflow=workflow, payload={})
    assert (result.steps[0].outcome, result.steps[0].words) == (
        "would run",
        "a message would be queued for sending on email",
    )
    assert result.ending == "The run would complete."
    assert agree(env, django_capture_on_commit_callbacks, workflow, subscriber, {}) == [("mail", "executed", "queued")]


def test_quiet_hours_would_wait_then_send_after_the_wait(tenant, django_capture_on_commit_callbacks):
    env = tenant.environment
    workflow = email_workflow(env)
    subscriber = SubscriberFactory(environment=env, timezone="UTC")
    QuietHours.objects.create(environment=env, subscriber=subscriber, start=time(11, 0), end=time(14, 0))

    result = workflow_dry_run(subscriber=subscriber, workflow=workflow, payload={})
    waiting, after = result.steps
    assert (waiting.outcome, waiting.reason, waiting.after_wait) == ("would wait", "quiet_hours", None)
    assert waiting.words == f"the subscriber's quiet hours: email waits until {NOON.replace(hour=14).isoformat()}"
    assert (after.outcome, after.reason) == ("would run", "queued")
    assert after.after_wait == NOON.replace(hour=14)
    assert agree(env, django_capture_on_commit_callbacks, workflow, subscriber, {}) == [
        ("mail", "waiting", "quiet_hours")
    ]


def test_steps_after_a_delay_are_evaluated_as_if_the_wait_had_ended(
    tenant, comment_workflow, django_capture_on_commit_callbacks
):
    env = tenant.environment
    subscriber = SubscriberFactory(environment=env, email="")
    result = workflow_dry_run(subscriber=subscriber, workflow=comment_workflow, payload=PAYLOAD)
    assert [(s.step_id, s.outcome, s.reason, s.after_wait) for s in result.steps] == [
        ("inbox", "would run", "sent", None),
        ("wait", "would wait", "delay", None),
        ("wait", "resumes", "delay_ended", NOON + timedelta(minutes=10)),
        ("mail", "skipped", "no_address", NOON + timedelta(minutes=10)),
    ]
    assert agree(env, django_capture_on_commit_callbacks, comment_workflow, subscriber) == [
        ("inbox", "executed", "sent"),
        ("wait", "waiting", "delay"),
    ]


def test_a_digest_stops_the_dry_run_and_says_what_is_not_evaluated(tenant):
    env = tenant.environment
    published_template(env, "d-email", "email", subject_en="{{ digest.count }}", body_en="x")
    workflow = make_workflow(
        env,
        "digested",
        [
            {"id": "batch", "type": "digest", "window": "1h", "key": "payload.post_id"},
            {"id": "mail", "type": "email", "template": "d-email"},
        ],
    )
    subscriber = SubscriberFactory(environment=env)
    result = workflow_dry_run(subscriber=subscriber, workflow=workflow, payload={"post_id": 7})
    (step,) = result.steps
    assert (step.outcome, step.reason) == ("would wait", "digest_joined")
    assert step.words.startswith("would join the digest for key '7', which closes at 2026-06-01T13:00:00+00:00")
    assert result.not_evaluated == [{"id": "mail", "type": "email"}]
    assert "not evaluated" in result.ending


def test_refused_as_a_trigger_would_be(tenant, other_tenant):
    env = tenant.environment
    workflow = email_workflow(env)
    subscriber = SubscriberFactory(environment=env)
    stranger = SubscriberFactory(environment=other_tenant.environment)
    with pytest.raises(DryRunRefused) as refused:
        workflow_dry_run(subscriber=stranger, workflow=workflow, payload={})
    assert refused.value.code == "workflow_not_found"

    schema = {"type": "object", "required": ["post_title"]}
    Workflow.objects.filter(pk=workflow.pk).update(active=False)
    workflow.published_version.__class__.objects.filter(pk=workflow.published_version_id).update(payload_schema=schema)
    workflow.refresh_from_db()
    with pytest.raises(DryRunRefused) as refused:
        workflow_dry_run(subscriber=subscriber, workflow=workflow, payload={})
    assert refused.value.code == "workflow_not_found"
    Workflow.objects.filter(pk=workflow.pk).update(active=True)
    workflow.refresh_from_db()
    with pytest.raises(DryRunRefused) as refused:
        workflow_dry_run(subscriber=subscriber, workflow=workflow, payload={})
    assert (refused.value.code, refused.value.details) == ("invalid_payload", {"payload.post_title": "is required"})


TRACE_AND_MESSAGE_TABLES = [
    Event,
    Run,
    StepRun,
    Message,
    DeliveryAttempt,
    MessageEvent,
    InboxMessage,
    DigestBucket,
    DigestEntry,
    LimitScope,
    LimitHit,
    Counter,
    DeferredTask,
]


def test_nothing_is_written_queued_or_sent(tenant, monkeypatch, django_capture_on_commit_callbacks):
    """Every kind of step, a throttle and a full frequency cap among them (the two that count a
    hit while walking): no row kept, no task, no on-commit callback, no mail, no connection."""
    env = tenant.environment
    category = CategoryFactory(environment=env, key="news")
    from apps.workflows.models import FrequencyCap

    FrequencyCap.objects.create(environment=env, channel="sms", limit=1, window="1d", category=category, active=True)
    published_template(env, "n-app", "in_app", title_en="T", body_en="B")
    published_template(env, "n-email", "email", subject_en="S", body_en="B")
    published_template(env, "n-sms", "sms", body_en="B")
    workflow = make_workflow(
        env,
        "everything",
        [
            {"id": "cap", "type": "throttle", "limit": 5, "window": "1h"},
            {"id": "inbox", "type": "in_app", "template": "n-app"},
            {"id": "mail", "type": "email", "template": "n-email"},
            {"id": "text", "type": "sms", "template": "n-sms"},
            {"id": "hook", "type": "webhook"},
            {"id": "wait", "type": "delay", "for": "1h"},
            {"id": "reach", "type": "escalate", "channels": [{"channel": "email", "template": "n-email"}]},
            {"id": "route", "type": "branch", "branches": [{"if": "payload.x", "steps": []}], "else": []},
            {"id": "batch", "type": "digest", "window": "1h"},
        ],
        category_key="news",
    )
    subscriber = SubscriberFactory(environment=env, phone="+15550001111")
    counts = {model.__name__: model.objects.count() for model in TRACE_AND_MESSAGE_TABLES}
    sent: list[Any] = []
    monkeypatch.setattr(apps.core.tasks, "import_string", lambda path: sent.append(path))
    monkeypatch.setattr(apps.core.tasks, "_broker_send", lambda *a: sent.append(a))
    monkeypatch.setattr(apps.core.tasks, "_broker_send_many", lambda *a: sent.append(a))
    connects: list[Any] = []
    monkeypatch.setattr(socket.socket, "connect", lambda self, address: connects.append(address))

    with django_capture_on_commit_callbacks() as callbacks:
        result = workflow_dry_run(subscriber=subscriber, workflow=workflow, payload={"x": False})

    assert [(s.step_id, s.reason) for s in result.steps] == [
        ("cap", "under_limit"),
        ("inbox", "sent"),
        ("mail", "queued"),
        ("text", "queued"),
        ("hook", "queued"),
        ("wait", "delay"),
        ("wait", "delay_ended"),
        ("reach", "queued"),
        ("route", "branch_else"),
        ("batch", "digest_joined"),
    ]
    assert {model.__name__: model.objects.count() for model in TRACE_AND_MESSAGE_TABLES} == counts
    assert callbacks == []
    assert sent == []
    assert connects == []
    assert mail.outbox == []


def test_a_full_frequency_cap_is_held_and_its_hit_not_kept(tenant, django_capture_on_commit_callbacks):
    env = tenant.environment
    from apps.workflows.models import FrequencyCap

    FrequencyCap.objects.create(environment=env, channel="email", limit=1, window="1d", active=True)
    workflow = email_workflow(env)
    subscriber = SubscriberFactory(environment=env)
    real_decisions(env, django_capture_on_commit_callbacks, workflow, subscriber, {})  # takes the only slot
    hits = LimitHit.objects.count()
    result = workflow_dry_run(subscriber=subscriber, workflow=workflow, payload={})
    assert (result.steps[0].outcome, result.steps[0].reason) == ("held for a digest", "frequency_cap")
    assert LimitHit.objects.count() == hits
    assert agree(env, django_capture_on_commit_callbacks, workflow, subscriber, {}) == [
        ("mail", "held", "frequency_cap")
    ]


def test_a_render_error_is_reported_as_a_decision(tenant):
    env = tenant.environment
    published_template(env, "bad-email", "email", subject_en="{{ payload.x.y.z() }}", body_en="x")
    workflow = make_workflow(env, "bad", [{"id": "mail", "type": "email", "template": "bad-email"}])
    subscriber = SubscriberFactory(environment=env)
    result = workflow_dry_run(subscriber=subscriber, workflow=workflow, payload={})
    assert (result.steps[0].outcome, result.steps[0].reason) == ("would fail", "render_error")
    assert result.steps[0].words.startswith("template bad-email fails to render")


def test_query_count_does_not_grow_with_the_subscriber_history(tenant, comment_workflow):
    env = tenant.environment
    subscriber = SubscriberFactory(environment=env)
    counts = []
    for _ in range(2):
        comment_workflow.refresh_from_db()
        with CaptureQueriesContext(connection) as queries:
            workflow_dry_run(subscriber=subscriber, workflow=comment_workflow, payload=PAYLOAD)
        counts.append(len(queries))
        for index in range(20):
            InboxMessage.objects.create(environment=env, subscriber=subscriber, title=f"m{index}")
    assert counts[0] == counts[1]
    assert counts[0] <= 20


def test_every_reason_code_reads_in_words():
    """The dry run's own phrasing covers only codes the engine writes (apps.workflows.reasons lists
    them all, checked against the engine's source), and every code reads as words, never raw."""
    from apps.workflows.dryrun import DRY_RUN_WORDS, reason_in_words
    from apps.workflows.reasons import REASON_WORDS

    assert set(DRY_RUN_WORDS) <= set(REASON_WORDS)
    for code in REASON_WORDS:
        words = reason_in_words(code, {})
        assert words and words != code and "{" not in words, code
    assert reason_in_words("preference", {"message": "email is off"}) == "email is off"
    assert reason_in_words("condition_false", {"condition": "payload.x"}) == "the condition payload.x is false"
