"""A web process remembers a secret key it authenticated for ``API_KEY_CACHE_SECONDS``
(apps/tenancy/keycache.py). Revocation: at once in the process that revokes, within the TTL in the
others (a queryset ``update`` stands in for another process: no signal reaches this one). The
clock is injected; statements are counted, never timed."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from apps.tenancy import keycache
from apps.tenancy.auth import SecretKeyAuthentication
from apps.tenancy.models import ApiKey, Environment
from apps.tenancy.services import api_key_revoke
from tests.assertions import assert_error

pytestmark = pytest.mark.django_db

URL = "/api/v1/workflows"
TTL = 10.0


@pytest.fixture(autouse=True)
def cache_on(settings: Any, monkeypatch: Any) -> Iterator[list[float]]:
    """The cache on (the suite turns it off), with a clock the test moves."""
    settings.CLARION = {**settings.CLARION, "API_KEY_CACHE_SECONDS": TTL}
    clock = [1000.0]
    monkeypatch.setattr(keycache, "clock", lambda: clock[0])
    keycache.forget_all()
    yield clock
    keycache.forget_all()


def key_lookups(context: CaptureQueriesContext) -> int:
    return sum(1 for q in context.captured_queries if 'FROM "tenancy_apikey"' in q["sql"])


def get(tenant: Any) -> tuple[Any, int]:
    with CaptureQueriesContext(connection) as context:
        response = tenant.client.get(URL)
    return response, key_lookups(context)


def secret(tenant: Any) -> ApiKey:
    return ApiKey.objects.get(environment=tenant.environment, kind=ApiKey.Kind.SECRET)


def test_a_key_is_looked_up_once_per_ttl(tenant: Any, cache_on: list[float]) -> None:
    assert get(tenant)[1] == 1
    response, lookups = get(tenant)
    assert (response.status_code, lookups) == (200, 0)
    cache_on[0] += TTL + 0.1
    assert get(tenant)[1] == 1


def test_a_revocation_in_this_process_is_refused_by_the_next_request(
    tenant: Any, django_capture_on_commit_callbacks: Any
) -> None:
    assert get(tenant)[0].status_code == 200
    with django_capture_on_commit_callbacks(execute=True):
        api_key_revoke(api_key=secret(tenant))
    assert_error(tenant.client.get(URL), 401, "authentication_failed")


def test_a_revocation_elsewhere_is_refused_within_the_ttl(tenant: Any, cache_on: list[float]) -> None:
    assert get(tenant)[0].status_code == 200
    ApiKey.objects.filter(pk=secret(tenant).pk).update(revoked_at=timezone.now())  # another process
    cache_on[0] += TTL - 0.5
    assert get(tenant)[0].status_code == 200  # the documented bound: still remembered here
    cache_on[0] += 0.6
    assert_error(tenant.client.get(URL), 401, "authentication_failed")
    assert_error(tenant.client.get(URL), 401, "authentication_failed")  # a refused key is not remembered


def test_a_changed_environment_in_this_process_is_read_again(
    tenant: Any, django_capture_on_commit_callbacks: Any
) -> None:
    assert get(tenant)[0].status_code == 200
    environment = Environment.objects.get(pk=tenant.environment.pk)
    environment.track_opens = True
    with django_capture_on_commit_callbacks(execute=True):
        environment.save(update_fields=["track_opens"])
    assert get(tenant)[1] == 1


def test_an_unknown_key_is_never_remembered(tenant: Any) -> None:
    tenant.client.credentials(HTTP_AUTHORIZATION="Bearer sk_not_a_key")
    for _ in range(2):
        with CaptureQueriesContext(connection) as context:
            assert_error(tenant.client.get(URL), 401, "authentication_failed")
        assert key_lookups(context) == 1


def test_each_request_gets_its_own_instances(tenant: Any) -> None:
    raw = tenant.secret_key
    first = keycache.secret_key_for_raw(raw)
    second = keycache.secret_key_for_raw(raw)
    assert first is not None and second is not None
    assert first is not second and first.environment is not second.environment
    assert (second.pk, second.environment.pk, second.environment.name) == (
        secret(tenant).pk,
        tenant.environment.pk,
        tenant.environment.name,
    )
    first.environment.allowed_origins.append("https://changed.example")
    first.environment.name = "changed"
    third = keycache.secret_key_for_raw(raw)
    assert third is not None
    assert third.environment.allowed_origins == Environment.objects.get(pk=tenant.environment.pk).allowed_origins
    assert third.environment.name == tenant.environment.name


def test_last_used_is_still_written_once_a_minute(tenant: Any, monkeypatch: Any) -> None:
    """From a remembered key too: the first use writes, the next ones within the minute don't, even
    when another process wrote it (the remembered copy follows the row)."""
    now = [timezone.now().replace(microsecond=0)]
    monkeypatch.setattr(SecretKeyAuthentication, "now", staticmethod(lambda: now[0]))
    ApiKey.objects.filter(pk=secret(tenant).pk).update(last_used_at=None)

    def writes() -> int:
        with CaptureQueriesContext(connection) as context:
            assert tenant.client.get(URL).status_code == 200
        return sum(1 for q in context.captured_queries if q["sql"].startswith('UPDATE "tenancy_apikey"'))

    assert writes() == 1
    now[0] += timedelta(seconds=30)
    assert writes() == 0
    now[0] += timedelta(seconds=31)
    assert writes() == 1
    assert secret(tenant).last_used_at == now[0]
    # another process wrote it within the minute: one conditional UPDATE that changes nothing, then none
    ApiKey.objects.filter(pk=secret(tenant).pk).update(last_used_at=now[0] + timedelta(seconds=70))
    now[0] += timedelta(seconds=75)
    assert writes() == 1
    assert writes() == 0
    assert secret(tenant).last_used_at == now[0] - timedelta(seconds=5)
