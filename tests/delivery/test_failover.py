"""Retries, failover, circuit breaker and rate limit, against real HTTP fake providers on loopback."""

from __future__ import annotations

import itertools
import threading
from datetime import timedelta
from typing import Any

import pytest
from django.db import connection
from django.utils import timezone

from apps.delivery.models import Integration, Message, Suppression
from apps.delivery.providers.base import idempotency_key
from apps.delivery.selectors import reachable_channels
from apps.delivery.services import message_deliver, messages_requeue_stalled
from apps.delivery.tasks import deliver_messages
from apps.events.services import TriggerRequest, event_trigger
from tests.delivery.conftest import FakeServer, Reply
from tests.factories import IntegrationFactory, SubscriberFactory
from tests.workflows.conftest import make_workflow, published_template

pytestmark = pytest.mark.django_db


def sms_integration(env: Any, server: FakeServer, *, priority: int = 0, **kwargs: Any) -> Integration:
    settings = {"from": "+15550000000", "timeout": kwargs.pop("timeout", 2)}
    return IntegrationFactory(
        environment=env,
        channel="sms",
        provider="http",
        priority=priority,
        credentials={"url": f"{server.url}/send", "auth_token": f"token-{priority}"},
        settings=settings,
        **kwargs,
    )


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The waits delivery asks for, recorded instead of slept: backoff is asserted as counted work."""
    asked: list[float] = []
    monkeypatch.setattr("apps.delivery.services.sending.time.sleep", asked.append)
    return asked


class SlotRecorder:
    """Wraps the rate limiter: after each reservation, the slot it handed out (from the database)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        from apps.delivery.services import sending

        self.slots: list[Any] = []
        self._lock = threading.Lock()
        original = sending._rate_limit_wait

        def recording(integration: Integration, cfg: Any) -> Any:
            result = original(integration, cfg)
            if result[0] is None:  # a slot was reserved: rate_next_at is now that slot + one interval
                next_at = Integration.objects.filter(pk=integration.pk).values_list("rate_next_at", flat=True).get()
                with self._lock:
                    self.slots.append(next_at)
            return result

        monkeypatch.setattr(sending, "_rate_limit_wait", recording)

    def spacings(self) -> list[timedelta]:
        ordered = sorted(self.slots)
        return [b - a for a, b in itertools.pairwise(ordered)]


@pytest.fixture
def sms_flow(tenant: Any) -> Any:
    env = tenant.environment
    published_template(env, "code", "sms", body_en="Your code is {{ payload.code }}")
    make_workflow(env, "login-code", [{"id": "text", "type": "sms", "template": "code"}])
    SubscriberFactory(environment=env, subscriber_id="u1", phone="+15551234567")
    return env


def trigger_sms(env: Any, capture: Any, code: str = "1234") -> Message:
    with capture(execute=True):
        event_trigger(environment=env, request=TriggerRequest("login-code", ["u1"], {"code": code}))
    return Message.objects.filter(channel="sms").latest("id")


@pytest.mark.parametrize(
    "failure",
    [
        Reply(status=500, body={"error": "boom"}),
        Reply(status=429, body={"error": "slow down"}, headers={"Retry-After": "0"}),
        Reply(status=503, body={"error": "maintenance"}),
    ],
    ids=["500", "429", "503"],
)
def test_first_provider_fails_second_delivers_once(sms_flow, fake_server, failure, django_capture_on_commit_callbacks):
    """An answer that says "not sent" fails over; a timeout is in doubt instead (test_in_doubt.py)."""
    broken = fake_server([failure])
    healthy = fake_server([Reply(body={"id": "gw-42"})])
    first = sms_integration(sms_flow, broken, priority=0, retries=0, timeout=0.5)
    second = sms_integration(sms_flow, healthy, priority=1)

    message = trigger_sms(sms_flow, django_capture_on_commit_callbacks)

    assert message.status == Message.Status.SENT
    assert message.provider == "http" and message.integration_id == second.pk
    assert message.provider_message_id == "gw-42"
    assert len(broken.requests) == 1
    assert len(healthy.requests) == 1  # delivered once, through the second provider
    sent = healthy.requests[0]
    assert sent.json() == {
        "to": "+15551234567",
        "from": "+15550000000",
        "text": "Your code is 1234",
        "message_id": str(message.pk),
    }
    assert sent.headers["Authorization"] == "Bearer token-1"
    assert sent.headers["Idempotency-Key"] == idempotency_key(message)
    attempts = list(message.attempts_log.order_by("id"))
    assert [(a.status, a.integration_id) for a in attempts] == [("failed", first.pk), ("success", second.pk)]
    failed = attempts[0]
    assert failed.retryable
    assert failed.response_code == failure.status
    assert failed.error_kind == ("rate_limited" if failure.status == 429 else "server_error")
    assert attempts[1].response_code == 200 and attempts[1].error == ""


def test_retryable_error_is_retried_with_backoff_before_failover(
    sms_flow, fake_server, settings, sleeps, django_capture_on_commit_callbacks
):
    settings.CLARION_DELIVERY = {"BACKOFF_BASE": 0.1, "BACKOFF_MAX": 1, "INLINE_WAIT_MAX": 1}
    flaky = fake_server([Reply(status=500), Reply(status=502), Reply(status=500)])
    healthy = fake_server()
    sms_integration(sms_flow, flaky, priority=0, retries=2)
    sms_integration(sms_flow, healthy, priority=1)

    message = trigger_sms(sms_flow, django_capture_on_commit_callbacks)

    assert message.status == Message.Status.SENT
    assert len(flaky.requests) == 3 and len(healthy.requests) == 1
    # two waits between the three tries: 0.1 s then 0.2 s ceilings, each with jitter in [ceiling/2, ceiling]
    assert len(sleeps) == 2, sleeps
    assert 0.05 <= sleeps[0] <= 0.1 and 0.1 <= sleeps[1] <= 0.2, sleeps


def test_retry_recovers_on_the_same_provider(sms_flow, fake_server, django_capture_on_commit_callbacks):
    flaky = fake_server([Reply(status=503), Reply(body={"id": "second-try"})])
    backup = fake_server()
    sms_integration(sms_flow, flaky, priority=0, retries=2)
    sms_integration(sms_flow, backup, priority=1)

    message = trigger_sms(sms_flow, django_capture_on_commit_callbacks)

    assert message.status == Message.Status.SENT and message.provider_message_id == "second-try"
    assert len(flaky.requests) == 2 and backup.requests == []


def test_retry_after_is_honoured(sms_flow, fake_server, settings, sleeps, django_capture_on_commit_callbacks):
    settings.CLARION_DELIVERY = {"BACKOFF_BASE": 0.01, "INLINE_WAIT_MAX": 2}
    limited = fake_server([Reply(status=429, headers={"Retry-After": "1"}), Reply(body={"id": "after-wait"})])
    sms_integration(sms_flow, limited, retries=1)

    message = trigger_sms(sms_flow, django_capture_on_commit_callbacks)

    assert message.status == Message.Status.SENT
    assert message.attempts_log.count() == 2
    assert len(sleeps) == 1 and sleeps[0] >= 1.0, sleeps  # never sooner than Retry-After: 1


def test_long_retry_after_fails_over_instead_of_waiting(
    sms_flow, fake_server, settings, sleeps, django_capture_on_commit_callbacks
):
    settings.CLARION_DELIVERY = {"RETRY_AFTER_MAX": 60}
    limited = fake_server([Reply(status=429, headers={"Retry-After": "3600"})])
    healthy = fake_server()
    sms_integration(sms_flow, limited, priority=0, retries=5)
    sms_integration(sms_flow, healthy, priority=1)

    message = trigger_sms(sms_flow, django_capture_on_commit_callbacks)

    assert message.status == Message.Status.SENT
    assert len(limited.requests) == 1 and len(healthy.requests) == 1
    assert sleeps == []  # failed over at once, without waiting for the hour


def test_long_backoff_is_deferred_to_the_sweeper_and_resumes(
    sms_flow, fake_server, settings, django_capture_on_commit_callbacks
):
    settings.CLARION_DELIVERY = {"INLINE_WAIT_MAX": 0.5}
    flaky = fake_server([Reply(status=429, headers={"Retry-After": "30"}), Reply(body={"id": "later"})])
    sms_integration(sms_flow, flaky, retries=1)

    message = trigger_sms(sms_flow, django_capture_on_commit_callbacks)

    message.refresh_from_db()
    assert message.status == Message.Status.QUEUED
    assert timedelta(seconds=29) <= message.next_attempt_at - timezone.now() <= timedelta(seconds=31)
    assert "429" in message.error
    # Not due yet: neither a task nor the sweeper sends it.
    assert message_deliver(message_id=message.pk) is None
    assert messages_requeue_stalled(stalled_before=timezone.now()) == []
    # Its time comes: the sweeper picks it up and the retry goes to the same provider.
    Message.objects.filter(pk=message.pk).update(next_attempt_at=timezone.now() - timedelta(seconds=1))
    assert messages_requeue_stalled(stalled_before=timezone.now() - timedelta(minutes=2)) == [message.pk]
    deliver_messages([message.pk])
    message.refresh_from_db()
    assert message.status == Message.Status.SENT and message.provider_message_id == "later"
    assert list(message.attempts_log.values_list("status", flat=True)) == ["failed", "success"]


def test_retries_exhausted_everywhere_marks_failed(sms_flow, fake_server, django_capture_on_commit_callbacks):
    first = fake_server([Reply(status=500)])
    second = fake_server([Reply(status=502)])
    sms_integration(sms_flow, first, priority=0, retries=1)
    sms_integration(sms_flow, second, priority=1, retries=1)

    message = trigger_sms(sms_flow, django_capture_on_commit_callbacks)

    assert message.status == Message.Status.FAILED
    assert "502" in message.error
    assert len(first.requests) == 2 and len(second.requests) == 2
    assert message.attempts_log.count() == 4


def test_terminal_error_stops_without_failover(sms_flow, fake_server, django_capture_on_commit_callbacks):
    rejecting = fake_server([Reply(status=400, body={"error": "message body too long"})])
    backup = fake_server()
    sms_integration(sms_flow, rejecting, priority=0, retries=3)
    sms_integration(sms_flow, backup, priority=1)

    message = trigger_sms(sms_flow, django_capture_on_commit_callbacks)

    assert message.status == Message.Status.FAILED
    assert "message body too long" in message.error
    assert len(rejecting.requests) == 1 and backup.requests == []
    attempt = message.attempts_log.get()
    assert attempt.error_kind == "rejected" and not attempt.retryable and attempt.response_code == 400


def test_auth_error_is_terminal(sms_flow, fake_server, django_capture_on_commit_callbacks):
    unauthorized = fake_server([Reply(status=401, body={"error": "bad token"})])
    backup = fake_server()
    sms_integration(sms_flow, unauthorized, priority=0)
    sms_integration(sms_flow, backup, priority=1)

    message = trigger_sms(sms_flow, django_capture_on_commit_callbacks)

    assert message.status == Message.Status.FAILED and "bad token" in message.error
    assert backup.requests == []
    assert message.attempts_log.get().error_kind == "auth"


def test_no_integration_for_channel_fails_with_reason(sms_flow, django_capture_on_commit_callbacks):
    message = trigger_sms(sms_flow, django_capture_on_commit_callbacks)
    assert message.status == Message.Status.FAILED
    assert message.error == "no active sms integration"


def test_inactive_integration_is_not_used(sms_flow, fake_server, django_capture_on_commit_callbacks):
    off = fake_server()
    on = fake_server()
    sms_integration(sms_flow, off, priority=0, active=False)
    sms_integration(sms_flow, on, priority=1)
    trigger_sms(sms_flow, django_capture_on_commit_callbacks)
    assert off.requests == [] and len(on.requests) == 1


# --- circuit breaker -------------------------------------------------------------------------------


def test_circuit_opens_after_repeated_failures_and_skips_the_provider(
    sms_flow, fake_server, settings, django_capture_on_commit_callbacks
):
    settings.CLARION_DELIVERY = {"CIRCUIT_THRESHOLD": 2, "CIRCUIT_COOLDOWN": 60, "BACKOFF_BASE": 0.001}
    down = fake_server([Reply(status=503)])
    healthy = fake_server()
    first = sms_integration(sms_flow, down, priority=0, retries=0)
    sms_integration(sms_flow, healthy, priority=1)

    for code in ("1", "2"):
        assert trigger_sms(sms_flow, django_capture_on_commit_callbacks, code).status == Message.Status.SENT
    first.refresh_from_db()
    assert first.circuit_failures == 2
    assert first.circuit_open_until > timezone.now() + timedelta(seconds=50)

    third = trigger_sms(sms_flow, django_capture_on_commit_callbacks, "3")
    assert third.status == Message.Status.SENT
    assert len(down.requests) == 2  # skipped while open
    assert len(healthy.requests) == 3
    assert list(third.attempts_log.values_list("provider", "status")) == [("http", "success")]


def test_circuit_half_open_probe_closes_it_on_success(
    sms_flow, fake_server, settings, django_capture_on_commit_callbacks
):
    settings.CLARION_DELIVERY = {"CIRCUIT_THRESHOLD": 1, "CIRCUIT_COOLDOWN": 60}
    recovering = fake_server([Reply(status=500), Reply(body={"id": "probe-ok"})])
    backup = fake_server()
    first = sms_integration(sms_flow, recovering, priority=0, retries=0)
    sms_integration(sms_flow, backup, priority=1)

    trigger_sms(sms_flow, django_capture_on_commit_callbacks, "1")
    first.refresh_from_db()
    assert first.circuit_open_until is not None
    # The cooldown passes: the next message probes the first provider again.
    Integration.objects.filter(pk=first.pk).update(circuit_open_until=timezone.now() - timedelta(seconds=1))
    message = trigger_sms(sms_flow, django_capture_on_commit_callbacks, "2")

    assert message.provider_message_id == "probe-ok" and message.integration_id == first.pk
    first.refresh_from_db()
    assert first.circuit_failures == 0 and first.circuit_open_until is None


def test_when_every_circuit_is_open_the_message_waits_for_the_first_to_reopen(
    sms_flow, fake_server, settings, django_capture_on_commit_callbacks
):
    server = fake_server()
    only = sms_integration(sms_flow, server)
    reopen = timezone.now() + timedelta(seconds=45)
    Integration.objects.filter(pk=only.pk).update(circuit_failures=9, circuit_open_until=reopen)

    message = trigger_sms(sms_flow, django_capture_on_commit_callbacks)

    assert message.status == Message.Status.QUEUED and message.next_attempt_at == reopen
    assert server.requests == [] and message.attempts_log.count() == 0


# --- rate limit -------------------------------------------------------------------------------------


def test_rate_limit_spaces_sends_of_one_integration(
    sms_flow, fake_server, monkeypatch, django_capture_on_commit_callbacks
):
    recorder = SlotRecorder(monkeypatch)
    server = fake_server()
    sms_integration(sms_flow, server, rate_limit=5)  # one every 200 ms
    for code in range(5):
        trigger_sms(sms_flow, django_capture_on_commit_callbacks, str(code))

    assert len(server.requests) == 5
    # Each send took its own slot, at least one interval after the previous one (the slots are the
    # limiter's own bookkeeping, not arrival times, so a busy machine cannot blur them).
    assert len(recorder.slots) == 5
    assert min(recorder.spacings()) >= timedelta(seconds=0.2), recorder.spacings()


def test_rate_limit_defers_when_the_next_slot_is_far(
    sms_flow, fake_server, settings, django_capture_on_commit_callbacks
):
    settings.CLARION_DELIVERY = {"RATE_WAIT_MAX": 0.5}
    server = fake_server()
    integration = sms_integration(sms_flow, server, rate_limit=1)
    later = timezone.now() + timedelta(seconds=20)
    Integration.objects.filter(pk=integration.pk).update(rate_next_at=later)  # another worker holds the slots

    message = trigger_sms(sms_flow, django_capture_on_commit_callbacks)

    assert message.status == Message.Status.QUEUED and message.next_attempt_at == later
    assert "rate limit" in message.error and server.requests == []


@pytest.mark.django_db(transaction=True)
def test_rate_limit_holds_across_concurrent_workers(tenant, fake_server):
    """Two workers (threads with their own database connections) share one integration's rate."""
    if connection.vendor == "sqlite" and connection.is_in_memory_db():
        # The test database is shared-cache in-memory SQLite: a second connection's write fails at
        # once with "database table is locked" instead of waiting. Runs under make test-services.
        pytest.skip("concurrent writers need PostgreSQL here")
    env = tenant.environment
    server = fake_server()
    sms_integration(env, server, rate_limit=10)  # one every 100 ms
    ids = [
        Message.objects.create(environment=env, step_id="s", channel="sms", recipient=f"+1555000{i:04d}", body="x").pk
        for i in range(8)
    ]
    errors: list[BaseException] = []

    def worker(chunk: list[int]) -> None:
        try:
            deliver_messages(chunk)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=worker, args=(ids[i::2],)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert not errors
    assert Message.objects.filter(status="sent").count() == 8
    # 8 sends on slots 100 ms apart span at least 7 intervals (10 % allowed for when the fake
    # records an arrival); two workers sharing a slot would make it at most 6. The per-send spacing
    # is asserted on the limiter's own slots in test_rate_limit_spaces_sends_of_one_integration.
    arrivals = sorted(r.received_at for r in server.requests)
    assert arrivals[-1] - arrivals[0] >= 7 * 0.1 * 0.9, arrivals


# --- never twice -------------------------------------------------------------------------------------


def test_task_running_twice_sends_once(sms_flow, fake_server, django_capture_on_commit_callbacks):
    server = fake_server()
    sms_integration(sms_flow, server)
    message = trigger_sms(sms_flow, django_capture_on_commit_callbacks)

    deliver_messages([message.pk])
    deliver_messages([message.pk, message.pk])

    assert len(server.requests) == 1
    assert message.attempts_log.count() == 1


@pytest.mark.django_db(transaction=True)
def test_concurrent_tasks_for_one_message_send_it_once(tenant, fake_server):
    if connection.vendor == "sqlite" and connection.is_in_memory_db():
        # The test database is shared-cache in-memory SQLite: a second connection's write fails at
        # once with "database table is locked" instead of waiting. Runs under make test-services.
        pytest.skip("concurrent writers need PostgreSQL here")
    env = tenant.environment
    server = fake_server([Reply(delay=0.3)])  # a slow provider widens the race window
    sms_integration(env, server)
    message = Message.objects.create(environment=env, step_id="s", channel="sms", recipient="+15550001111", body="x")
    barrier = threading.Barrier(4)

    def worker() -> None:
        barrier.wait()
        try:
            deliver_messages([message.pk])
        finally:
            connection.close()

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert len(server.requests) == 1
    assert Message.objects.get(pk=message.pk).status == "sent"


# --- invalid addresses ---------------------------------------------------------------------------------


def test_suppressed_phone_is_not_reachable_and_not_sent(sms_flow, fake_server, django_capture_on_commit_callbacks):
    server = fake_server()
    sms_integration(sms_flow, server)
    subscriber = sms_flow.subscribers.get(subscriber_id="u1")
    Suppression.objects.create(environment=sms_flow, channel="sms", address="+15551234567", reason="invalid_address")

    assert "sms" not in reachable_channels(subscribers=[subscriber])[subscriber.pk]
    with django_capture_on_commit_callbacks(execute=True):
        event_trigger(environment=sms_flow, request=TriggerRequest("login-code", ["u1"], {"code": "1"}))
    assert not Message.objects.filter(channel="sms").exists()  # the step skipped: no_address
    assert server.requests == []

    # A message queued before the address went bad is failed, not sent.
    queued = Message.objects.create(
        environment=sms_flow, step_id="s", channel="sms", recipient="+15551234567", body="x"
    )
    deliver_messages([queued.pk])
    queued.refresh_from_db()
    assert queued.status == "failed" and "inactive" in queued.error and server.requests == []


def test_the_sweeper_redrives_a_due_retry(tenant, fake_server):
    from apps.workflows.engine import sweep

    env = tenant.environment
    server = fake_server([Reply(body={"id": "swept"})])
    sms_integration(env, server)
    due = Message.objects.create(
        environment=env, step_id="s", channel="sms", recipient="+15550001", body="x",
        next_attempt_at=timezone.now() - timedelta(seconds=1),
    )  # fmt: skip
    not_yet = Message.objects.create(
        environment=env, step_id="s", channel="sms", recipient="+15550002", body="x",
        next_attempt_at=timezone.now() + timedelta(minutes=5),
    )  # fmt: skip

    assert sweep()["messages"] == 1

    due.refresh_from_db()
    not_yet.refresh_from_db()
    assert due.status == "sent" and due.provider_message_id == "swept"
    assert not_yet.status == "queued" and len(server.requests) == 1


def test_a_message_too_old_to_matter_fails_instead_of_sending(tenant, fake_server, settings):
    settings.CLARION_DELIVERY = {"MESSAGE_TTL": 3600}
    env = tenant.environment
    server = fake_server()
    sms_integration(env, server)
    stale = Message.objects.create(environment=env, step_id="s", channel="sms", recipient="+15550001", body="x")
    Message.objects.filter(pk=stale.pk).update(created_at=timezone.now() - timedelta(hours=2))

    deliver_messages([stale.pk])

    stale.refresh_from_db()
    assert stale.status == "failed" and stale.error.startswith("expired")
    assert server.requests == []


def test_hot_path_query_count(tenant, fake_server, django_assert_num_queries):
    """claim, load, suppression check, integrations, write-ahead of the call, attempt, mark sent
    (with its analytics count in the same statement on PostgreSQL; on SQLite one INSERT more, with
    the UPDATE in a transaction: a savepoint and its release here), early callbacks."""
    from django.db import connection

    env = tenant.environment
    server = fake_server([Reply(body={"id": "gw-1"})])
    sms_integration(env, server)
    message = Message.objects.create(environment=env, step_id="s", channel="sms", recipient="+15550001", body="x")
    with django_assert_num_queries(8 if connection.vendor == "postgresql" else 11):
        message_deliver(message_id=message.pk)
    message.refresh_from_db()
    assert message.status == "sent" and message.attempts == 1


def test_long_retry_after_on_the_only_provider_defers_rather_than_fails(
    sms_flow, fake_server, settings, django_capture_on_commit_callbacks
):
    settings.CLARION_DELIVERY = {"RETRY_AFTER_MAX": 60}
    limited = fake_server([Reply(status=429, headers={"Retry-After": "600"})])
    sms_integration(sms_flow, limited, retries=2)

    message = trigger_sms(sms_flow, django_capture_on_commit_callbacks)

    message.refresh_from_db()
    assert message.status == "queued" and len(limited.requests) == 1
    assert timedelta(seconds=595) <= message.next_attempt_at - timezone.now() <= timedelta(seconds=601)


def test_a_task_past_its_budget_hands_the_rest_to_a_new_task(tenant, fake_server, settings):
    from unittest import mock

    settings.CLARION_DELIVERY = {"TASK_BUDGET": 0}
    env = tenant.environment
    server = fake_server()
    sms_integration(env, server)
    ids = [
        Message.objects.create(environment=env, step_id="s", channel="sms", recipient=f"+1555{i}", body="x").pk
        for i in range(3)
    ]
    with mock.patch("apps.core.tasks.enqueue") as enqueue:
        deliver_messages(ids)
    enqueue.assert_called_once_with("apps.delivery.tasks.deliver_messages", ids[1:])
    assert len(server.requests) == 1
    assert list(Message.objects.order_by("pk").values_list("status", flat=True)) == ["sent", "queued", "queued"]


def test_a_send_taken_back_by_the_sweeper_during_a_wait_is_not_continued(tenant, fake_server, monkeypatch):
    from apps.delivery.services import sending as services

    env = tenant.environment
    server = fake_server([Reply(status=500), Reply(body={"id": "would-be-duplicate"})])
    sms_integration(env, server, retries=2)
    message = Message.objects.create(environment=env, step_id="s", channel="sms", recipient="+15550001", body="x")

    def sleep_while_the_sweeper_requeues(seconds: float) -> None:
        Message.objects.filter(pk=message.pk).update(status=Message.Status.QUEUED)

    monkeypatch.setattr(services.time, "sleep", sleep_while_the_sweeper_requeues)
    message_deliver(message_id=message.pk)

    assert len(server.requests) == 1  # the worker stopped after its wait
    message.refresh_from_db()
    assert message.status == "queued"
