"""Engagement counts (issue #16): every transition counted exactly once, in its own transaction."""

from __future__ import annotations

from collections import Counter as Sums
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from django.db.models import Sum
from django.utils import timezone

from apps.analytics.counters import ENGAGEMENT_METRICS
from apps.analytics.models import Counter, Rollup
from apps.analytics.services import counters_fold
from apps.delivery.counting import status_change_metrics
from apps.delivery.models import Message
from apps.delivery.services import message_deliver, message_events_record, message_status_apply, messages_deliver
from apps.delivery.services.statuses import StatusEvent
from apps.inbox.services import (
    InboxItem,
    inbox_mark_all_read,
    inbox_message_action_complete,
    inbox_message_mark,
    inbox_messages_create,
)
from apps.preferences.models import Category
from apps.workflows.models import Run
from tests.delivery.conftest import Reply, fake_server  # noqa: F401 (the fixture)
from tests.delivery.test_failover import sms_integration
from tests.factories import IntegrationFactory, SubscriberFactory
from tests.workflows.conftest import make_workflow, published_template

pytestmark = pytest.mark.django_db

DIMS = {"workflow": "welcome", "category": "account", "template": "welcome-email"}
ENGAGEMENT = ("sent", "delivered", "opened", "clicked", "read", "seen", "archived", "action_completed", "bounced")


def counts(environment: Any, **dims: str) -> dict[str, int]:
    """Every metric's total (deltas + rollups) for the environment, optionally for some dimensions."""
    totals: Sums[str] = Sums()
    for model in (Counter, Rollup):
        rows = model.objects.filter(environment=environment, **dims).values("metric").annotate(n=Sum("value"))
        for row in rows:
            totals[row["metric"]] += row["n"]
    # Only this file's metrics (the savings report counts others beside them).
    return {m: n for m, n in totals.items() if n and (m in ENGAGEMENT_METRICS or m.startswith("latency_"))}


def engagement(environment: Any) -> dict[str, int]:
    return {k: v for k, v in counts(environment).items() if not k.startswith("latency_")}


def email(env: Any, status: str = Message.Status.SENT, **fields: Any) -> Message:
    return Message.objects.create(
        environment=env,
        step_id="mail",
        channel="email",
        recipient=fields.pop("recipient", "ada@example.com"),
        status=status,
        data=fields.pop("data", dict(DIMS)),
        **fields,
    )


# --- the rule ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("old", "new", "channel", "expected"),
    [
        ("sending", "sent", "email", ["sent"]),
        ("sent", "delivered", "email", ["delivered"]),
        ("sent", "opened", "email", ["delivered", "opened"]),  # skipped ahead: delivered implied
        ("sent", "clicked", "email", ["delivered", "opened", "clicked"]),  # a click implies an open
        ("opened", "clicked", "email", ["clicked"]),
        ("in_doubt", "delivered", "email", ["sent", "delivered"]),  # the provider had it after all
        ("sending", "bounced", "email", ["sent", "bounced"]),
        ("sent", "bounced", "email", ["bounced"]),
        ("in_doubt", "failed", "sms", ["failed"]),
        ("sent", "read", "in_app", ["read"]),  # in-app: delivered when its inbox row was written
        ("sent", "clicked", "in_app", ["clicked"]),  # in-app messages are never "opened"
    ],
)
def test_status_change_metrics(old: str, new: str, channel: str, expected: list[str]) -> None:
    assert status_change_metrics(old=old, new=new, channel=channel) == expected


# --- provider callbacks ---------------------------------------------------------------------------


def test_each_callback_counts_once_and_duplicates_count_nothing(tenant):
    env = tenant.environment
    sent_at = timezone.now() - timedelta(minutes=3)
    message = email(env, sent_at=sent_at)

    assert message_status_apply(message_id=message.pk, status="delivered")
    assert not message_status_apply(message_id=message.pk, status="delivered")  # duplicate
    assert not message_status_apply(message_id=message.pk, status="sent")  # late
    assert message_status_apply(message_id=message.pk, status="opened", at=sent_at + timedelta(seconds=100))
    assert not message_status_apply(message_id=message.pk, status="opened")
    assert message_status_apply(message_id=message.pk, status="clicked")
    assert not message_status_apply(message_id=message.pk, status="opened")  # after the click: no move

    assert engagement(env) == {"delivered": 1, "opened": 1, "clicked": 1}
    # 100 s after the send: the (60, 120] bucket of the open latency histogram
    assert counts(env)["latency_open:120"] == 1
    assert set(Counter.objects.values_list("workflow_key", "category_key", "channel", "template_key")) == {
        ("welcome", "account", "email", "welcome-email")
    }


def test_a_stale_caller_copy_is_rechecked_not_double_counted(tenant):
    env = tenant.environment
    message = email(env)
    stale = Message.objects.get(pk=message.pk)  # status "sent" in memory
    assert message_status_apply(message_id=message.pk, status="delivered", message=stale)
    # The caller's copy still says "sent": the compare-and-set misses, the status is read again.
    assert not message_status_apply(message_id=message.pk, status="delivered", message=stale)
    assert message_status_apply(message_id=message.pk, status="opened", message=stale)
    assert engagement(env) == {"delivered": 1, "opened": 1}


def test_bounce_after_delivered_counts_nothing_and_bounce_before_counts_once(tenant):
    env = tenant.environment
    delivered = email(env, status=Message.Status.DELIVERED, recipient="a@example.com")
    sent = email(env, recipient="b@example.com")
    in_doubt = email(env, status=Message.Status.IN_DOUBT, recipient="c@example.com")

    assert not message_status_apply(message_id=delivered.pk, status="bounced")
    assert message_status_apply(message_id=sent.pk, status="bounced")
    assert not message_status_apply(message_id=sent.pk, status="bounced")
    assert message_status_apply(message_id=in_doubt.pk, status="bounced")

    assert engagement(env) == {"bounced": 2, "sent": 1}


def test_in_doubt_then_sent_then_delivered(tenant):
    env = tenant.environment
    message = email(env, status=Message.Status.IN_DOUBT)
    assert message_status_apply(message_id=message.pk, status="sent")
    assert message_status_apply(message_id=message.pk, status="delivered")
    assert engagement(env) == {"sent": 1, "delivered": 1}


def test_webhook_events_stored_once_count_once(tenant):
    env = tenant.environment
    integration = IntegrationFactory(environment=env, provider="postmark", channel="email")
    message = email(env, provider_message_id="pm-1", integration=integration)
    delivered = StatusEvent("postmark", "pm-1", "delivered", "delivered", "d-1", {})
    opened = StatusEvent("postmark", "pm-1", "opened", "opened", "o-1", {})

    message_events_record(integration=integration, events=[delivered, delivered, opened])
    message_events_record(integration=integration, events=[delivered, opened])  # the provider retries

    assert engagement(env) == {"delivered": 1, "opened": 1}
    message.refresh_from_db()
    assert message.status == "opened"


def test_another_environments_callbacks_count_in_their_environment_only(tenant, other_tenant):
    message = email(tenant.environment)
    message_status_apply(message_id=message.pk, status="delivered")
    assert engagement(tenant.environment) == {"delivered": 1}
    assert engagement(other_tenant.environment) == {}


# --- sending ---------------------------------------------------------------------------------


def test_a_delivery_batch_counts_each_sent_message_once(tenant):
    env = tenant.environment  # no email integration: Django's (locmem) backend sends
    ids = [email(env, status=Message.Status.QUEUED, recipient=f"u{i}@example.com").pk for i in range(7)]

    messages_deliver(message_ids=ids)
    messages_deliver(message_ids=ids)  # the task runs twice: nothing left to send or count

    assert set(Message.objects.filter(pk__in=ids).values_list("status", flat=True)) == {"sent"}
    assert engagement(env) == {"sent": 7}
    assert counts(env, channel="email", workflow_key="welcome", template_key="welcome-email") == {"sent": 7}


def test_the_per_message_path_counts_sent_and_failed_once(tenant):
    env = tenant.environment
    mail = email(env, status=Message.Status.QUEUED)
    sms = Message.objects.create(
        environment=env, step_id="s", channel="sms", recipient="+15550001", body="x", data=dict(DIMS)
    )

    assert message_deliver(message_id=mail.pk) is not None
    assert message_deliver(message_id=mail.pk) is None  # not claimable again
    message_deliver(message_id=sms.pk)  # no active sms integration: failed

    sms.refresh_from_db()
    assert sms.status == "failed"
    assert engagement(env) == {"sent": 1, "failed": 1}
    assert counts(env, channel="sms") == {"failed": 1}


def test_a_suppressed_address_in_a_batch_counts_failed(tenant):
    from apps.delivery.services import address_suppress

    env = tenant.environment
    address_suppress(environment_id=env.pk, channel="email", address="gone@example.com", reason="bounced")
    ids = [
        email(env, status=Message.Status.QUEUED, recipient="gone@example.com").pk,
        email(env, status=Message.Status.QUEUED, recipient="ok@example.com").pk,
    ]
    messages_deliver(message_ids=ids)
    assert engagement(env) == {"sent": 1, "failed": 1}


def test_a_retried_send_counts_sent_once_and_no_failure(tenant, settings, fake_server):  # noqa: F811
    settings.CLARION_DELIVERY = {"BACKOFF_BASE": 0.01, "BACKOFF_MAX": 0.05, "INLINE_WAIT_MAX": 1.0}
    env = tenant.environment
    flaky = fake_server([Reply(status=503), Reply(body={"id": "second-try"})])
    sms_integration(env, flaky, retries=2)
    message = Message.objects.create(
        environment=env, step_id="s", channel="sms", recipient="+15550001", body="x", data=dict(DIMS)
    )

    messages_deliver(message_ids=[message.pk])

    message.refresh_from_db()
    assert message.status == "sent" and len(flaky.requests) == 2
    assert engagement(env) == {"sent": 1}


def test_a_timed_out_send_in_doubt_then_settled_counts_once(tenant, settings, fake_server):  # noqa: F811
    """The provider may have it (a timeout): in doubt, nothing counted; the resend (same idempotency
    key) or the provider's callback settles it, and only the first of them counts."""
    settings.CLARION_DELIVERY = {"BACKOFF_BASE": 0.01, "BACKOFF_MAX": 0.05, "INLINE_WAIT_MAX": 1.0}
    env = tenant.environment
    slow = fake_server([Reply(delay=1.5)])
    integration = sms_integration(env, slow, timeout=0.3)
    message = Message.objects.create(
        environment=env, step_id="s", channel="sms", recipient="+15550001", body="x", data=dict(DIMS)
    )
    messages_deliver(message_ids=[message.pk])
    message.refresh_from_db()
    assert message.status in ("in_doubt", "queued") and message.in_doubt_count == 1
    assert engagement(env) == {}

    assert message_status_apply(message_id=message.pk, status="sent")  # the provider's callback
    assert not message_status_apply(message_id=message.pk, status="sent")
    assert message_status_apply(message_id=message.pk, status="delivered")
    assert engagement(env) == {"sent": 1, "delivered": 1}
    assert integration.pk == message.integration_id


# --- in-app -----------------------------------------------------------------------------------


def _inbox(env: Any, subscriber: Any, n: int = 1) -> list[int]:
    messages = [
        Message.objects.create(
            environment=env,
            step_id="inbox",
            channel="in_app",
            subscriber=subscriber,
            status=Message.Status.SENT,
            provider="inbox",
            sent_at=timezone.now(),
            data={"workflow": "comments", "category": "social", "template": "comment-in-app"},
        )
        for _ in range(n)
    ]
    items = [
        (
            InboxItem(
                environment_id=env.pk,
                subscriber_id=subscriber.pk,
                title="Hi",
                workflow_key="comments",
                category_key="social",
                actions=[
                    {"id": "a1", "label": "Accept", "completed_at": None},
                    {"id": "a2", "label": "Decline", "completed_at": None},
                ],
            ),
            m,
        )
        for m in messages
    ]
    return inbox_messages_create(items=items)


def test_in_app_messages_count_sent_and_delivered_when_their_inbox_row_is_written(tenant):
    env = tenant.environment
    subscriber = SubscriberFactory(environment=env)
    _inbox(env, subscriber, 3)
    assert counts(
        env, channel="in_app", workflow_key="comments", category_key="social", template_key="comment-in-app"
    ) == {
        "sent": 3,
        "delivered": 3,
    }


def test_in_app_toggles_do_not_inflate_reads_or_archives(tenant):
    env = tenant.environment
    subscriber = SubscriberFactory(environment=env)
    [pk] = _inbox(env, subscriber)

    inbox_message_mark(subscriber=subscriber, message_id=pk, action="read")
    inbox_message_mark(subscriber=subscriber, message_id=pk, action="read")  # no change
    inbox_message_mark(subscriber=subscriber, message_id=pk, action="unread")
    inbox_message_mark(subscriber=subscriber, message_id=pk, action="read")
    inbox_message_mark(subscriber=subscriber, message_id=pk, action="archive")
    inbox_message_mark(subscriber=subscriber, message_id=pk, action="unarchive")
    inbox_message_mark(subscriber=subscriber, message_id=pk, action="archive")
    inbox_message_mark(subscriber=subscriber, message_id=pk, action="seen")

    assert engagement(env) == {"sent": 1, "delivered": 1, "read": 1, "seen": 1, "archived": 1}
    latency = {k: v for k, v in counts(env).items() if k.startswith("latency_read")}
    assert sum(latency.values()) == 1  # the take-back removed the first read's latency too
    # Every bucket holds a count >= 0: a take-back lands in the hour its count was added.
    assert not Counter.objects.values("bucket", "metric").annotate(n=Sum("value")).filter(n__lt=0).exists()


def test_unread_all_is_taken_back_and_read_all_counts_what_it_changed(tenant):
    env = tenant.environment
    subscriber = SubscriberFactory(environment=env)
    first, *_ = _inbox(env, subscriber, 4)
    inbox_message_mark(subscriber=subscriber, message_id=first, action="read")

    assert inbox_mark_all_read(subscriber=subscriber) == 3
    assert inbox_mark_all_read(subscriber=subscriber) == 0

    assert engagement(env) == {"sent": 4, "delivered": 4, "read": 4, "seen": 4}
    assert counts(env, template_key="comment-in-app")["read"] == 4  # the template read with the UPDATE
    assert sum(v for k, v in counts(env).items() if k.startswith("latency_read:")) == 4


def test_only_the_first_completed_action_of_a_message_counts(tenant):
    env = tenant.environment
    subscriber = SubscriberFactory(environment=env)
    [pk] = _inbox(env, subscriber)

    inbox_message_action_complete(subscriber=subscriber, message_id=pk, action_id="a1")
    inbox_message_action_complete(subscriber=subscriber, message_id=pk, action_id="a1")
    inbox_message_action_complete(subscriber=subscriber, message_id=pk, action_id="a2")

    assert engagement(env) == {"sent": 1, "delivered": 1, "action_completed": 1, "read": 1, "seen": 1}


# --- events and the engine ------------------------------------------------------------------------


@pytest.fixture
def workflow(tenant: Any) -> Any:
    Category.objects.create(environment=tenant.environment, key="social", name="Social")
    published_template(tenant.environment, "comment-in-app", "in_app", title_en="New comment", body_en="x")
    return make_workflow(
        tenant.environment,
        "comment-created",
        [{"id": "inbox", "type": "in_app", "template": "comment-in-app"}],
        category_key="social",
    )


def test_triggers_count_once_each_with_their_workflow_and_category(
    api, tenant, workflow, django_capture_on_commit_callbacks
):
    env = tenant.environment
    trigger = {"workflow": "comment-created", "to": ["u1"], "payload": {}, "transaction_id": "t-1"}
    with django_capture_on_commit_callbacks(execute=True):
        assert api.post("/api/v1/events/trigger", trigger, format="json").status_code == 202
    assert api.post("/api/v1/events/trigger", trigger, format="json").status_code == 409  # counted once
    bulk = {"events": [{**trigger, "transaction_id": f"b-{i}"} for i in range(3)] + [trigger]}
    with django_capture_on_commit_callbacks(execute=True):
        assert api.post("/api/v1/events/bulk", bulk, format="json").status_code == 202

    assert counts(env, metric="triggered") == {"triggered": 4}
    assert counts(env, workflow_key="comment-created", category_key="social", channel="", metric="triggered")
    # The engine ran each event (eager tasks): its in-app messages counted with every dimension.
    assert counts(env, channel="in_app", workflow_key="comment-created", category_key="social") == {
        "sent": 4,
        "delivered": 4,
    }
    assert counts(env, template_key="comment-in-app") == {"sent": 4, "delivered": 4}
    assert Run.objects.count() == 4


def test_a_broadcast_counts_one_trigger(api, tenant, workflow):
    SubscriberFactory(environment=tenant.environment)
    response = api.post("/api/v1/events/broadcast", {"workflow": "comment-created", "payload": {}}, format="json")
    assert response.status_code == 202, response.content
    assert counts(tenant.environment, metric="triggered") == {"triggered": 1}


# --- the fold -------------------------------------------------------------------------------------


def test_folding_changes_no_total_and_empties_the_deltas(tenant, other_tenant):
    env = tenant.environment
    for i in range(5):
        m = email(env, recipient=f"x{i}@example.com", sent_at=timezone.now())
        message_status_apply(message_id=m.pk, status="opened")
    subscriber = SubscriberFactory(environment=env)
    [pk] = _inbox(env, subscriber)
    inbox_message_mark(subscriber=subscriber, message_id=pk, action="archive")
    inbox_message_mark(subscriber=subscriber, message_id=pk, action="unarchive")  # a negative delta
    message_status_apply(message_id=email(other_tenant.environment).pk, status="delivered")
    before = (counts(env), counts(other_tenant.environment))
    deltas = Counter.objects.count()

    assert counters_fold(limit=3) == deltas  # several batches
    assert not Counter.objects.exists()
    assert (counts(env), counts(other_tenant.environment)) == before
    assert counters_fold() == 0

    message_status_apply(message_id=email(env, recipient="late@example.com").pk, status="delivered")
    counters_fold()
    assert counts(env)["delivered"] == before[0]["delivered"] + 1
    # One rollup row per bucket, dimensions and metric: the second fold added to it.
    assert Rollup.objects.filter(environment=env, metric="delivered", channel="email").count() == 1


def test_a_rolled_back_change_counts_nothing(tenant):
    from django.db import transaction

    message = email(tenant.environment)
    with pytest.raises(RuntimeError), transaction.atomic():
        message_status_apply(message_id=message.pk, status="delivered")
        raise RuntimeError("the caller's transaction fails")
    assert engagement(tenant.environment) == {}


def test_buckets_are_utc_hours(tenant):
    message = email(tenant.environment)
    at = datetime(2026, 3, 1, 23, 59, 59, tzinfo=UTC)
    message_status_apply(message_id=message.pk, status="delivered", at=at)
    [bucket] = Counter.objects.values_list("bucket", flat=True)
    assert bucket == datetime(2026, 3, 1, 23, 0, tzinfo=UTC)


@pytest.mark.parametrize("metric", ENGAGEMENT)
def test_metric_names_are_documented(metric):
    from pathlib import Path

    from apps.analytics import counters

    assert metric in counters.ENGAGEMENT_METRICS
    docs = (Path(__file__).resolve().parents[2] / "docs" / "analytics.md").read_text()
    assert f"`{metric}`" in docs
