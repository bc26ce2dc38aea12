"""apps.core.bulk.in_array: ``IN (…)`` everywhere, one ``= ANY(array)`` parameter on PostgreSQL."""

from __future__ import annotations

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from apps.core.bulk import in_array
from apps.subscribers.models import Subscriber
from tests.factories import SubscriberFactory

pytestmark = pytest.mark.django_db


def test_it_selects_what_in_selects(tenant):
    subscribers = [SubscriberFactory(environment=tenant.environment) for _ in range(5)]
    wanted = [subscribers[0].pk, subscribers[3].pk, subscribers[3].pk, None, 10**12]
    with CaptureQueriesContext(connection) as queries:
        got = sorted(Subscriber.objects.filter(in_array("pk", wanted)).values_list("pk", flat=True))
    assert got == sorted(Subscriber.objects.filter(pk__in=wanted).values_list("pk", flat=True))
    assert got == sorted([subscribers[0].pk, subscribers[3].pk])
    sql = queries.captured_queries[0]["sql"]
    if connection.vendor == "postgresql":
        assert "= ANY(" in sql and " IN (" not in sql
    else:
        assert " IN (" in sql


def test_a_foreign_key_and_an_update(tenant):
    subscribers = [SubscriberFactory(environment=tenant.environment) for _ in range(3)]
    assert Subscriber.objects.filter(in_array("environment_id", [tenant.environment.pk])).count() == 3
    assert Subscriber.objects.filter(in_array("pk", [s.pk for s in subscribers[:2]])).update(first_name="x") == 2
    assert Subscriber.objects.filter(first_name="x").count() == 2


def test_no_values_match_nothing(tenant):
    SubscriberFactory(environment=tenant.environment)
    assert list(Subscriber.objects.filter(in_array("pk", []))) == []
    assert list(Subscriber.objects.filter(in_array("pk", [None]))) == []
