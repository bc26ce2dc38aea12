"""ApiKey.last_used_at: written on authenticated API use, at most once a minute per key.

The clock is injected (``SecretKeyAuthentication.now`` / the service's ``now``); statements are
counted, never timed.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.contrib.admin.utils import display_for_value
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from apps.tenancy.auth import SecretKeyAuthentication
from apps.tenancy.models import ApiKey
from apps.tenancy.services import api_key_mark_used

pytestmark = pytest.mark.django_db

T0 = timezone.now().replace(microsecond=0) - timedelta(days=1)


def key_writes(context: CaptureQueriesContext) -> list[str]:
    return [q["sql"] for q in context.captured_queries if q["sql"].startswith('UPDATE "tenancy_apikey"')]


@pytest.fixture
def secret_key(tenant: Any) -> ApiKey:
    key = ApiKey.objects.get(environment=tenant.environment, kind=ApiKey.Kind.SECRET)
    ApiKey.objects.filter(pk=key.pk).update(last_used_at=None)  # never used
    key.refresh_from_db()
    return key


def test_first_use_writes_then_nothing_for_a_minute(secret_key: ApiKey, django_assert_num_queries: Any) -> None:
    with django_assert_num_queries(1):
        assert api_key_mark_used(api_key=secret_key, now=T0) is True
    with django_assert_num_queries(0):  # the loaded row says it was written 59 s ago
        assert api_key_mark_used(api_key=secret_key, now=T0 + timedelta(seconds=59)) is False
    with django_assert_num_queries(1):
        assert api_key_mark_used(api_key=secret_key, now=T0 + timedelta(seconds=61)) is True
    assert ApiKey.objects.get(pk=secret_key.pk).last_used_at == T0 + timedelta(seconds=61)


def test_concurrent_requests_write_once(secret_key: ApiKey) -> None:
    """Two requests loaded the key before either wrote: both try, the condition lets one write."""
    first = ApiKey.objects.get(pk=secret_key.pk)
    second = ApiKey.objects.get(pk=secret_key.pk)
    assert api_key_mark_used(api_key=first, now=T0) is True
    assert api_key_mark_used(api_key=second, now=T0 + timedelta(seconds=1)) is False
    assert ApiKey.objects.get(pk=secret_key.pk).last_used_at == T0


def test_the_api_writes_it_once_a_minute(api: Any, secret_key: ApiKey, monkeypatch: Any) -> None:
    clock = [T0]
    monkeypatch.setattr(SecretKeyAuthentication, "now", staticmethod(lambda: clock[0]))

    def request() -> CaptureQueriesContext:
        with CaptureQueriesContext(connection) as context:
            assert api.get("/api/v1/subscribers").status_code == 200
        return context

    first = request()
    assert len(key_writes(first)) == 1
    assert ApiKey.objects.get(pk=secret_key.pk).last_used_at == T0

    clock[0] = T0 + timedelta(seconds=30)
    second = request()
    assert key_writes(second) == []
    assert len(second) == len(first) - 1  # the only extra statement was the write

    clock[0] = T0 + timedelta(seconds=90)
    assert len(key_writes(request())) == 1
    assert ApiKey.objects.get(pk=secret_key.pk).last_used_at == T0 + timedelta(seconds=90)


def test_a_refused_key_writes_nothing(anon_api: Any, secret_key: ApiKey, tenant: Any) -> None:
    ApiKey.objects.filter(pk=secret_key.pk).update(revoked_at=timezone.now())
    anon_api.credentials(HTTP_AUTHORIZATION=f"Bearer {tenant.secret_key}")
    assert anon_api.get("/api/v1/subscribers").status_code == 401
    assert ApiKey.objects.get(pk=secret_key.pk).last_used_at is None


def test_the_key_list_shows_when_each_key_was_last_used(admin_client: Any, secret_key: ApiKey) -> None:
    api_key_mark_used(api_key=secret_key, now=T0)
    html = admin_client.get("/admin/tenancy/apikey/").content.decode()
    assert "column-last_used_at" in html
    assert display_for_value(T0, "") in html  # a day ago: no other date on the page
