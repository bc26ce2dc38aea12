from __future__ import annotations

from datetime import timedelta
from urllib.parse import parse_qs, urlsplit

import pytest
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from apps.inbox.auth import inbox_token_read
from apps.subscribers.models import Subscriber
from apps.tenancy.models import ApiKey
from apps.tenancy.services import api_key_revoke

URL = "/api/v1/inbox/session"


def body(tenant, subscriber_id="alice", **overrides):
    data = {
        "publishable_key": tenant.publishable_key,
        "subscriber_id": subscriber_id,
        "subscriber_hash": tenant.subscriber_hash(subscriber_id),
    }
    data.update(overrides)
    return data


def assert_envelope(response, status, code):
    assert response.status_code == status, response.content
    assert response.json()["error"]["code"] == code
    assert "token" not in response.json()


def test_good_hash_opens_a_session(anon_api, tenant, alice):
    response = anon_api.post(URL, body(tenant), format="json")

    assert response.status_code == 201, response.content
    data = response.json()
    assert data["subscriber_id"] == "alice"
    assert inbox_token_read(data["token"]) == (tenant.environment.pk, alice.pk)
    expires_at = parse_datetime(data["expires_at"])
    assert abs(expires_at - (timezone.now() + timedelta(hours=12))) < timedelta(seconds=30)
    ws = urlsplit(data["websocket_url"])
    assert ws.path == "/ws/inbox/"
    assert parse_qs(ws.query)["token"] == [data["token"]]


def test_uppercase_hex_hash_is_accepted(anon_api, tenant, alice):
    response = anon_api.post(URL, body(tenant, subscriber_hash=tenant.subscriber_hash("alice").upper()), format="json")
    assert response.status_code == 201


def test_unknown_subscriber_is_created_bare(anon_api, tenant):
    response = anon_api.post(URL, body(tenant, subscriber_id="newcomer"), format="json")

    assert response.status_code == 201
    subscriber = Subscriber.objects.get(environment=tenant.environment, subscriber_id="newcomer")
    assert subscriber.email == ""
    assert inbox_token_read(response.json()["token"]) == (tenant.environment.pk, subscriber.pk)


def test_bad_hash_is_401(anon_api, tenant, alice):
    response = anon_api.post(URL, body(tenant, subscriber_hash=tenant.subscriber_hash("bob")), format="json")
    assert_envelope(response, 401, "authentication_failed")


def test_non_hex_garbage_hash_is_401_not_500(anon_api, tenant, alice):
    response = anon_api.post(URL, body(tenant, subscriber_hash="é" * 64), format="json")
    assert_envelope(response, 401, "authentication_failed")


def test_bad_hash_does_not_create_the_subscriber(anon_api, tenant):
    anon_api.post(URL, body(tenant, subscriber_id="ghost", subscriber_hash="0" * 64), format="json")
    assert not Subscriber.objects.filter(subscriber_id="ghost").exists()


def test_unknown_publishable_key_is_401(anon_api, tenant, alice):
    response = anon_api.post(URL, body(tenant, publishable_key="pk_not_a_real_key"), format="json")
    assert_envelope(response, 401, "authentication_failed")


def test_revoked_publishable_key_is_401(anon_api, tenant, alice):
    api_key_revoke(api_key=ApiKey.objects.get(environment=tenant.environment, kind=ApiKey.Kind.PUBLISHABLE))
    response = anon_api.post(URL, body(tenant), format="json")
    assert_envelope(response, 401, "authentication_failed")


def test_secret_key_is_not_a_publishable_key(anon_api, tenant, alice):
    response = anon_api.post(URL, body(tenant, publishable_key=tenant.secret_key), format="json")
    assert_envelope(response, 401, "authentication_failed")


def test_other_environments_hash_does_not_work(anon_api, tenant, other_tenant, alice):
    """Tenant A's key with a hash made with tenant B's secret: rejected."""
    response = anon_api.post(URL, body(tenant, subscriber_hash=other_tenant.subscriber_hash("alice")), format="json")
    assert_envelope(response, 401, "authentication_failed")


def test_other_environments_key_gives_its_own_subscriber(anon_api, tenant, other_tenant, alice, mallory):
    """Same subscriber id in two environments: B's key + B's hash is B's subscriber, never A's."""
    response = anon_api.post(URL, body(other_tenant), format="json")

    assert response.status_code == 201
    assert inbox_token_read(response.json()["token"]) == (other_tenant.environment.pk, mallory.pk)


@pytest.mark.parametrize("missing", ["publishable_key", "subscriber_id", "subscriber_hash"])
def test_missing_field_is_400(anon_api, tenant, missing):
    data = body(tenant)
    del data[missing]
    response = anon_api.post(URL, data, format="json")
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "validation_error"
    assert missing in response.json()["error"]["details"]


def test_malformed_json_is_400(anon_api):
    response = anon_api.post(URL, "{nope", content_type="application/json")
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "malformed_json"


def test_session_ignores_a_secret_key_header(tenant, alice):
    """The session endpoint is public; an Authorization header neither helps nor breaks it."""
    response = tenant.client.post(URL, body(tenant), format="json")
    assert response.status_code == 201


def test_session_query_count(anon_api, tenant, alice, django_assert_max_num_queries):
    with django_assert_max_num_queries(2):  # key (+ environment) and subscriber
        response = anon_api.post(URL, body(tenant), format="json")
    assert response.status_code == 201
