"""reachable_channels: which channels each subscriber of a chunk can be reached on, in fixed queries."""

from __future__ import annotations

from typing import Any

import pytest

from apps.delivery.models import Message, Suppression
from apps.delivery.selectors import reachable_channels
from apps.events.services import TriggerRequest, event_trigger
from apps.subscribers.models import Device
from apps.workflows.models import StepRun
from tests.factories import IntegrationFactory, SubscriberFactory
from tests.workflows.conftest import make_workflow, published_template

pytestmark = pytest.mark.django_db


def test_channels_per_subscriber(tenant: Any) -> None:
    env = tenant.environment
    full = SubscriberFactory(environment=env, subscriber_id="full", email="Full@Example.com", phone="+1555")
    bare = SubscriberFactory(environment=env, subscriber_id="bare", email="", phone="")
    bounced = SubscriberFactory(environment=env, subscriber_id="bounced", email="gone@example.com", phone="+1666")
    Device.objects.create(environment=env, subscriber=full, provider="fcm", token="t")
    Device.objects.create(environment=env, subscriber=full, provider="discord", token="https://discord.test/w")
    Suppression.objects.create(environment=env, channel="email", address="gone@example.com", reason="bounced")

    reach = reachable_channels(subscribers=[full, bare, bounced])

    assert reach[full.pk] == {"in_app", "webhook", "email", "sms", "push", "chat"}
    assert reach[bare.pk] == {"in_app", "webhook"}
    assert reach[bounced.pk] == {"in_app", "webhook", "sms"}


def test_suppression_is_per_environment(tenant: Any, other_tenant: Any) -> None:
    mine = SubscriberFactory(environment=tenant.environment, email="same@example.com")
    Suppression.objects.create(
        environment=other_tenant.environment, channel="email", address="same@example.com", reason="bounced"
    )
    assert "email" in reachable_channels(subscribers=[mine])[mine.pk]


@pytest.mark.parametrize("count", [1, 40])
def test_query_count_is_fixed(tenant: Any, django_assert_num_queries: Any, count: int) -> None:
    env = tenant.environment
    IntegrationFactory(environment=env, channel="chat", provider="slack", credentials={"webhook_url": "https://x"})
    subscribers = [SubscriberFactory(environment=env, phone="+1555") for _ in range(count)]
    for subscriber in subscribers:
        Device.objects.create(environment=env, subscriber=subscriber, provider="fcm", token=f"t{subscriber.pk}")
    with django_assert_num_queries(3):
        reach = reachable_channels(subscribers=subscribers)
    assert all({"push", "chat", "email", "sms"} <= channels for channels in reach.values())


def test_push_step_without_device_skips_with_no_address(tenant: Any, django_capture_on_commit_callbacks: Any) -> None:
    env = tenant.environment
    published_template(env, "ping", "push", title_en="Ping", body_en="Hello {{ subscriber.first_name }}")
    make_workflow(env, "ping", [{"id": "push", "type": "push", "template": "ping"}])
    SubscriberFactory(environment=env, subscriber_id="no-device")
    with django_capture_on_commit_callbacks(execute=True):
        event_trigger(environment=env, request=TriggerRequest("ping", ["no-device"], {}))
    assert not Message.objects.exists()
    assert StepRun.objects.get(step_id="push").reason == "no_address"


@pytest.mark.parametrize(
    ("channels", "queries", "expected"),
    [
        (["in_app"], 0, {"in_app", "webhook"}),
        (["email"], 1, {"in_app", "webhook", "email"}),
        (["sms", "push"], 2, {"in_app", "webhook", "sms", "push"}),
        (["chat"], 2, {"in_app", "webhook", "chat"}),
    ],
)
def test_only_the_channels_asked_for_are_looked_up(
    tenant: Any, django_assert_num_queries: Any, channels: list[str], queries: int, expected: set[str]
) -> None:
    """The engine asks only for the channels a chunk can still send on: an in-app fan-out makes no
    query; a channel asked for is answered exactly as without the restriction."""
    env = tenant.environment
    full = SubscriberFactory(environment=env, email="a@example.com", phone="+1555")
    bounced = SubscriberFactory(environment=env, email="gone@example.com", phone="+1666")
    Device.objects.create(environment=env, subscriber=full, provider="fcm", token="t")
    Device.objects.create(environment=env, subscriber=full, provider="discord", token="https://discord.test/w")
    Suppression.objects.create(environment=env, channel="email", address="gone@example.com", reason="bounced")
    with django_assert_num_queries(queries):
        reach = reachable_channels(subscribers=[full, bounced], channels=channels)
    assert reach[full.pk] == expected
    assert reach[bounced.pk] == expected - {"email", "push", "chat"}
