from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
import time_machine
from django.core import mail
from django.utils import timezone

from apps.delivery.models import Message
from apps.events.models import Event
from apps.events.services import TriggerRequest, event_trigger
from apps.inbox.models import InboxMessage
from apps.preferences.models import Preference
from apps.workflows import engine
from apps.workflows.models import Run, StepRun
from tests.factories import CategoryFactory, SubscriberFactory, TopicFactory, TopicSubscriptionFactory
from tests.workflows.conftest import make_workflow, published_template

pytestmark = pytest.mark.django_db


def trigger(env: Any, capture: Any, **kwargs: Any) -> Event:
    request = TriggerRequest(
        workflow=kwargs.pop("workflow", "comment-created"),
        to=kwargs.pop("to"),
        payload=kwargs.pop("payload", {"post_title": "Hello", "comment": "First!"}),
        **kwargs,
    )
    with capture(execute=True):
        return event_trigger(environment=env, request=request)


def test_in_app_then_delay_then_email_when_unread(tenant, comment_workflow, django_capture_on_commit_callbacks):
    env = tenant.environment
    subscriber = SubscriberFactory(environment=env, subscriber_id="u1", first_name="Ada", locale="de-AT")
    event = trigger(env, django_capture_on_commit_callbacks, to=["u1"])

    run = Run.objects.get(event=event)
    assert run.status == Run.Status.WAITING
    inbox = InboxMessage.objects.get(subscriber=subscriber)
    assert inbox.title == "New comment on Hello"  # no German title: falls back to English
    assert [(s.step_id, s.decision, s.reason) for s in run.step_runs.all()] == [
        ("inbox", "executed", "sent"),
        ("wait", "waiting", "delay"),
    ]
    assert mail.outbox == []

    with time_machine.travel(timezone.now() + timedelta(minutes=11)):
        with django_capture_on_commit_callbacks(execute=True):
            engine.sweep()
    run.refresh_from_db()
    assert run.status == Run.Status.COMPLETED
    assert len(mail.outbox) == 1
    assert mail.outbox[0].subject == "Ada, neuer Kommentar zu Hello"
    assert mail.outbox[0].to == [subscriber.email]
    email = Message.objects.get(run=run, channel="email")
    assert email.status == Message.Status.SENT
    assert email.locale == "de"
    assert email.attempts_log.get().status == "success"


def test_condition_skips_email_when_inbox_message_was_read(
    tenant, comment_workflow, django_capture_on_commit_callbacks
):
    env = tenant.environment
    SubscriberFactory(environment=env, subscriber_id="u1")
    event = trigger(env, django_capture_on_commit_callbacks, to=["u1"])
    InboxMessage.objects.filter(subscriber__subscriber_id="u1").update(read_at=timezone.now())

    with time_machine.travel(timezone.now() + timedelta(minutes=11)):
        with django_capture_on_commit_callbacks(execute=True):
            engine.sweep()
    run = Run.objects.get(event=event)
    assert run.status == Run.Status.COMPLETED
    assert mail.outbox == []
    last = run.step_runs.last()
    assert (last.step_id, last.decision, last.reason) == ("mail", "skipped", "condition_false")
    assert run.step_results["inbox"]["read"] is True


def test_preferences_skip_with_reason_and_critical_bypasses(tenant, django_capture_on_commit_callbacks):
    env = tenant.environment
    CategoryFactory(environment=env, key="comments")
    CategoryFactory(environment=env, key="security", critical=True)
    published_template(env, "note", "email", subject_en="Hi", body_en="Body")
    make_workflow(env, "comments-mail", [{"id": "mail", "type": "email", "template": "note"}], "comments")
    make_workflow(env, "security-mail", [{"id": "mail", "type": "email", "template": "note"}], "security")
    opted_out = SubscriberFactory(environment=env, subscriber_id="out")
    SubscriberFactory(environment=env, subscriber_id="in")
    Preference.objects.create(environment=env, subscriber=opted_out, channel="email", enabled=False)

    event = trigger(env, django_capture_on_commit_callbacks, workflow="comments-mail", to=["out", "in"])
    assert [m.to for m in mail.outbox] == [["in@example.com"]]
    skipped = StepRun.objects.get(run__event=event, run__subscriber=opted_out)
    assert (skipped.decision, skipped.reason) == ("skipped", "preference")
    assert skipped.detail["rule"] == "subscriber_channel"
    assert skipped.detail["channel"] == "email"

    mail.outbox.clear()
    trigger(env, django_capture_on_commit_callbacks, workflow="security-mail", to=["out"])
    assert [m.to for m in mail.outbox] == [["out@example.com"]]


def test_email_step_without_address_is_skipped(tenant, django_capture_on_commit_callbacks):
    env = tenant.environment
    published_template(env, "note", "email", subject_en="Hi", body_en="Body")
    make_workflow(env, "mail-only", [{"id": "mail", "type": "email", "template": "note"}])
    SubscriberFactory(environment=env, subscriber_id="nomail", email="")
    event = trigger(env, django_capture_on_commit_callbacks, workflow="mail-only", to=["nomail"])
    step = StepRun.objects.get(run__event=event)
    assert (step.decision, step.reason) == ("skipped", "no_address")


def test_render_error_is_traced_not_raised(tenant, django_capture_on_commit_callbacks):
    env = tenant.environment
    published_template(env, "broken", "in_app", title_en="{{ 1 / 0 }}", body_en="x")
    make_workflow(env, "broken-flow", [{"id": "inbox", "type": "in_app", "template": "broken"}])
    SubscriberFactory(environment=env, subscriber_id="u1")
    event = trigger(env, django_capture_on_commit_callbacks, workflow="broken-flow", to=["u1"])
    step = StepRun.objects.get(run__event=event)
    assert (step.decision, step.reason) == ("failed", "render_error")
    assert "ZeroDivisionError" in step.detail["error"]
    assert not InboxMessage.objects.exists()


def test_topic_fanout_dedupes_and_excludes_actor(tenant, settings, django_capture_on_commit_callbacks):
    settings.CLARION = {**settings.CLARION, "FANOUT_CHUNK_SIZE": 3}
    env = tenant.environment
    published_template(env, "ping", "in_app", title_en="Ping", body_en="")
    make_workflow(env, "ping", [{"id": "inbox", "type": "in_app", "template": "ping"}])
    topic = TopicFactory(environment=env, key="post-42")
    members = [TopicSubscriptionFactory(topic=topic).subscriber for _ in range(7)]
    actor = members[0]
    event = trigger(
        env,
        django_capture_on_commit_callbacks,
        workflow="ping",
        to=[members[1].subscriber_id, {"topic": "post-42"}, {"topic": "post-42"}],
        actor=actor.subscriber_id,
    )
    event.refresh_from_db()
    assert event.status == Event.Status.PROCESSED
    assert event.recipient_count == 6
    assert set(InboxMessage.objects.values_list("subscriber_id", flat=True)) == {m.pk for m in members[1:]}


def test_advance_twice_never_duplicates(tenant, comment_workflow, django_capture_on_commit_callbacks):
    env = tenant.environment
    SubscriberFactory(environment=env, subscriber_id="u1")
    event = trigger(env, django_capture_on_commit_callbacks, to=["u1"])
    run = Run.objects.get(event=event)
    with django_capture_on_commit_callbacks(execute=True):
        engine.advance_runs([run.pk])
        engine.process_event(event.pk)
    assert InboxMessage.objects.count() == 1
    assert Message.objects.count() == 1


class WorkerKilled(BaseException):
    """Stands for SIGKILL: nothing after it runs, the open transaction is lost."""


def test_worker_dying_mid_run_is_recovered_by_sweeper_without_duplicates(
    tenant, comment_workflow, django_capture_on_commit_callbacks, monkeypatch
):
    env = tenant.environment
    SubscriberFactory(environment=env, subscriber_id="u1")
    SubscriberFactory(environment=env, subscriber_id="u2")

    original_commit = engine.batch.commit_writes
    calls = {"n": 0}

    def dying_commit(*args: Any, **kwargs: Any) -> None:
        calls["n"] += 1
        if calls["n"] == 1:
            raise WorkerKilled()
        original_commit(*args, **kwargs)

    # The micro-batch writes its runs with their walk, in one transaction: killed inside it, it
    # leaves nothing but the event, pending under the dead worker's fan-out lease.
    monkeypatch.setattr(engine.batch, "commit_writes", dying_commit)
    with pytest.raises(WorkerKilled):
        trigger(env, django_capture_on_commit_callbacks, to=["u1", "u2"])

    event = Event.objects.get()
    assert event.status == Event.Status.PENDING and event.fanout_lease_until is not None
    assert not Run.objects.exists()
    assert not InboxMessage.objects.exists()

    # Before the lease runs out the sweeper leaves the event to its (presumed live) worker.
    with django_capture_on_commit_callbacks(execute=True):
        engine.sweep()
    assert not InboxMessage.objects.exists()

    with time_machine.travel(timezone.now() + timedelta(minutes=6)):
        with django_capture_on_commit_callbacks(execute=True):
            engine.sweep()
            engine.sweep()
    assert InboxMessage.objects.count() == 2
    assert Message.objects.count() == 2
    assert set(Run.objects.values_list("status", flat=True)) == {Run.Status.WAITING}
    assert Event.objects.get().status == Event.Status.PROCESSED


def test_lost_fanout_task_is_redriven(tenant, comment_workflow, settings):
    """The queue lost process_event (e.g. Redis broker restart): the sweeper finds the event."""
    env = tenant.environment
    SubscriberFactory(environment=env, subscriber_id="u1")
    settings.CLARION_TASKS_EAGER = False
    from unittest import mock

    with mock.patch("apps.core.tasks.enqueue"):
        event = event_trigger(environment=env, request=TriggerRequest("comment-created", ["u1"], {"post_title": "x"}))
    settings.CLARION_TASKS_EAGER = True
    assert not Run.objects.exists()
    with time_machine.travel(timezone.now() + timedelta(minutes=5)):
        counts = engine.sweep()
    assert counts["events"] == 1
    assert Run.objects.get(event=event).status == Run.Status.WAITING


def test_cancel_stops_waiting_runs(tenant, comment_workflow, django_capture_on_commit_callbacks):
    env = tenant.environment
    SubscriberFactory(environment=env, subscriber_id="u1")
    event = trigger(env, django_capture_on_commit_callbacks, to=["u1"])
    assert engine.event_cancel_runs(event=event) == 1
    with time_machine.travel(timezone.now() + timedelta(minutes=11)):
        with django_capture_on_commit_callbacks(execute=True):
            engine.sweep()
    run = Run.objects.get(event=event)
    assert run.status == Run.Status.CANCELLED
    assert mail.outbox == []
    assert run.step_runs.last().decision == "cancelled"


def test_chunk_queries_do_not_grow_with_recipients(
    tenant, django_capture_on_commit_callbacks, django_assert_max_num_queries, monkeypatch
):
    """One chunk of 50 runs costs a fixed number of queries (batched preferences, quiet hours, caps,
    addresses, templates, writes)."""
    monkeypatch.setattr("apps.inbox.realtime._send_all", lambda *args: None)
    env = tenant.environment
    CategoryFactory(environment=env, key="news")
    published_template(env, "ping", "in_app", title_en="Ping {{ subscriber.first_name }}", body_en="")
    make_workflow(env, "ping", [{"id": "inbox", "type": "in_app", "template": "ping"}], "news")
    subscribers = [SubscriberFactory(environment=env) for _ in range(50)]
    event = Event.objects.create(
        environment=env,
        transaction_id="t1",
        workflow_id=env.workflows.get().pk,
        workflow_version_id=env.workflows.get().published_version_id,
        recipients=[{"subscriber_id": s.subscriber_id} for s in subscribers],
    )
    Run.objects.bulk_create(
        [
            Run(environment=env, event=event, workflow_version_id=event.workflow_version_id, subscriber=s)
            for s in subscribers
        ]
    )
    run_ids = list(Run.objects.values_list("pk", flat=True))
    # PostgreSQL: messages and inbox rows take their keys from their sequences, then one COPY each;
    # +2 (issue #16): one analytics INSERT for the chunk's counts (recipients, finished runs' savings),
    # one for the inbox rows' (sent, delivered)
    # -3: an in-app-only chunk looks up no address (suppressions, devices, chat integrations)
    with django_assert_max_num_queries(22):
        with django_capture_on_commit_callbacks(execute=True):
            engine.advance_runs(run_ids)
    assert InboxMessage.objects.count() == 50
