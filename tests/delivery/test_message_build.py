"""The one Message constructor and the one address rule (apps.delivery.services / addresses)."""

from __future__ import annotations

import pytest

from apps.delivery.models import Message
from apps.delivery.selectors import reachable_channels
from apps.delivery.services import (
    address_normalize,
    channel_address,
    message_build,
    messages_create_bulk,
    subscriber_recipient,
)
from tests.factories import SubscriberFactory

pytestmark = pytest.mark.django_db


def test_channel_address_is_the_subscribers_own_email_or_phone_and_nothing_else():
    subscriber = SubscriberFactory(subscriber_id="ada", email="Ada@Example.com", phone="+15550001")
    bare = SubscriberFactory(subscriber_id="bare", email="", phone="")

    assert channel_address(subscriber=subscriber, channel="email") == "Ada@Example.com"
    assert channel_address(subscriber=subscriber, channel="sms") == "+15550001"
    assert [channel_address(subscriber=subscriber, channel=c) for c in ("in_app", "push", "chat", "webhook")] == [
        ""
    ] * 4
    assert channel_address(subscriber=bare, channel="email") == ""
    assert subscriber_recipient(subscriber=subscriber, channel="email") == "Ada@Example.com"
    assert subscriber_recipient(subscriber=bare, channel="email") == "bare"
    assert subscriber_recipient(subscriber=subscriber, channel="push") == "ada"
    assert address_normalize(channel="email", address=" Ada@Example.com ") == "ada@example.com"
    assert address_normalize(channel="sms", address=" +15550001 ") == "+15550001"


def test_reachable_channels_follows_the_address_rule():
    with_both = SubscriberFactory(email="a@example.com", phone="+15550002")
    bare = SubscriberFactory(email="", phone="")

    reach = reachable_channels(subscribers=[with_both, bare])

    assert {"email", "sms"} <= reach[with_both.pk]
    assert not {"email", "sms"} & reach[bare.pk]


def test_message_build_addresses_the_subscriber_and_saves_nothing(django_assert_num_queries):
    subscriber = SubscriberFactory(email="a@example.com")

    with django_assert_num_queries(0):
        email = message_build(
            environment_id=subscriber.environment_id, channel="email", subscriber=subscriber, step_id="mail"
        )
        explicit = message_build(
            environment_id=subscriber.environment_id, channel="email", subscriber=subscriber, recipient="b@example.com"
        )

    assert email.pk is None and email.recipient == "a@example.com"
    assert (email.status, email.provider, email.sent_at) == (Message.Status.QUEUED, "", None)
    assert explicit.recipient == "b@example.com"


def test_an_in_app_message_is_sent_through_the_inbox_when_built():
    subscriber = SubscriberFactory()

    message = message_build(environment_id=subscriber.environment_id, channel="in_app", subscriber=subscriber)

    assert (message.status, message.provider, message.recipient) == (
        Message.Status.SENT,
        "inbox",
        subscriber.subscriber_id,
    )
    assert message.sent_at is not None


def test_messages_create_bulk_is_one_insert_and_sets_primary_keys(django_assert_num_queries):
    subscribers = SubscriberFactory.create_batch(3)
    messages = [
        message_build(environment_id=s.environment_id, channel="email", subscriber=s, step_id="mail")
        for s in subscribers
    ]

    with django_assert_num_queries(1):
        created = messages_create_bulk(messages=messages)

    assert all(m.pk for m in created)
    stored = Message.objects.filter(pk__in=[m.pk for m in created]).order_by("pk")
    assert [m.recipient for m in stored] == [s.email for s in subscribers]
