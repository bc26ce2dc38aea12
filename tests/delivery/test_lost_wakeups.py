"""A queued message whose delivery task was lost is handed out again by the ticker, once per period."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from apps.delivery.models import Message
from apps.delivery.services import messages_redrive
from tests.factories import SubscriberFactory

pytestmark = pytest.mark.django_db


def test_a_queued_message_whose_task_was_lost_is_redriven_once_per_stall_period(tenant, settings):
    settings.CLARION = {**settings.CLARION, "STALL_SECONDS": 60}
    subscriber = SubscriberFactory(environment=tenant.environment, subscriber_id="u1", email="u1@example.com")
    message = Message.objects.create(
        environment=tenant.environment, channel="email", subscriber=subscriber, recipient="u1@example.com"
    )
    now = timezone.now()
    Message.objects.filter(pk=message.pk).update(updated_at=now - timedelta(seconds=30))

    assert messages_redrive(now=now) == []  # its task may still be on the way
    assert messages_redrive(now=now + timedelta(seconds=31)) == [message.pk]
    assert messages_redrive(now=now + timedelta(seconds=32)) == []  # handed out: not again this period
    assert messages_redrive(now=now + timedelta(seconds=92)) == [message.pk]
