from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from rest_framework.test import APIClient

from apps.inbox.auth import inbox_token_issue
from apps.subscribers.models import Subscriber
from tests.conftest import Tenant
from tests.factories import InboxMessageFactory, SubscriberFactory


def token_for(subscriber: Subscriber) -> str:
    return inbox_token_issue(environment=subscriber.environment, subscriber=subscriber)


def inbox_client_for(subscriber: Subscriber) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {token_for(subscriber)}")
    return client


@pytest.fixture
def alice(tenant: Tenant) -> Subscriber:
    return SubscriberFactory(environment=tenant.environment, subscriber_id="alice")


@pytest.fixture
def bob(tenant: Tenant) -> Subscriber:
    return SubscriberFactory(environment=tenant.environment, subscriber_id="bob")


@pytest.fixture
def mallory(other_tenant: Tenant) -> Subscriber:
    """A subscriber of the other environment (same subscriber id as alice on purpose)."""
    return SubscriberFactory(environment=other_tenant.environment, subscriber_id="alice")


@pytest.fixture
def alice_client(alice: Subscriber) -> APIClient:
    return inbox_client_for(alice)


@pytest.fixture
def make_message() -> Callable[..., Any]:
    def make(subscriber: Subscriber, **fields: Any) -> Any:
        return InboxMessageFactory(subscriber=subscriber, **fields)

    return make
