from __future__ import annotations

from typing import Any

import pytest

from tests.factories import SubscriberFactory, TopicFactory, TopicSubscriptionFactory

pytestmark = pytest.mark.django_db


def test_subscriber_admin_lists_and_searches(admin_client: Any, tenant: Any) -> None:
    SubscriberFactory(environment=tenant.environment, subscriber_id="findme", email="f@example.com")
    SubscriberFactory(environment=tenant.environment, subscriber_id="other")
    response = admin_client.get("/admin/subscribers/subscriber/", {"q": "f@example.com"})
    assert response.status_code == 200
    assert b"findme" in response.content
    assert b">other<" not in response.content
    response = admin_client.get("/admin/subscribers/subscriber/", {"environment__id__exact": tenant.environment.pk})
    assert response.status_code == 200


def test_topic_admin_shows_memberships_inline(admin_client: Any, tenant: Any) -> None:
    topic = TopicFactory(environment=tenant.environment)
    TopicSubscriptionFactory(topic=topic, subscriber__subscriber_id="member-1")
    response = admin_client.get(f"/admin/subscribers/topic/{topic.pk}/change/")
    assert response.status_code == 200
    assert b"subscriptions-0-subscriber" in response.content
