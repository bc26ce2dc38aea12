"""Sends whose outcome is unknown ("in doubt"): never failed over, resent or held on purpose.

Real HTTP (and SMTP) fakes on loopback; time that matters is injected (``messages_redrive(now=…)``,
rows written with explicit timestamps), never measured.
"""

from __future__ import annotations

import json
import re
import socket
import threading
import uuid
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import unquote_plus

import pytest
from django.db import OperationalError, connection
from django.test import Client
from django.urls import reverse
from django.utils import timezone
from twilio.request_validator import RequestValidator

from apps.delivery.models import DeliveryAttempt, Integration, Message
from apps.delivery.providers.base import (
    _REGISTRY,
    ErrorKind,
    _load_builtin,
    idempotency_key,
    max_call_seconds,
)
from apps.delivery.selectors import message_status_counts
from apps.delivery.services import (
    StatusEvent,
    message_events_record,
    message_send_now,
    messages_redrive,
    messages_requeue_stalled,
)
from apps.delivery.status import can_move
from apps.delivery.tasks import deliver_messages
from apps.events.services import TriggerRequest, event_trigger
from apps.preferences.models import Category
from tests.delivery.conftest import FakeServer, Received, Reply
from tests.factories import CategoryFactory, IntegrationFactory, SubscriberFactory
from tests.workflows.conftest import make_workflow, published_template

pytestmark = pytest.mark.django_db

CLIENT_TIMEOUT = 0.3  # the provider answers after 1 s: a read timeout, the request already written
SLOW = Reply(delay=1.0, body={"id": "too-late"})


def sms_integration(env: Any, server: FakeServer | str, *, priority: int = 0, **settings: Any) -> Integration:
    url = server if isinstance(server, str) else f"{server.url}/send"
    return IntegrationFactory(
        environment=env,
        channel="sms",
        provider="http",
        priority=priority,
        retries=1,
        credentials={"url": url},
        settings={"from": "+15550000000", "timeout": CLIENT_TIMEOUT, **settings},
    )


def sms_flow(env: Any, *, critical: bool = False, policy: str = "auto") -> Category:
    category = CategoryFactory(environment=env, key="alerts", critical=critical, in_doubt_policy=policy)
    published_template(env, "code", "sms", body_en="Code {{ payload.code }}")
    make_workflow(env, "login-code", [{"id": "text", "type": "sms", "template": "code"}], category_key="alerts")
    SubscriberFactory(environment=env, subscriber_id="u1", phone="+15551234567")
    return category


def trigger(env: Any, capture: Any, *, transaction_id: str = "tx-1") -> Message:
    with capture(execute=True):
        event_trigger(
            environment=env,
            request=TriggerRequest("login-code", ["u1"], {"code": "42"}, transaction_id=transaction_id),
        )
    return Message.objects.get(channel="sms")


def closed_port_url() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}/send"  # nothing listens: connection refused


# --- a timeout after the request went out -----------------------------------------------------------


def test_timeout_of_a_non_critical_message_is_held_in_doubt_not_failed_over(
    tenant, fake_server, django_capture_on_commit_callbacks
):
    env = tenant.environment
    sms_flow(env)
    primary = fake_server([SLOW])
    backup = fake_server()
    first = sms_integration(env, primary, priority=0)
    sms_integration(env, backup, priority=1)

    message = trigger(env, django_capture_on_commit_callbacks)

    assert message.status == Message.Status.IN_DOUBT
    assert len(primary.requests) == 1 and backup.requests == []  # no retry, no failover
    assert message.integration_id == first.pk and message.provider == "http" and message.in_doubt_count == 1
    assert "not resent" in message.error and "category 'alerts' is not critical" in message.error
    (attempt,) = message.attempts_log.all()
    assert (attempt.status, attempt.error_kind, attempt.integration_id) == ("in_doubt", "timeout", first.pk)
    # Nothing will send it again: not the ticker, not the minute sweeper.
    later = timezone.now() + timedelta(hours=1)
    assert messages_redrive(now=later) == []
    assert messages_requeue_stalled(stalled_before=later) == []
    # The trace says what happened and why it was not resent.
    trace = tenant.client.get("/api/v1/events/tx-1").json()
    (traced,) = trace["runs"][0]["messages"]
    assert traced["status"] == "in_doubt" and "not resent" in traced["error"]
    assert [a["status"] for a in traced["attempts"]] == ["in_doubt"]
    listed = tenant.client.get("/api/v1/messages?status=in_doubt").json()
    assert [m["id"] for m in listed["data"]] == [message.pk] and listed["data"][0]["in_doubt_count"] == 1


def test_timeout_of_a_critical_message_is_resent_to_the_same_integration_with_the_same_key(
    tenant, fake_server, django_capture_on_commit_callbacks
):
    env = tenant.environment
    sms_flow(env, critical=True)
    calls: list[Received] = []

    def slow_then_ok(request: Received) -> Reply:
        calls.append(request)
        return SLOW if len(calls) == 1 else Reply(body={"id": "gw-1"})

    primary = fake_server(handler=slow_then_ok)
    backup = fake_server()
    first = sms_integration(env, primary, priority=0)
    sms_integration(env, backup, priority=1)

    message = trigger(env, django_capture_on_commit_callbacks)

    assert message.status == Message.Status.QUEUED and message.next_attempt_at is not None
    assert "resending through http" in message.error and "critical" in message.error
    due = message.next_attempt_at + timedelta(seconds=1)
    assert messages_redrive(now=message.next_attempt_at - timedelta(seconds=1)) == []  # not yet
    assert messages_redrive(now=due) == [message.pk]
    assert messages_redrive(now=due) == []  # handed out once
    deliver_messages([message.pk])

    message.refresh_from_db()
    assert message.status == Message.Status.SENT and message.provider_message_id == "gw-1"
    assert message.integration_id == first.pk and backup.requests == []
    keys = [r.headers["Idempotency-Key"] for r in primary.requests]
    assert keys == [idempotency_key(message)] * 2
    assert [r.json()["message_id"] for r in primary.requests] == [str(message.pk)] * 2
    assert list(message.attempts_log.values_list("status", "integration_id")) == [
        ("in_doubt", first.pk),
        ("success", first.pk),
    ]


def test_resends_stop_at_the_limit_and_the_message_stays_in_doubt(
    tenant, fake_server, settings, django_capture_on_commit_callbacks
):
    settings.CLARION_DELIVERY = {"BACKOFF_BASE": 0.01, "BACKOFF_MAX": 0.05, "IN_DOUBT_RESENDS": 1}
    env = tenant.environment
    sms_flow(env, critical=True)
    primary = fake_server([SLOW])
    backup = fake_server()
    sms_integration(env, primary, priority=0)
    sms_integration(env, backup, priority=1)

    message = trigger(env, django_capture_on_commit_callbacks)
    assert messages_redrive(now=message.next_attempt_at + timedelta(seconds=1)) == [message.pk]
    deliver_messages([message.pk])

    message.refresh_from_db()
    assert message.status == Message.Status.IN_DOUBT and message.in_doubt_count == 2
    assert "resent 1 time(s) already" in message.error
    assert len(primary.requests) == 2 and backup.requests == []  # the first send and exactly one resend
    assert messages_redrive(now=timezone.now() + timedelta(hours=1)) == []


def test_connection_lost_after_the_request_was_written_is_in_doubt(
    tenant, fake_server, django_capture_on_commit_callbacks
):
    env = tenant.environment
    sms_flow(env)
    primary = fake_server([Reply(drop=True)])
    backup = fake_server()
    sms_integration(env, primary, priority=0)
    sms_integration(env, backup, priority=1)

    message = trigger(env, django_capture_on_commit_callbacks)

    assert message.status == Message.Status.IN_DOUBT and backup.requests == []
    assert message.attempts_log.get().error_kind == ErrorKind.CONNECTION_LOST


# --- nothing was sent: retried and failed over as before -----------------------------------------------


def test_connection_refused_is_retried_and_failed_over_never_in_doubt(
    tenant, fake_server, django_capture_on_commit_callbacks
):
    env = tenant.environment
    sms_flow(env)
    backup = fake_server([Reply(body={"id": "backup-1"})])
    refused = sms_integration(env, closed_port_url(), priority=0)
    second = sms_integration(env, backup, priority=1)

    message = trigger(env, django_capture_on_commit_callbacks)

    assert message.status == Message.Status.SENT and message.integration_id == second.pk
    assert message.in_doubt_count == 0
    attempts = list(message.attempts_log.values_list("integration_id", "status", "error_kind"))
    assert attempts == [
        (refused.pk, "failed", "connection"),
        (refused.pk, "failed", "connection"),  # retries=1: retried once, then failed over
        (second.pk, "success", ""),
    ]


# --- a worker that died mid-send -------------------------------------------------------------------


def left_sending(env: Any, integration: Integration, *, at: datetime, in_call: bool = True) -> Message:
    """What a killed worker leaves behind: ``sending``, its heartbeat stopped at ``at``."""
    message = Message.objects.create(environment=env, step_id="s", channel="sms", recipient="+15550001", body="x")
    Message.objects.filter(pk=message.pk).update(
        status=Message.Status.SENDING,
        integration=integration,
        provider=integration.provider,
        send_started_at=at if in_call else None,
        updated_at=at,
    )
    return message


def test_a_worker_dead_during_the_call_puts_the_message_in_doubt_after_the_heartbeat_timeout(tenant, fake_server):
    env = tenant.environment
    server = fake_server()
    integration = sms_integration(env, server)
    t0 = timezone.now() - timedelta(minutes=5)
    message = left_sending(env, integration, at=t0)

    assert messages_redrive(now=t0 + timedelta(seconds=29)) == []  # heartbeat not yet stale (30 s)
    assert Message.objects.get(pk=message.pk).status == Message.Status.SENDING
    assert messages_redrive(now=t0 + timedelta(seconds=31)) == []  # in doubt, held: nothing to send

    message.refresh_from_db()
    assert message.status == Message.Status.IN_DOUBT and message.in_doubt_count == 1
    assert message.send_started_at is None and "worker stopped during the http call" in message.error
    attempt = message.attempts_log.get()
    assert (attempt.status, attempt.error_kind, attempt.integration_id) == ("in_doubt", "worker_died", integration.pk)
    assert server.requests == []
    assert messages_redrive(now=t0 + timedelta(seconds=60)) == []  # settled once


def test_a_dead_workers_critical_message_is_resent_only_through_the_integration_that_may_have_it(tenant, fake_server):
    env = tenant.environment
    CategoryFactory(environment=env, key="billing", critical=True)
    published_template(env, "bill", "sms", body_en="Invoice")
    make_workflow(env, "bill", [{"id": "text", "type": "sms", "template": "bill"}], category_key="billing")
    SubscriberFactory(environment=env, subscriber_id="u1", phone="+15551234567")
    preferred = fake_server()
    may_have_it = fake_server([Reply(body={"id": "again"})])
    sms_integration(env, preferred, priority=0)  # first in the failover order, never used for this one
    pinned = sms_integration(env, may_have_it, priority=1)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("apps.core.tasks.enqueue", lambda *a, **k: None)
        event_trigger(environment=env, request=TriggerRequest("bill", ["u1"], {}))
    from apps.events.models import Event
    from apps.workflows.engine import process_event

    with pytest.MonkeyPatch.context() as patch:  # the message is created, not delivered inline
        patch.setattr("apps.workflows.engine.chunks.inline_delivery_limit", lambda: 0)
        process_event(Event.objects.get().pk)
    message = Message.objects.get(channel="sms")
    t0 = timezone.now() - timedelta(minutes=5)
    Message.objects.filter(pk=message.pk).update(
        status=Message.Status.SENDING, integration=pinned, provider="http", send_started_at=t0, updated_at=t0
    )

    now = t0 + timedelta(seconds=31)
    first = messages_redrive(now=now)
    message.refresh_from_db()
    assert message.status == Message.Status.QUEUED and "critical" in message.error
    ids = first or messages_redrive(now=now + timedelta(seconds=1))
    assert ids == [message.pk]
    deliver_messages(ids)

    message.refresh_from_db()
    assert message.status == Message.Status.SENT and message.integration_id == pinned.pk
    assert preferred.requests == [] and len(may_have_it.requests) == 1
    assert may_have_it.requests[0].headers["Idempotency-Key"] == idempotency_key(message)


def test_a_worker_dead_outside_a_provider_call_is_simply_queued_again(tenant, fake_server):
    env = tenant.environment
    server = fake_server()
    integration = sms_integration(env, server)
    t0 = timezone.now() - timedelta(minutes=5)
    message = left_sending(env, integration, at=t0, in_call=False)

    assert messages_redrive(now=t0 + timedelta(seconds=31)) == [message.pk]

    message.refresh_from_db()
    assert message.status == Message.Status.QUEUED and message.in_doubt_count == 0
    deliver_messages([message.pk])
    assert Message.objects.get(pk=message.pk).status == Message.Status.SENT and len(server.requests) == 1


@pytest.mark.parametrize(
    ("critical", "policy", "deduplicates", "resent"),
    [
        (False, "auto", False, False),  # at most once
        (False, "auto", True, True),  # the gateway drops a repeated Idempotency-Key
        (True, "auto", False, True),  # at least once
        (True, "drop", False, False),
        (True, "drop", True, False),
        (False, "resend", False, True),
    ],
)
def test_the_category_policy_decides(tenant, fake_server, critical, policy, deduplicates, resent):
    env = tenant.environment
    CategoryFactory(environment=env, key="news", critical=critical, in_doubt_policy=policy)
    published_template(env, "n", "sms", body_en="News")
    make_workflow(env, "n", [{"id": "text", "type": "sms", "template": "n"}], category_key="news")
    SubscriberFactory(environment=env, subscriber_id="u1", phone="+15551234567")
    integration = sms_integration(env, fake_server(), deduplicates=deduplicates)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("apps.core.tasks.enqueue", lambda *a, **k: None)
        event_trigger(environment=env, request=TriggerRequest("n", ["u1"], {}))
    from apps.events.models import Event
    from apps.workflows.engine import process_event

    with pytest.MonkeyPatch.context() as patch:  # the message is created, not delivered inline
        patch.setattr("apps.workflows.engine.chunks.inline_delivery_limit", lambda: 0)
        process_event(Event.objects.get().pk)
    message = Message.objects.get(channel="sms")
    t0 = timezone.now() - timedelta(minutes=5)
    Message.objects.filter(pk=message.pk).update(
        status=Message.Status.SENDING, integration=integration, provider="http", send_started_at=t0, updated_at=t0
    )

    messages_redrive(now=t0 + timedelta(seconds=31))

    message.refresh_from_db()
    assert message.status == (Message.Status.QUEUED if resent else Message.Status.IN_DOUBT), message.error


@pytest.mark.parametrize("path", ["batch", "single"])
def test_the_database_failing_after_the_provider_accepted_is_in_doubt_not_resent(
    tenant, fake_server, monkeypatch, path
):
    """The original duplicate: the ESP took it, Clarion could not record it (a batch records its
    successes with ``_record_sent``, one message with ``_finish_sent``)."""
    from apps.delivery.services import sending as services

    env = tenant.environment
    server = fake_server([Reply(body={"id": "accepted"})])
    sms_integration(env, server)
    message = Message.objects.create(environment=env, step_id="s", channel="sms", recipient="+15550001", body="x")

    def database_gone(*args: Any, **kwargs: Any) -> None:
        raise OperationalError("server closed the connection unexpectedly")

    if path == "batch":
        monkeypatch.setattr(services, "_record_sent", database_gone)
        deliver_messages([message.pk])
    else:
        monkeypatch.setattr(services, "_finish_sent", database_gone)
        services.message_deliver(message_id=message.pk)

    message.refresh_from_db()
    assert message.status == Message.Status.IN_DOUBT and "delivery crashed during the http call" in message.error
    assert messages_redrive(now=timezone.now() + timedelta(hours=1)) == []
    assert len(server.requests) == 1


def test_messages_requeue_stalled_follows_the_same_rule_and_spares_live_sends(tenant, fake_server):
    env = tenant.environment
    integration = sms_integration(env, fake_server())
    dead = left_sending(env, integration, at=timezone.now() - timedelta(minutes=10))
    live = left_sending(env, integration, at=timezone.now())  # a call in progress, heartbeat fresh

    # The sweeper's own threshold is shorter than the heartbeat here: the live send is left alone.
    assert messages_requeue_stalled(stalled_before=timezone.now() + timedelta(minutes=1)) == []

    assert Message.objects.get(pk=dead.pk).status == Message.Status.IN_DOUBT
    assert Message.objects.get(pk=live.pk).status == Message.Status.SENDING


# --- the ticker's view: due messages handed out once -------------------------------------------------


def test_redrive_hands_out_due_messages_once(tenant):
    env = tenant.environment
    now = timezone.now()

    def queued(at: datetime | None) -> int:
        return Message.objects.create(
            environment=env, step_id="s", channel="sms", recipient="+1555", body="x", next_attempt_at=at
        ).pk

    due = [queued(now - timedelta(seconds=s)) for s in (1, 5)]
    later = queued(now + timedelta(seconds=5))  # not yet
    queued(None)  # a fresh message: its task is on the way

    assert messages_redrive(now=now) == due
    assert messages_redrive(now=now) == []
    assert messages_redrive(now=now + timedelta(seconds=10)) == [later]  # its time came
    assert set(Message.objects.filter(pk__in=due).values_list("next_attempt_at", flat=True)) == {None}


@pytest.mark.django_db(transaction=True)
def test_concurrent_redrives_never_hand_out_a_message_twice(tenant):
    if connection.vendor != "postgresql":
        # The test database is in-memory SQLite (shared cache: concurrent writers fail at once
        # instead of waiting); on a SQLite file, writers are serialized and each UPDATE … RETURNING
        # is atomic anyway.
        pytest.skip("concurrent writers need PostgreSQL here")
    env = tenant.environment
    now = timezone.now()
    Message.objects.bulk_create(
        Message(
            environment=env,
            step_id=f"s{i}",
            channel="sms",
            recipient="+1555",
            body="x",
            next_attempt_at=now - timedelta(seconds=1),
        )
        for i in range(60)
    )
    results: list[list[int]] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(4)

    def ticker() -> None:
        try:
            barrier.wait(timeout=10)
            for _ in range(3):
                results.append(messages_redrive(now=now, limit=10))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=ticker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)

    assert not errors
    handed = [pk for batch in results for pk in batch]
    assert len(handed) == len(set(handed)) == 60


# --- callbacks settle it ------------------------------------------------------------------------------


def in_doubt_message(env: Any, integration: Integration) -> Message:
    message = Message.objects.create(
        environment=env,
        step_id="s",
        channel="sms",
        recipient="+15557654321",
        body="x",
        status=Message.Status.IN_DOUBT,
        integration=integration,
        provider=integration.provider,
        in_doubt_count=1,
    )
    return message


def test_a_delivered_callback_moves_an_in_doubt_message_forward(tenant):
    env = tenant.environment
    twilio = IntegrationFactory(
        environment=env,
        channel="sms",
        provider="twilio",
        credentials={"account_sid": "AC123", "auth_token": "tw-token"},
        settings={"from_number": "+15550001111"},
    )
    message = in_doubt_message(env, twilio)
    # The send timed out, so Twilio's SID was never recorded: the callback URL's message id matches it.
    path = reverse("delivery-webhook-twilio-status", kwargs={"key": twilio.webhook_key})
    path = f"{path}?clarion_message_id={message.pk}"
    form = {"AccountSid": "AC123", "MessageSid": "SM9", "MessageStatus": "delivered", "To": "+15557654321"}
    signature = RequestValidator("tw-token").compute_signature(f"http://testserver{path}", form)

    assert Client().post(path, data=form, HTTP_X_TWILIO_SIGNATURE=signature).status_code == 204

    message.refresh_from_db()
    assert message.status == Message.Status.DELIVERED and message.provider_message_id == "SM9"
    assert message.delivered_at is not None


@pytest.mark.parametrize("status", ["sent", "delivered", "bounced", "failed", "opened"])
def test_any_provider_status_moves_in_doubt_on(tenant, status):
    env = tenant.environment
    integration = IntegrationFactory(environment=env, channel="email", provider="postmark")
    message = in_doubt_message(env, integration)
    assert can_move("in_doubt", status)

    message_events_record(
        integration=integration,
        events=[
            StatusEvent(
                provider="postmark",
                provider_message_id="pm-1",
                event_type=status,
                status=status,
                dedupe_key=f"pm-1:{status}",
                payload={},
                clarion_message_id=str(message.pk),
            )
        ],
    )

    message.refresh_from_db()
    assert message.status == status and message.provider_message_id == "pm-1"


def test_a_late_success_from_a_worker_presumed_dead_settles_the_message(tenant, fake_server, monkeypatch):
    """A slow call outlives the heartbeat; the redrive puts it in doubt; then the answer arrives."""
    from apps.delivery.services import sending as services

    env = tenant.environment
    server = fake_server([Reply(body={"id": "late-ok"})])
    sms_integration(env, server)
    message = Message.objects.create(environment=env, step_id="s", channel="sms", recipient="+15550001", body="x")
    real_send = services._send

    def slow_send(provider: Any, msg: Message, integration: Any) -> Any:
        result = real_send(provider, msg, integration)
        long_ago = timezone.now() - timedelta(minutes=5)
        Message.objects.filter(pk=msg.pk).update(updated_at=long_ago)  # the heartbeat went stale meanwhile
        messages_redrive(now=timezone.now())
        return result

    monkeypatch.setattr(services, "_send", slow_send)
    deliver_messages([message.pk])

    message.refresh_from_db()
    assert message.status == Message.Status.SENT and message.provider_message_id == "late-ok"
    assert len(server.requests) == 1


# --- SMTP: in doubt only once the message itself was handed over ---------------------------------------


def smtp_server(handler: Any) -> tuple[Any, int]:
    from aiosmtpd.controller import Controller

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    controller = Controller(handler, hostname="127.0.0.1", port=port)
    controller.start()
    return controller, port


def test_smtp_timeout_after_data_is_in_doubt_and_a_refused_connection_is_not(tenant):
    import asyncio

    class SlowAfterData:
        async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
            await asyncio.sleep(1.0)  # the message is in; the answer comes too late
            return "250 OK"

    controller, port = smtp_server(SlowAfterData())
    try:
        IntegrationFactory(
            environment=tenant.environment,
            provider="smtp",
            credentials={"host": "127.0.0.1", "port": port},
            settings={"from_email": "hi@acme.test", "timeout": CLIENT_TIMEOUT},
        )
        slow = message_send_now(
            environment_id=tenant.environment.pk, channel="email", recipient="ada@example.com", subject="Hi", body="x"
        )
    finally:
        controller.stop()
    assert slow.status == Message.Status.IN_DOUBT, slow.error
    assert slow.attempts_log.get().error_kind == ErrorKind.TIMEOUT

    Integration.objects.update(credentials={"host": "127.0.0.1", "port": port})  # the server is gone now
    refused = message_send_now(
        environment_id=tenant.environment.pk, channel="email", recipient="bob@example.com", subject="Hi", body="x"
    )
    assert refused.status == Message.Status.FAILED and refused.in_doubt_count == 0
    assert set(refused.attempts_log.values_list("status", "error_kind")) == {("failed", "connection")}


# --- the message id on every provider's request ----------------------------------------------------------


def email_via(tenant: Any, fake_server: Any, provider: str, credentials: dict[str, Any], reply: Reply) -> Any:
    server = fake_server([reply])
    IntegrationFactory(
        environment=tenant.environment,
        provider=provider,
        credentials={**credentials, "api_url": f"{server.url}/"},
        settings={"from_email": "hello@acme.test"},
    )
    message = message_send_now(
        environment_id=tenant.environment.pk, channel="email", recipient="ada@example.com", subject="Hi", body="x"
    )
    assert message.status == "sent", message.error
    (request,) = server.requests
    return message, request


def test_resend_gets_its_idempotency_key_and_metadata(tenant, fake_server):
    message, request = email_via(tenant, fake_server, "resend", {"api_key": "re_key"}, Reply(body={"id": "r-1"}))
    assert request.headers["Idempotency-Key"] == idempotency_key(message)
    headers = request.json()["headers"]
    assert headers["X-Clarion-Message-Id"] == str(message.pk)
    assert json.loads(headers["X-Metadata"]) == {"clarion_message_id": str(message.pk)}


def test_brevo_gets_a_uuid_idempotency_key_stable_across_resends(tenant, fake_server):
    message, request = email_via(
        tenant, fake_server, "brevo", {"api_key": "xkeysib"}, Reply(status=201, body={"messageId": "<b@x>"})
    )
    headers = request.json()["headers"]
    key = headers["idempotencyKey"]
    assert uuid.UUID(key).version == 4
    from apps.delivery.providers.email import brevo_idempotency_key

    assert brevo_idempotency_key(message) == key  # derived from the message: the same on a resend
    assert str(message.pk) in headers["X-Mailin-custom"] and headers["X-Clarion-Message-Id"] == str(message.pk)


@pytest.mark.parametrize(
    ("provider", "credentials", "reply", "carries_id"),
    [
        (
            "postmark",
            {"server_token": "pm"},
            Reply(body={"MessageID": "p-1", "ErrorCode": 0, "Message": "OK", "To": "ada@example.com"}),
            lambda body, pk: body["Metadata"] == {"clarion_message_id": str(pk)},
        ),
        (
            "sendgrid",
            {"api_key": "SG.k"},
            Reply(status=202, body=b""),
            lambda body, pk: body["custom_args"] == {"clarion_message_id": str(pk)},
        ),
        (
            "mailgun",
            {"api_key": "mg", "sender_domain": "acme.test"},
            Reply(body={"id": "<m@acme.test>", "message": "Queued"}),
            lambda body, pk: f"v:clarion_message_id={pk}" in body,
        ),
        (
            "mailersend",  # its Anymail backend refuses metadata: none is set, so it sends
            {"api_token": "ms"},
            Reply(status=202, body={}, headers={"X-Message-Id": "ms-1"}),
            lambda body, pk: (
                "metadata" not in body and {"name": "X-Clarion-Message-Id", "value": str(pk)} in body["headers"]
            ),
        ),
    ],
    ids=["postmark", "sendgrid", "mailgun", "mailersend"],
)
def test_esps_without_idempotency_carry_the_message_id_as_metadata(
    tenant, fake_server, provider, credentials, reply, carries_id
):
    message, request = email_via(tenant, fake_server, provider, credentials, reply)
    body = request.json() if provider != "mailgun" else unquote_plus(request.body.decode())
    assert carries_id(body, message.pk)
    assert "Idempotency-Key" not in request.headers  # these APIs have none: Clarion claims none


def test_amazon_ses_is_called_once_per_attempt(tenant, fake_server):
    """boto3 would retry a failed SendEmail by itself (SES has no idempotency key): one call only."""
    server = fake_server([Reply(status=500, body={"message": "internal"})])
    IntegrationFactory(
        environment=tenant.environment,
        provider="ses",
        retries=0,
        credentials={
            "access_key_id": "AKIAEXAMPLE",
            "secret_access_key": "secret",
            "region": "eu-west-1",
            "client_params": {"endpoint_url": server.url},
        },
        settings={"from_email": "hello@acme.test"},
    )
    message = message_send_now(
        environment_id=tenant.environment.pk, channel="email", recipient="ada@example.com", subject="Hi", body="x"
    )
    assert message.status == "failed" and len(server.requests) == 1


# --- settings, categories, counts, docs ------------------------------------------------------------------


def test_an_integration_timeout_above_the_heartbeat_cap_is_a_400(api):
    too_long = max_call_seconds() + 1
    response = api.post(
        "/api/v1/integrations",
        {
            "channel": "sms",
            "provider": "http",
            "credentials": {"url": "https://gw.test"},
            "settings": {"timeout": too_long},
        },
        format="json",
    )
    assert response.status_code == 400
    assert "settings" in response.json()["error"]["details"]
    ok = api.post(
        "/api/v1/integrations",
        {
            "channel": "sms",
            "provider": "http",
            "credentials": {"url": "https://gw.test"},
            "settings": {"timeout": 5, "deduplicates": True},
        },
        format="json",
    )
    assert ok.status_code == 201, ok.content


def test_category_in_doubt_policy_over_the_api(api):
    created = api.put("/api/v1/categories/billing", {"name": "Billing", "in_doubt_policy": "resend"}, format="json")
    assert created.status_code == 201 and created.json()["in_doubt_policy"] == "resend"
    default = api.put("/api/v1/categories/news", {"name": "News"}, format="json")
    assert default.json()["in_doubt_policy"] == "auto"
    bad = api.put("/api/v1/categories/news", {"name": "News", "in_doubt_policy": "maybe"}, format="json")
    assert bad.status_code == 400 and "in_doubt_policy" in bad.json()["error"]["details"]


def test_status_counts_include_in_doubt(tenant, other_tenant):
    env = tenant.environment
    for status in ("in_doubt", "in_doubt", "sent"):
        Message.objects.create(environment=env, step_id="s", channel="sms", status=status)
    Message.objects.create(environment=other_tenant.environment, step_id="s", channel="sms", status="in_doubt")

    counts = message_status_counts(environment_id=env.pk)

    assert counts["in_doubt"] == 2 and counts["sent"] == 1 and counts["queued"] == 0
    assert set(counts) == set(Message.Status.values)


def test_openapi_message_status_enum_includes_in_doubt(api):
    schema = api.get("/api/schema/?format=json").json()
    assert "in_doubt" in schema["components"]["schemas"]["MessageStatusEnum"]["enum"]


def test_docs_list_every_providers_idempotency_key_and_metadata_as_the_code_declares():
    """docs/providers.md claims exactly what each provider class declares."""
    _load_builtin()
    text = (Path(__file__).resolve().parents[2] / "docs" / "providers.md").read_text()
    table = text.split("| provider | channel | idempotency key | deduplicates | message id as metadata |")[1]
    rows = {}
    for line in table.splitlines()[2:]:
        if not line.startswith("|"):
            break
        name, channel, key, dedupes, metadata = (cell.strip() for cell in line.strip("|").split("|"))
        rows[(channel, name.strip("`"))] = (key, dedupes, metadata)
    assert set(rows) == set(_REGISTRY)
    for (channel, name), provider in _REGISTRY.items():
        overridden = type(provider).deduplicates_for is not type(provider).__mro__[-2].deduplicates_for
        if provider.deduplicates:
            hours = provider.dedupe_window / 3600 if provider.dedupe_window else None
            window = f"{hours:g} h" if hours and hours >= 1 else f"{provider.dedupe_window / 60:g} min"
            expected = f"yes ({window})"
        else:
            expected = "if `deduplicates: true`" if overridden else "no"
        assert rows[(channel, name)] == (
            provider.idempotency_field or "—",
            expected,
            provider.metadata_field or "—",
        ), name


def test_deliver_attempt_statuses_are_the_three_known(tenant):
    assert set(DeliveryAttempt.Status.values) == {"success", "failed", "in_doubt"}
    assert re.fullmatch(r"clarion-message-\d+-\d+", idempotency_key(Message(pk=7, created_at=timezone.now())))


def test_message_category_from_its_run_its_digest_or_its_workflow(
    tenant, fake_server, django_capture_on_commit_callbacks
):
    from apps.delivery.selectors import message_category

    env = tenant.environment
    category = sms_flow(env, critical=True)
    sms_integration(env, fake_server())
    from_run = trigger(env, django_capture_on_commit_callbacks)

    def bare(**data: Any) -> Message:
        return Message.objects.create(environment=env, step_id="s", channel="sms", body="x", data=data)

    assert message_category(message=from_run) == category
    assert message_category(message=bare(category="alerts")) == category  # a category digest
    assert message_category(message=bare(workflow="login-code", resend_of=from_run.pk)) == category
    assert message_category(message=bare(test=True)) is None
