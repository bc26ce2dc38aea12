from __future__ import annotations

from datetime import timedelta

import pytest
import time_machine
from django.core import signing
from django.utils import timezone
from rest_framework.test import APIClient

from apps.inbox.auth import INBOX_TOKEN_SALT, inbox_token_issue, inbox_token_read
from tests.inbox.conftest import token_for

COUNTS = "/api/v1/inbox/counts"


def client_with(token: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    return client


def test_token_round_trip(tenant, alice):
    assert inbox_token_read(inbox_token_issue(environment=tenant.environment, subscriber=alice)) == (
        tenant.environment.pk,
        alice.pk,
    )


def test_token_read_needs_no_database(tenant, alice, django_assert_num_queries):
    token = token_for(alice)
    with django_assert_num_queries(0):
        assert inbox_token_read(token) == (tenant.environment.pk, alice.pk)


@pytest.mark.parametrize(
    "token",
    [None, "", "garbage", "a" * 600, "sk_live_something", "pk_live_something"],
)
def test_garbage_tokens_read_as_none(token):
    assert inbox_token_read(token) is None


def test_tampered_token_is_rejected(alice):
    token = token_for(alice)
    _payload, rest = token.split(":", 1)
    forged = signing.dumps({"e": alice.environment_id, "s": alice.pk + 1}, salt=INBOX_TOKEN_SALT).split(":", 1)[0]
    assert inbox_token_read(f"{forged}:{rest}") is None
    assert inbox_token_read(token[:-2] + ("AA" if token[-2:] != "AA" else "BB")) is None


def test_token_signed_for_another_purpose_is_rejected(alice):
    other_purpose = signing.dumps({"e": alice.environment_id, "s": alice.pk}, salt="clarion.preferences")
    assert inbox_token_read(other_purpose) is None


def test_token_with_wrong_shape_is_rejected():
    assert inbox_token_read(signing.dumps(["e", 1], salt=INBOX_TOKEN_SALT)) is None
    assert inbox_token_read(signing.dumps({"e": "1", "s": 2}, salt=INBOX_TOKEN_SALT)) is None
    assert inbox_token_read(signing.dumps({"e": True, "s": 2}, salt=INBOX_TOKEN_SALT)) is None


def test_token_expires_after_max_age(settings, alice):
    settings.CLARION = {**settings.CLARION, "INBOX_TOKEN_MAX_AGE": 600}
    with time_machine.travel(timezone.now(), tick=False) as traveller:
        token = token_for(alice)
        traveller.shift(timedelta(seconds=599))
        assert inbox_token_read(token) is not None
        assert client_with(token).get(COUNTS).status_code == 200
        traveller.shift(timedelta(seconds=2))
        assert inbox_token_read(token) is None
        response = client_with(token).get(COUNTS)
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "authentication_failed"


def test_inbox_endpoint_without_token_is_401(anon_api):
    response = anon_api.get(COUNTS)
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "not_authenticated"


def test_inbox_endpoint_rejects_secret_key(tenant, alice):
    response = tenant.client.get(COUNTS)
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "authentication_failed"


def test_inbox_endpoint_rejects_publishable_key(tenant, alice):
    response = client_with(tenant.publishable_key).get(COUNTS)
    assert response.status_code == 401


def test_inbox_endpoint_rejects_malformed_header(alice):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {token_for(alice)}")
    assert client.get(COUNTS).status_code == 401


def test_server_api_rejects_inbox_token(tenant, alice):
    """An inbox token must never act as a secret key on the server API."""
    inbox = client_with(token_for(alice))
    for path in ("/api/v1/subscribers", "/api/v1/workflows", "/api/v1/templates"):
        response = inbox.get(path)
        assert response.status_code == 401, (path, response.content)
        assert response.json()["error"]["code"] == "authentication_failed"
    assert tenant.client.get("/api/v1/subscribers").status_code == 200  # the sk_ key still works there
