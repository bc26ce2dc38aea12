"""Batched delivery (``messages_deliver``): one claim per batch, bookkeeping per window of sends,
one connection per integration, and every per-message guarantee kept."""

from __future__ import annotations

import itertools
from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone

from apps.delivery.models import DeliveryAttempt, Integration, Message, Suppression
from apps.delivery.services import messages_redrive
from apps.delivery.tasks import deliver_messages
from tests.delivery.conftest import FakeServer, Received, Reply
from tests.factories import IntegrationFactory


def postmark(server_factory: Any, fail: dict[int, Reply] | None = None) -> FakeServer:
    """A fake Postmark: each request answered with a new MessageID, or the reply scripted for the
    n-th request (1-based) in ``fail``."""
    counter = itertools.count(1)

    def answer(received: Received) -> Reply:
        n = next(counter)
        if fail and n in fail:
            return fail[n]
        return Reply(body={"To": received.json()["To"], "MessageID": f"pm-{n}", "ErrorCode": 0, "Message": "OK"})

    return server_factory(handler=answer)


def email_integration(env: Any, server: FakeServer, **kwargs: Any) -> Integration:
    return IntegrationFactory(
        environment=env,
        provider="postmark",
        credentials={"server_token": "pm-token", "api_url": f"{server.url}/"},
        settings={"from_email": "hello@acme.test", "timeout": 2},
        **kwargs,
    )


def queued_emails(env: Any, count: int) -> list[int]:
    return [
        Message.objects.create(
            environment=env, step_id="s", channel="email", recipient=f"u{i}@example.com", subject="Hi", body="<p>x</p>"
        ).pk
        for i in range(count)
    ]


def test_an_email_batch_uses_one_connection_and_records_every_message(tenant, fake_server):
    env = tenant.environment
    server = postmark(fake_server)
    integration = email_integration(env, server)
    ids = queued_emails(env, 30)

    deliver_messages(ids)

    assert len(server.requests) == 30
    assert server.connections == 1
    messages = list(Message.objects.filter(pk__in=ids).order_by("pk"))
    assert {m.status for m in messages} == {Message.Status.SENT}
    assert len({m.provider_message_id for m in messages}) == 30
    assert all(m.attempts == 1 and m.send_started_at is None and m.integration_id == integration.pk for m in messages)
    # Each request carried its own message's id, and each message got the id answered to its request.
    by_recipient = {r.json()["To"]: r.json()["Metadata"]["clarion_message_id"] for r in server.requests}
    assert all(by_recipient[m.recipient] == str(m.pk) for m in messages)
    attempts = DeliveryAttempt.objects.filter(message_id__in=ids)
    assert attempts.count() == 30
    assert set(attempts.values_list("status", flat=True)) == {DeliveryAttempt.Status.SUCCESS}


def test_an_sms_batch_uses_one_connection(tenant, fake_server):
    env = tenant.environment
    server = fake_server(handler=lambda received: Reply(body={"id": f"gw-{received.json()['message_id']}"}))
    IntegrationFactory(
        environment=env, channel="sms", provider="http", credentials={"url": f"{server.url}/send"}, settings={}
    )
    ids = [
        Message.objects.create(environment=env, step_id="s", channel="sms", recipient=f"+1555000{i:03}", body="x").pk
        for i in range(20)
    ]

    deliver_messages(ids)

    assert len(server.requests) == 20 and server.connections == 1
    for message in Message.objects.filter(pk__in=ids):
        assert message.status == Message.Status.SENT and message.provider_message_id == f"gw-{message.pk}"


@pytest.mark.parametrize("count", [3, 60])
def test_the_queries_of_a_batch_do_not_grow_with_its_size(tenant, fake_server, settings, count):
    """claim, load, suppressions, integrations, write-ahead; then per window of sends: attempts,
    statuses, early callbacks (inside one savepoint here, as tests run in a transaction), and on
    SQLite the analytics count (one INSERT; on PostgreSQL it is part of the window's statement)."""
    settings.CLARION_DELIVERY = {**settings.CLARION_DELIVERY, "SEND_WINDOW": 100}
    env = tenant.environment
    server = postmark(fake_server)
    email_integration(env, server)
    ids = queued_emails(env, count)

    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    with CaptureQueriesContext(connection) as captured:
        deliver_messages(ids)
    assert len(captured) <= (10 if connection.vendor == "postgresql" else 11), [
        q["sql"][:80] for q in captured.captured_queries
    ]
    assert Message.objects.filter(pk__in=ids, status=Message.Status.SENT).count() == count


def test_windows_add_a_fixed_number_of_queries_each(tenant, fake_server, settings, django_assert_max_num_queries):
    settings.CLARION_DELIVERY = {**settings.CLARION_DELIVERY, "SEND_WINDOW": 10}
    env = tenant.environment
    server = postmark(fake_server)
    email_integration(env, server)
    ids = queued_emails(env, 50)

    from django.db import connection

    # 5 per batch; per window of 10: attempts, statuses, early callbacks, the next write-ahead
    # (+ SAVEPOINT and RELEASE, as tests run inside a transaction; + the analytics count on SQLite,
    # part of the window's one statement on PostgreSQL).
    with django_assert_max_num_queries(5 + (6 if connection.vendor == "postgresql" else 7) * 5):
        deliver_messages(ids)
    assert Message.objects.filter(pk__in=ids, status=Message.Status.SENT).count() == 50


def test_a_failure_in_a_batch_is_retried_for_that_message_alone(tenant, fake_server):
    env = tenant.environment
    server = postmark(fake_server, fail={4: Reply(status=500, body={"ErrorCode": 500, "Message": "oops"})})
    email_integration(env, server, retries=2)
    ids = queued_emails(env, 10)

    deliver_messages(ids)

    assert len(server.requests) == 11  # the fourth message was tried twice
    assert set(Message.objects.filter(pk__in=ids).values_list("status", flat=True)) == {Message.Status.SENT}
    fourth = Message.objects.get(pk=ids[3])
    assert fourth.attempts == 2
    assert list(DeliveryAttempt.objects.filter(message=fourth).order_by("id").values_list("status", flat=True)) == [
        DeliveryAttempt.Status.FAILED,
        DeliveryAttempt.Status.SUCCESS,
    ]


def test_a_rejected_message_in_a_batch_fails_alone(tenant, fake_server):
    env = tenant.environment
    server = postmark(fake_server, fail={2: Reply(status=422, body={"ErrorCode": 300, "Message": "Invalid"})})
    email_integration(env, server)
    ids = queued_emails(env, 5)

    deliver_messages(ids)

    statuses = dict(Message.objects.filter(pk__in=ids).values_list("pk", "status"))
    assert statuses[ids[1]] == Message.Status.FAILED
    assert [statuses[pk] for pk in ids if pk != ids[1]] == [Message.Status.SENT] * 4
    assert len(server.requests) == 5


def test_a_send_in_doubt_in_a_batch_is_held_and_the_others_are_sent(tenant, fake_server):
    """The connection drops after the third request was written: that message may have been taken
    (non-critical category: held, at most once); no other message is affected or sent twice."""
    env = tenant.environment
    server = postmark(fake_server, fail={3: Reply(drop=True)})
    email_integration(env, server, retries=2)
    ids = queued_emails(env, 6)

    deliver_messages(ids)

    statuses = dict(Message.objects.filter(pk__in=ids).values_list("pk", "status"))
    assert statuses[ids[2]] == Message.Status.IN_DOUBT
    assert [statuses[pk] for pk in ids if pk != ids[2]] == [Message.Status.SENT] * 5
    assert len(server.requests) == 6


def test_a_worker_killed_mid_batch_leaves_only_its_window_in_doubt(tenant, fake_server, settings, monkeypatch):
    """Killed during the fourth call of a window of five: the window's messages (some sent, some
    maybe) go in doubt, none is ever sent elsewhere; messages after the window were never written
    ahead and are queued again."""
    from apps.delivery.services import sending

    settings.CLARION_DELIVERY = {**settings.CLARION_DELIVERY, "SEND_WINDOW": 5}
    env = tenant.environment
    server = postmark(fake_server)
    email_integration(env, server)
    ids = queued_emails(env, 12)
    real_send = sending._send
    calls = itertools.count(1)

    class Killed(BaseException):
        pass

    def send_then_die(*args: Any) -> Any:
        if next(calls) == 9:  # the fourth call of the second window
            raise Killed
        return real_send(*args)

    monkeypatch.setattr(sending, "_send", send_then_die)
    with pytest.raises(Killed):
        deliver_messages(ids)

    statuses = dict(Message.objects.filter(pk__in=ids).values_list("pk", "status"))
    assert [statuses[pk] for pk in ids[:5]] == [Message.Status.SENT] * 5
    assert [statuses[pk] for pk in ids[5:]] == [Message.Status.SENDING] * 7
    messages_redrive(now=timezone.now() + timedelta(seconds=31))
    statuses = dict(Message.objects.filter(pk__in=ids).values_list("pk", "status"))
    assert [statuses[pk] for pk in ids[5:10]] == [Message.Status.IN_DOUBT] * 5  # held: at most once
    assert [statuses[pk] for pk in ids[10:]] == [Message.Status.QUEUED] * 2
    assert len(server.requests) == 8


def test_suppressed_addresses_in_a_batch_are_not_sent(tenant, fake_server):
    env = tenant.environment
    server = postmark(fake_server)
    email_integration(env, server)
    ids = queued_emails(env, 4)
    Suppression.objects.create(environment=env, channel="email", address="u1@example.com", reason="bounced")

    deliver_messages(ids)

    statuses = dict(Message.objects.filter(pk__in=ids).values_list("pk", "status"))
    assert statuses[ids[1]] == Message.Status.FAILED
    assert len(server.requests) == 3


def test_a_batch_skips_an_open_circuit_and_sends_through_the_next_integration(tenant, fake_server):
    env = tenant.environment
    primary, secondary = postmark(fake_server), postmark(fake_server)
    email_integration(
        env, primary, priority=0, circuit_failures=5, circuit_open_until=timezone.now() + timedelta(seconds=60)
    )
    email_integration(env, secondary, priority=1)
    ids = queued_emails(env, 8)

    deliver_messages(ids)

    assert primary.requests == [] and len(secondary.requests) == 8 and secondary.connections == 1
    assert set(Message.objects.filter(pk__in=ids).values_list("status", flat=True)) == {Message.Status.SENT}


def test_a_message_already_taken_is_not_sent_by_the_batch(tenant, fake_server):
    env = tenant.environment
    server = postmark(fake_server)
    email_integration(env, server)
    ids = queued_emails(env, 3)
    Message.objects.filter(pk=ids[0]).update(status=Message.Status.SENDING)  # another worker has it

    deliver_messages([*ids, ids[1]])

    assert len(server.requests) == 2
    assert Message.objects.get(pk=ids[0]).status == Message.Status.SENDING


def test_a_callback_that_arrived_before_the_batch_recorded_the_send_is_applied(tenant, fake_server):
    from apps.delivery.models import MessageEvent

    env = tenant.environment
    server = postmark(fake_server)
    email_integration(env, server)
    ids = queued_emails(env, 3)
    MessageEvent.objects.create(
        environment=env,
        provider="postmark",
        provider_message_id="pm-2",  # the fake answers the second request with this id
        event_type="delivered",
        status=Message.Status.DELIVERED,
        dedupe_key="early-1",
    )

    deliver_messages(ids)

    second = Message.objects.get(pk=ids[1])
    assert second.status == Message.Status.DELIVERED and second.provider_message_id == "pm-2"
    event = MessageEvent.objects.get()
    assert event.message_id == second.pk and event.applied
    assert set(Message.objects.filter(pk__in=[ids[0], ids[2]]).values_list("status", flat=True)) == {"sent"}


def test_a_web_push_batch_loads_devices_once_and_uses_one_connection(
    tenant, fake_server, django_assert_max_num_queries
):
    from apps.subscribers.models import Device
    from tests.delivery.test_channels import PushSubscriber, vapid_private_key
    from tests.factories import SubscriberFactory

    env = tenant.environment
    browser = PushSubscriber()
    push_service = fake_server([Reply(status=201, body={})])
    IntegrationFactory(
        environment=env,
        channel="push",
        provider="webpush",
        credentials={"vapid_private_key": vapid_private_key(), "vapid_subject": "mailto:ops@example.com"},
    )
    ids = []
    for i in range(12):
        subscriber = SubscriberFactory(environment=env, subscriber_id=f"u{i}")
        Device.objects.create(
            environment=env,
            subscriber=subscriber,
            provider="webpush",
            token=f"{push_service.url}/p{i}",
            keys=browser.keys,
        )
        ids.append(
            Message.objects.create(
                environment=env, step_id="s", channel="push", subscriber=subscriber, subject="Hi", body="x"
            ).pk
        )

    with django_assert_max_num_queries(12):  # not one device query per message
        deliver_messages(ids)

    assert len(push_service.requests) == 12 and push_service.connections == 1
    assert set(Message.objects.filter(pk__in=ids).values_list("status", flat=True)) == {"sent"}
    assert browser.decrypt(push_service.requests[0].body)["message_id"] == str(ids[0])


def test_a_batch_counts_its_messages_and_provider_calls_in_the_metrics(tenant, fake_server):
    from apps.observability.metrics import DELIVERY_SECONDS, MESSAGES

    def sample(metric: Any, name: str, **labels: str) -> float:
        for family in metric.collect():
            for s in family.samples:
                if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                    return float(s.value)
        return 0.0

    env = tenant.environment
    server = postmark(fake_server, fail={2: Reply(status=422, body={"ErrorCode": 300, "Message": "Invalid"})})
    email_integration(env, server)
    ids = queued_emails(env, 4)
    sent_before = sample(MESSAGES, "clarion_messages_total", channel="email", status="sent", provider="postmark")
    failed_before = sample(MESSAGES, "clarion_messages_total", channel="email", status="failed", provider="postmark")
    calls_before = sample(DELIVERY_SECONDS, "clarion_delivery_seconds_count", provider="postmark")

    deliver_messages(ids)

    assert sample(MESSAGES, "clarion_messages_total", channel="email", status="sent", provider="postmark") == (
        sent_before + 3
    )
    assert sample(MESSAGES, "clarion_messages_total", channel="email", status="failed", provider="postmark") == (
        failed_before + 1
    )
    assert sample(DELIVERY_SECONDS, "clarion_delivery_seconds_count", provider="postmark") == calls_before + 4
