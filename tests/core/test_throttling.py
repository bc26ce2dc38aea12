"""Rate limits (apps.core.throttling) and the admin login lockout (django-axes).

Each test gets an empty cache of its own and an injected clock; rates are lowered per test.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import pytest
import time_machine
from django.conf import settings as django_settings
from django.contrib.auth import get_user_model
from django.core.cache import caches
from django.utils import timezone
from rest_framework.test import APIClient

from apps.core import throttling
from apps.inbox.auth import inbox_token_issue
from tests.assertions import assert_error
from tests.factories import SubscriberFactory

TRIGGER = "/api/v1/events/trigger"
SUBSCRIBERS = "/api/v1/subscribers"
SESSION = "/api/v1/inbox/session"
INBOX = "/api/v1/inbox/counts"


class Clock:
    def __init__(self) -> None:
        self.now = 86400.0 * 1000  # the start of a day, an hour and a minute window

    def __call__(self) -> float:
        return self.now


@pytest.fixture(autouse=True)
def clock(settings: Any, monkeypatch: pytest.MonkeyPatch) -> Clock:
    settings.CACHES = {
        "default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache", "LOCATION": f"t-{uuid.uuid4()}"}
    }
    clock = Clock()
    monkeypatch.setattr(throttling.ClarionRateThrottle, "timer", clock)
    return clock


@pytest.fixture
def rates(settings: Any) -> Callable[..., None]:
    def set_rates(**overrides: str | None) -> None:
        rest = dict(settings.REST_FRAMEWORK)
        rest["DEFAULT_THROTTLE_RATES"] = {**rest["DEFAULT_THROTTLE_RATES"], **overrides}
        settings.REST_FRAMEWORK = rest

    return set_rates


def trigger(client: APIClient) -> Any:
    return client.post(TRIGGER, {"workflow": "none-such", "to": ["u1"]}, format="json")


def assert_rate_limited(response: Any, scope: str, retry_after: int) -> None:
    error = assert_error(response, 429, "rate_limited")
    assert error["details"] == {"retry_after": retry_after, "scope": scope}
    assert response["Retry-After"] == str(retry_after)


# --- API keys: per environment and endpoint class -------------------------------------------------


@pytest.mark.django_db
def test_trigger_limit_per_environment(api, other_tenant, rates, clock):
    rates(trigger="3/minute")
    clock.now += 15
    for _ in range(3):
        assert trigger(api).status_code != 429
    assert_rate_limited(trigger(api), "trigger", 45)
    assert api.get(SUBSCRIBERS).status_code == 200  # management is counted apart
    assert trigger(other_tenant.client).status_code != 429  # so is another environment

    clock.now += 45  # the next window
    assert trigger(api).status_code != 429


@pytest.mark.django_db
def test_bulk_trigger_counts_as_trigger(api, rates):
    rates(trigger="1/minute")
    assert trigger(api).status_code != 429
    response = api.post("/api/v1/events/bulk", {"events": []}, format="json")
    assert_rate_limited(response, "trigger", 60)


@pytest.mark.django_db
def test_management_limit(api, rates):
    rates(management="2/hour")
    assert api.get(SUBSCRIBERS).status_code == 200
    assert api.get("/api/v1/topics").status_code == 200
    assert_rate_limited(api.get(SUBSCRIBERS), "management", 3600)
    assert trigger(api).status_code != 429


@pytest.mark.django_db
def test_a_rate_set_to_off_never_limits(api, rates):
    rates(management=None)
    for _ in range(5):
        assert api.get(SUBSCRIBERS).status_code == 200


@pytest.mark.django_db
def test_inbox_limit_per_environment(tenant, other_tenant, rates):
    rates(inbox="2/minute")
    alice = SubscriberFactory(environment=tenant.environment, subscriber_id="alice")
    bob = SubscriberFactory(environment=tenant.environment, subscriber_id="bob")
    mallory = SubscriberFactory(environment=other_tenant.environment, subscriber_id="alice")

    def client(subscriber: Any) -> APIClient:
        c = APIClient()
        token = inbox_token_issue(environment=subscriber.environment, subscriber=subscriber)
        c.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
        return c

    assert client(alice).get(INBOX).status_code == 200
    assert client(bob).get(INBOX).status_code == 200
    assert_rate_limited(client(alice).get(INBOX), "inbox", 60)
    assert client(mallory).get(INBOX).status_code == 200


@pytest.mark.django_db
def test_requests_that_fail_authentication_are_not_counted_against_an_environment(api, rates):
    rates(management="1/minute")
    bad = APIClient()
    bad.credentials(HTTP_AUTHORIZATION="Bearer sk_nope")
    for _ in range(3):
        assert_error(bad.get(SUBSCRIBERS), 401, "authentication_failed")
    assert api.get(SUBSCRIBERS).status_code == 200


# --- inbox sessions: per subscriber and per IP ----------------------------------------------------


def session_body(tenant: Any, subscriber_id: str) -> dict[str, str]:
    return {
        "publishable_key": tenant.publishable_key,
        "subscriber_id": subscriber_id,
        "subscriber_hash": tenant.subscriber_hash(subscriber_id),
    }


@pytest.mark.django_db
def test_session_limit_per_subscriber(anon_api, tenant, rates):
    rates(inbox_session_subscriber="2/minute", inbox_session_ip="100/minute")
    for _ in range(2):
        assert anon_api.post(SESSION, session_body(tenant, "alice"), format="json").status_code == 201
    assert_rate_limited(
        anon_api.post(SESSION, session_body(tenant, "alice"), format="json"), "inbox_session_subscriber", 60
    )
    assert anon_api.post(SESSION, session_body(tenant, "bob"), format="json").status_code == 201


@pytest.mark.django_db
def test_session_limit_per_ip_ignores_x_forwarded_for(anon_api, tenant, rates):
    rates(inbox_session_subscriber="100/minute", inbox_session_ip="2/minute")
    for name in ("a", "b"):
        assert anon_api.post(SESSION, session_body(tenant, name), format="json").status_code == 201
    spoofed = anon_api.post(SESSION, session_body(tenant, "c"), format="json", HTTP_X_FORWARDED_FOR="203.0.113.7")
    assert_rate_limited(spoofed, "inbox_session_ip", 60)
    other_host = anon_api.post(SESSION, session_body(tenant, "c"), format="json", REMOTE_ADDR="192.0.2.10")
    assert other_host.status_code == 201


@pytest.mark.django_db
def test_session_limit_counts_ipv6_per_64(anon_api, tenant, rates):
    rates(inbox_session_subscriber="100/minute", inbox_session_ip="1/minute")
    first = anon_api.post(SESSION, session_body(tenant, "a"), format="json", REMOTE_ADDR="2001:db8:1:2::1")
    assert first.status_code == 201
    same_64 = anon_api.post(SESSION, session_body(tenant, "b"), format="json", REMOTE_ADDR="2001:db8:1:2:ffff::9")
    assert_rate_limited(same_64, "inbox_session_ip", 60)
    other_64 = anon_api.post(SESSION, session_body(tenant, "b"), format="json", REMOTE_ADDR="2001:db8:1:3::1")
    assert other_64.status_code == 201


@pytest.mark.django_db
def test_session_limit_applies_before_any_lookup(anon_api, tenant, rates, django_assert_num_queries):
    rates(inbox_session_subscriber="1/minute", inbox_session_ip="100/minute")
    body = session_body(tenant, "alice") | {"subscriber_hash": "0" * 64}
    assert_error(anon_api.post(SESSION, body, format="json"), 401, "authentication_failed")
    with django_assert_num_queries(0):
        assert_rate_limited(anon_api.post(SESSION, body, format="json"), "inbox_session_subscriber", 60)


@pytest.mark.django_db
def test_malformed_session_body_is_still_a_400(anon_api, rates):
    rates(inbox_session_subscriber="1/minute")
    for _ in range(2):
        assert_error(anon_api.post(SESSION, ["not", "an", "object"], format="json"), 400, "validation_error")
    response = anon_api.post(SESSION, data="{", content_type="application/json")
    assert_error(response, 400, "malformed_json")


# --- the counter ----------------------------------------------------------------------------------


@pytest.mark.django_db
def test_the_counter_is_one_key_per_window_and_no_database_query(api, rates, django_assert_num_queries):
    rates(management="100/minute")
    with django_assert_num_queries(2):  # API key + page, nothing for the limit
        assert api.get(SUBSCRIBERS).status_code == 200
    cache = caches["default"]
    keys = [k for k in cache._cache if "throttle:management:" in k]  # LocMemCache's own dict
    assert len(keys) == 1


@pytest.mark.django_db
def test_an_unreachable_cache_lets_requests_through(api, settings, rates, caplog):
    rates(management="1/minute")
    settings.CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": "redis://127.0.0.1:1/0",  # nothing listens on port 1
            "OPTIONS": {"socket_connect_timeout": 1, "socket_timeout": 1},
        }
    }
    assert api.get(SUBSCRIBERS).status_code == 200
    assert api.get(SUBSCRIBERS).status_code == 200
    assert "cache is unavailable" in caplog.text


@pytest.fixture
def redis_cache(settings: Any) -> Iterator[Any]:
    """Django's Redis cache on this suite's spare database (7), emptied before and after."""
    url = "redis://127.0.0.1:6379/7"
    settings.CACHES = {"default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": url}}
    cache = caches["default"]
    cache.clear()
    yield cache
    cache.clear()


@pytest.mark.services
@pytest.mark.django_db
def test_on_redis_one_round_trip_per_request(api, redis_cache, rates, monkeypatch):
    import redis.connection

    rates(management="3/minute")
    sent: list[int] = []
    original = redis.connection.AbstractConnection.send_packed_command

    def counting(self: Any, command: Any, check_health: bool = True) -> None:
        sent.append(1)
        original(self, command, check_health)

    monkeypatch.setattr(redis.connection.AbstractConnection, "send_packed_command", counting)
    for _ in range(3):
        assert api.get(SUBSCRIBERS).status_code == 200
    assert_rate_limited(api.get(SUBSCRIBERS), "management", 60)
    assert len(sent) == 4


@pytest.mark.services
def test_on_redis_processes_share_the_count(settings):
    """Two cache clients (as two processes have) increment one counter."""
    from django.core.cache.backends.redis import RedisCache

    first = RedisCache("redis://127.0.0.1:6379/7", {"KEY_PREFIX": "share-test"})
    second = RedisCache("redis://127.0.0.1:6379/7", {"KEY_PREFIX": "share-test"})
    key = f"throttle:test:{uuid.uuid4()}:1"
    try:
        counts = [throttling.window_hit(c, key, 60) for c in (first, second, first, second)]
        assert counts == [1, 2, 3, 4]
        assert 0 < first._cache.get_client(write=False).ttl(first.make_and_validate_key(key)) <= 60
    finally:
        first.delete(key)


# --- configuration --------------------------------------------------------------------------------


def _settings_rates(tmp_path: Any, **variables: str) -> subprocess.CompletedProcess[str]:
    code = "import json, config.settings as s; print(json.dumps(s.REST_FRAMEWORK['DEFAULT_THROTTLE_RATES']))"
    env = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
    env.update(CLARION_VAR_DIR=str(tmp_path / "var"), **variables)
    return subprocess.run(
        [sys.executable, "-c", code], cwd=django_settings.BASE_DIR, env=env, capture_output=True, text=True, timeout=60
    )


def test_rates_come_from_the_environment(tmp_path):
    done = _settings_rates(tmp_path, CLARION_RATE_TRIGGER="50/second", CLARION_RATE_INBOX="off")
    assert done.returncode == 0, done.stderr
    rates = json.loads(done.stdout)
    assert rates["trigger"] == "50/second" and rates["inbox"] is None

    bad = _settings_rates(tmp_path, CLARION_RATE_MANAGEMENT="lots")
    assert bad.returncode != 0
    assert "CLARION_RATE_MANAGEMENT" in bad.stderr


# --- admin login lockout (django-axes) ------------------------------------------------------------

LOGIN = "/admin/login/?next=/admin/"
PASSWORD = "correct horse battery staple"


@pytest.fixture
def admin_user(db: Any) -> Any:
    return get_user_model().objects.create_superuser("root", "root@example.com", PASSWORD)


def login(client: Any, password: str, **extra: Any) -> Any:
    return client.post(LOGIN, {"username": "root", "password": password}, **extra)


def test_admin_login_locks_out_after_repeated_failures(client, admin_user):
    for n in range(django_settings.AXES_FAILURE_LIMIT):
        # Each attempt from another claimed address: X-Forwarded-For is not the client's address.
        response = login(client, "wrong", HTTP_X_FORWARDED_FOR=f"198.51.100.{n}")
        assert response.status_code in (200, 429)
    assert login(client, PASSWORD).status_code == 429  # even the right password, while locked

    assert login(client, PASSWORD, REMOTE_ADDR="192.0.2.44").status_code == 302  # another address is not

    with time_machine.travel(timezone.now() + django_settings.AXES_COOLOFF_TIME + timedelta(minutes=1)):
        assert login(client, PASSWORD).status_code == 302


def test_admin_login_below_the_limit_still_works(client, admin_user):
    for _ in range(django_settings.AXES_FAILURE_LIMIT - 1):
        assert login(client, "wrong").status_code == 200
    assert login(client, PASSWORD).status_code == 302
