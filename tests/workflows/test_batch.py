"""Micro-batches (engine.batch): many small events in one task, with no advance or deliver hop."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
import time_machine
from django.conf import settings
from django.core import mail
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from apps.delivery.models import Message
from apps.delivery.services import messages_redrive
from apps.delivery.tasks import deliver_messages
from apps.events.fanout import events_fanout_claim_batch
from apps.events.models import Event
from apps.inbox.models import InboxMessage
from apps.workflows import engine
from apps.workflows.models import Run
from tests.factories import SubscriberFactory, TopicFactory, TopicSubscriptionFactory
from tests.workflows.conftest import make_workflow, published_template

pytestmark = pytest.mark.django_db


@pytest.fixture
def flow(tenant: Any, monkeypatch: Any) -> Any:
    """An in-app step then an email step (sent through the default email backend)."""
    monkeypatch.setattr("apps.inbox.realtime._send_all", lambda *args: None)
    env = tenant.environment
    published_template(env, "ping-in-app", "in_app", title_en="Ping {{ payload.n }}", body_en="")
    published_template(env, "ping-mail", "email", subject_en="Ping {{ payload.n }}", body_en="<p>Hi</p>")
    make_workflow(
        env,
        "ping",
        [
            {"id": "inbox", "type": "in_app", "template": "ping-in-app"},
            {"id": "mail", "type": "email", "template": "ping-mail"},
        ],
    )
    return env


def make_events(env: Any, count: int, prefix: str, **recipients: Any) -> list[int]:
    """Accepted events whose wake-ups were not run (as if they waited in the broker)."""
    workflow = env.workflows.get(key="ping")
    ids = []
    for n in range(count):
        subscriber = SubscriberFactory(environment=env, subscriber_id=f"{prefix}-{n}", email=f"{prefix}-{n}@x.test")
        event = Event.objects.create(
            environment=env,
            transaction_id=f"{prefix}-{n}",
            workflow=workflow,
            workflow_version_id=workflow.published_version_id,
            payload={"n": n},
            recipients=recipients.get("to") or [{"subscriber_id": subscriber.subscriber_id}],
        )
        ids.append(event.pk)
    return ids


def test_one_wake_up_processes_the_whole_batch(flow):
    ids = make_events(flow, 5, "a")

    engine.process_event(ids[2])  # one event's wake-up

    assert set(Event.objects.values_list("status", flat=True)) == {Event.Status.PROCESSED}
    assert set(Event.objects.values_list("recipient_count", flat=True)) == {1}
    assert set(Run.objects.values_list("status", flat=True)) == {Run.Status.COMPLETED}
    assert InboxMessage.objects.count() == 5
    assert set(Message.objects.filter(channel="email").values_list("status", flat=True)) == {Message.Status.SENT}
    assert sorted(m.subject for m in mail.outbox) == [f"Ping {n}" for n in range(5)]
    # The other wake-ups find nothing to do: one query each, no second send.
    for event_id in ids:
        with CaptureQueriesContext(connection) as queries:
            engine.process_event(event_id)
        assert len(queries) == 1
    assert len(mail.outbox) == 5 and InboxMessage.objects.count() == 5


def test_batch_queries_do_not_grow_with_events(flow, monkeypatch):
    """Claim, runs, walk and commit of a batch: the same statements for 3 or 30 events on
    PostgreSQL (on SQLite, its limit on query variables splits a bulk insert every ~40 rows)."""
    engine.process_events(make_events(flow, 2, "warm"))  # caches (templates, settings) filled
    monkeypatch.setattr("apps.workflows.engine.chunks.inline_delivery_limit", lambda: 0)  # engine only
    counts = []
    for size, prefix in ((3, "small"), (30, "large")):
        ids = make_events(flow, size, prefix)
        with CaptureQueriesContext(connection) as queries:
            engine.process_events(ids[:1])
        counts.append(len(queries))
        assert Event.objects.filter(pk__in=ids, status=Event.Status.PROCESSED).count() == size
        assert InboxMessage.objects.filter(subscriber__subscriber_id__startswith=f"{prefix}-").count() == size
    if connection.vendor == "postgresql":
        assert counts[0] == counts[1], counts
    else:
        assert counts[1] - counts[0] <= 2, counts
    # 35 measured before analytics; + one INSERT each for the chunk's counts and the inbox rows'
    assert counts[1] <= 37, counts


def test_the_inline_send_is_one_delivery_batch(flow):
    """With the emails sent in the same task: the engine's statements plus delivery's batch, which
    grows by one window of sends (delivery's SEND_WINDOW) at a time, not by message."""
    engine.process_events(make_events(flow, 2, "warm"))
    ids = make_events(flow, 20, "f")
    with CaptureQueriesContext(connection) as queries:
        engine.process_events(ids[:1])
    assert len(mail.outbox) == 22
    # 45 + one analytics INSERT each (issue #16): the chunk's counts, the inbox rows', the sends'
    assert len(queries) <= 48


def test_a_batch_claim_taken_twice_does_nothing_twice(flow):
    ids = make_events(flow, 4, "b")
    lease = timedelta(seconds=20)

    assert sorted(events_fanout_claim_batch(event_ids=ids[:1], lease=lease, limit=10)) == ids
    assert events_fanout_claim_batch(event_ids=ids, lease=lease, limit=10) == []  # held by the first
    engine.process_events(ids)  # a second worker with the same wake-ups: nothing to take
    assert Run.objects.count() == 0 and len(mail.outbox) == 0

    with time_machine.travel(timezone.now() + timedelta(seconds=21)):  # the first worker died
        engine.process_events(ids)
        engine.process_events(ids)
    assert Run.objects.count() == 4 and InboxMessage.objects.count() == 4 and len(mail.outbox) == 4
    assert Message.objects.filter(channel="email", status=Message.Status.SENT).count() == 4


def test_a_crash_between_commit_and_inline_send_is_recovered_by_the_redrive(flow, monkeypatch):
    ids = make_events(flow, 3, "c")

    class Killed(BaseException):
        """The process dies right after the chunk committed (nothing else of it runs)."""

    def die(**kwargs: Any) -> None:
        raise Killed

    with monkeypatch.context() as patch:
        patch.setattr("apps.workflows.engine.chunks.messages_deliver", die)
        with pytest.raises(Killed):
            engine.process_events(ids)
    emails = Message.objects.filter(channel="email")
    assert InboxMessage.objects.count() == 3  # committed with the chunk
    assert set(emails.values_list("status", flat=True)) == {Message.Status.QUEUED}
    assert mail.outbox == []
    assert messages_redrive(now=timezone.now()) == []  # not yet stalled

    later = timezone.now() + timedelta(seconds=settings.CLARION["STALL_SECONDS"] + 1)
    redriven = messages_redrive(now=later)
    assert sorted(redriven) == sorted(emails.values_list("pk", flat=True))
    deliver_messages(redriven)
    assert len(mail.outbox) == 3
    assert set(emails.values_list("status", flat=True)) == {Message.Status.SENT}
    assert messages_redrive(now=later + timedelta(seconds=60)) == []
    engine.process_events(ids)  # the events' own wake-ups, late: nothing is sent twice
    assert len(mail.outbox) == 3


def test_topic_events_in_a_batch_take_the_chunked_path(flow, django_capture_on_commit_callbacks):
    topic = TopicFactory(environment=flow, key="team")
    for n in range(3):
        TopicSubscriptionFactory(topic=topic, subscriber=SubscriberFactory(environment=flow, email=f"t{n}@x.test"))
    small = make_events(flow, 2, "d")
    topical = make_events(flow, 2, "e", to=[{"topic": "team"}])

    with django_capture_on_commit_callbacks(execute=True):
        engine.process_events(small[:1])

    assert set(Event.objects.values_list("status", flat=True)) == {Event.Status.PROCESSED}
    assert dict(Event.objects.filter(pk__in=topical).values_list("pk", "recipient_count")) == dict.fromkeys(topical, 3)
    assert Run.objects.count() == 2 + 6
    assert InboxMessage.objects.count() == 8 and len(mail.outbox) == 8
