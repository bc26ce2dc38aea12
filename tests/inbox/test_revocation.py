"""Inbox sessions end when their subscriber is deleted, a key of the environment is revoked or its
inbox HMAC secret is rotated: REST calls get 401, open websockets are closed with 4401.

Before session versions, a token stayed good for its whole 12 hours whatever happened.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any
from urllib.parse import quote

import pytest
from asgiref.sync import sync_to_async
from channels.layers import channel_layers, get_channel_layer
from channels.testing import WebsocketCommunicator
from django.conf import settings as django_settings
from django.core import signing
from django.db.models import F
from rest_framework.test import APIClient

from apps.inbox import auth as inbox_auth
from apps.subscribers.models import Subscriber
from apps.subscribers.services import subscriber_delete
from apps.tenancy.models import ApiKey, Environment
from apps.tenancy.services import api_key_create, api_key_revoke, environment_inbox_secret_rotate
from config.asgi import application
from tests.assertions import assert_error
from tests.factories import SubscriberFactory
from tests.inbox.conftest import inbox_client_for, token_for

MESSAGES = "/api/v1/inbox/messages"
SESSION = "/api/v1/inbox/session"
LIVE_DB = pytest.mark.django_db(
    transaction=True, databases=["default", "channels"] if "channels" in django_settings.DATABASES else ["default"]
)
FRAME_TIMEOUT = 5


class Clock:
    """Stands in for the session memory's monotonic clock."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(autouse=True)
def clock(monkeypatch: pytest.MonkeyPatch) -> Iterator[Clock]:
    """A clean session memory (other tests may have left sessions of reused ids) and our clock."""
    clock = Clock()
    monkeypatch.setattr(inbox_auth, "_clock", clock)
    inbox_auth.inbox_sessions_forget()
    yield clock
    inbox_auth.inbox_sessions_forget()


def open_session(tenant: Any, subscriber_id: str, *, publishable_key: str | None = None) -> Any:
    return APIClient().post(
        SESSION,
        {
            "publishable_key": publishable_key or tenant.publishable_key,
            "subscriber_id": subscriber_id,
            "subscriber_hash": tenant.subscriber_hash(subscriber_id),
        },
        format="json",
    )


def bearer(token: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    return client


# --- REST ----------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_deleted_subscribers_token_is_refused(api, alice, alice_client, django_capture_on_commit_callbacks):
    assert alice_client.get(MESSAGES).status_code == 200

    with django_capture_on_commit_callbacks(execute=True):
        assert api.delete("/api/v1/subscribers/alice").status_code == 204

    error = assert_error(alice_client.get(MESSAGES), 401, "authentication_failed")
    assert "revoked" in error["message"]


@pytest.mark.django_db
def test_a_subscriber_created_again_does_not_revive_the_old_token(
    api, tenant, alice, alice_client, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        subscriber_delete(subscriber=alice)
    response = open_session(tenant, "alice")  # the widget opens a new session: a new row
    assert response.status_code == 201

    assert_error(alice_client.get(MESSAGES), 401, "authentication_failed")
    assert bearer(response.json()["token"]).get(MESSAGES).status_code == 200


@pytest.mark.django_db
@pytest.mark.parametrize("kind", [ApiKey.Kind.PUBLISHABLE, ApiKey.Kind.SECRET])
def test_revoking_a_key_ends_the_environments_sessions(
    tenant, other_tenant, alice, mallory, kind, django_capture_on_commit_callbacks
):
    client, other_client = inbox_client_for(alice), inbox_client_for(mallory)
    key = ApiKey.objects.get(environment=tenant.environment, kind=kind)

    with django_capture_on_commit_callbacks(execute=True):
        api_key_revoke(api_key=key)

    assert_error(client.get(MESSAGES), 401, "authentication_failed")
    assert other_client.get(MESSAGES).status_code == 200  # another environment is untouched


@pytest.mark.django_db
def test_a_new_session_after_a_revocation_works(tenant, alice, django_capture_on_commit_callbacks):
    old = inbox_client_for(alice)
    spare = api_key_create(environment=tenant.environment, kind=ApiKey.Kind.PUBLISHABLE)
    with django_capture_on_commit_callbacks(execute=True):
        api_key_revoke(api_key=ApiKey.objects.get(environment=tenant.environment, name="Default publishable key"))

    assert_error(open_session(tenant, "alice"), 401, "authentication_failed")  # the revoked key
    response = open_session(tenant, "alice", publishable_key=spare.raw)
    assert response.status_code == 201
    assert bearer(response.json()["token"]).get(MESSAGES).status_code == 200
    assert_error(old.get(MESSAGES), 401, "authentication_failed")


@pytest.mark.django_db
def test_revoking_a_revoked_key_again_changes_nothing(tenant, alice, django_capture_on_commit_callbacks):
    key = ApiKey.objects.get(environment=tenant.environment, kind=ApiKey.Kind.PUBLISHABLE)
    with django_capture_on_commit_callbacks(execute=True):
        api_key_revoke(api_key=key)
    version = Environment.objects.get(pk=tenant.environment.pk).inbox_session_version
    client = inbox_client_for(Subscriber.objects.select_related("environment").get(pk=alice.pk))

    with django_capture_on_commit_callbacks(execute=True):
        api_key_revoke(api_key=key)

    assert Environment.objects.get(pk=tenant.environment.pk).inbox_session_version == version
    assert client.get(MESSAGES).status_code == 200


@pytest.mark.django_db
def test_rotating_the_hmac_secret_ends_sessions_and_old_hashes(tenant, alice, django_capture_on_commit_callbacks):
    client = inbox_client_for(alice)
    old_hash = tenant.subscriber_hash("alice")

    with django_capture_on_commit_callbacks(execute=True):
        environment_inbox_secret_rotate(environment=tenant.environment)

    assert_error(client.get(MESSAGES), 401, "authentication_failed")
    stale = APIClient().post(
        SESSION,
        {"publishable_key": tenant.publishable_key, "subscriber_id": "alice", "subscriber_hash": old_hash},
        format="json",
    )
    assert_error(stale, 401, "authentication_failed")
    tenant.environment.refresh_from_db()
    response = open_session(tenant, "alice")  # tenant.subscriber_hash signs with the new secret
    assert response.status_code == 201
    assert bearer(response.json()["token"]).get(MESSAGES).status_code == 200


@pytest.mark.django_db
def test_admin_action_rotates_the_secret(admin_client, tenant, alice, django_capture_on_commit_callbacks):
    client = inbox_client_for(alice)
    before = tenant.environment.inbox_hmac_secret

    with django_capture_on_commit_callbacks(execute=True):
        response = admin_client.post(
            "/admin/tenancy/environment/",
            {"action": "rotate_inbox_secret", "_selected_action": [tenant.environment.pk]},
        )

    assert response.status_code == 302
    tenant.environment.refresh_from_db()
    assert tenant.environment.inbox_hmac_secret != before
    assert_error(client.get(MESSAGES), 401, "authentication_failed")


@pytest.mark.django_db
def test_a_token_for_a_missing_subscriber_is_refused(tenant):
    token = signing.dumps({"e": tenant.environment.pk, "s": 10**9, "v": 1}, salt=inbox_auth.INBOX_TOKEN_SALT)
    assert_error(bearer(token).get(MESSAGES), 401, "authentication_failed")


@pytest.mark.django_db
def test_tokens_issued_before_versions_stand_for_the_first_version(tenant, alice, django_capture_on_commit_callbacks):
    legacy = signing.dumps({"e": tenant.environment.pk, "s": alice.pk}, salt=inbox_auth.INBOX_TOKEN_SALT)
    assert bearer(legacy).get(MESSAGES).status_code == 200
    with django_capture_on_commit_callbacks(execute=True):
        environment_inbox_secret_rotate(environment=tenant.environment)
    assert_error(bearer(legacy).get(MESSAGES), 401, "authentication_failed")


# --- what the check costs ------------------------------------------------------------------------


@pytest.mark.django_db
def test_a_remembered_session_costs_no_query(tenant, alice, make_message, django_assert_num_queries):
    make_message(alice)
    client = inbox_client_for(alice)  # issued by this process: remembered
    with django_assert_num_queries(1):  # the page only
        assert client.get(MESSAGES).status_code == 200


@pytest.mark.django_db
def test_a_session_issued_elsewhere_is_checked_once_per_memory_span(
    tenant, alice, make_message, clock, django_assert_num_queries
):
    make_message(alice)
    client = inbox_client_for(alice)
    inbox_auth.inbox_sessions_forget()  # as if another process had issued the token

    with django_assert_num_queries(2):  # session check + page
        assert client.get(MESSAGES).status_code == 200
    with django_assert_num_queries(1):
        assert client.get(MESSAGES).status_code == 200
    clock.now += inbox_auth.SESSION_CHECK_SECONDS + 1
    with django_assert_num_queries(2):
        assert client.get(MESSAGES).status_code == 200


@pytest.mark.django_db
def test_a_revocation_made_by_another_process_applies_when_the_memory_runs_out(tenant, alice, clock):
    client = inbox_client_for(alice)
    # Another process bumped the version: nothing here forgot the session.
    Environment.objects.filter(pk=tenant.environment.pk).update(inbox_session_version=F("inbox_session_version") + 1)

    assert client.get(MESSAGES).status_code == 200  # remembered, at most SESSION_CHECK_SECONDS
    clock.now += inbox_auth.SESSION_CHECK_SECONDS + 1
    assert_error(client.get(MESSAGES), 401, "authentication_failed")


# --- websockets ----------------------------------------------------------------------------------


@pytest.fixture
async def _fresh_channel_layer() -> AsyncIterator[None]:
    channel_layers.backends = {}
    yield
    for layer in list(channel_layers.backends.values()):
        close = getattr(layer, "close", None)
        if close is not None:
            await close()
    channel_layers.backends = {}


async def connected_socket(token: str) -> WebsocketCommunicator:
    ws = WebsocketCommunicator(application, f"/ws/inbox/?token={quote(token)}")
    connected, _ = await ws.connect(timeout=FRAME_TIMEOUT)
    assert connected
    assert (await ws.receive_json_from(timeout=FRAME_TIMEOUT))["event"] == "ready"
    return ws


async def assert_revoked(ws: WebsocketCommunicator, reason: str) -> None:
    assert await ws.receive_json_from(timeout=FRAME_TIMEOUT) == {"event": "session.revoked", "reason": reason}
    assert await ws.receive_output(timeout=FRAME_TIMEOUT) == {"type": "websocket.close", "code": 4401}


@sync_to_async
def make_subscriber(**kwargs: Any) -> Subscriber:
    return SubscriberFactory(**kwargs)


@sync_to_async
def reload(subscriber: Subscriber) -> Subscriber:
    return Subscriber.objects.select_related("environment").get(pk=subscriber.pk)


@LIVE_DB
@pytest.mark.usefixtures("_fresh_channel_layer")
async def test_deleting_the_subscriber_closes_its_socket():
    subscriber = await make_subscriber()
    bystander = await make_subscriber(environment=subscriber.environment)
    ws = await connected_socket(await sync_to_async(token_for)(subscriber))
    other = await connected_socket(await sync_to_async(token_for)(bystander))
    try:
        await sync_to_async(subscriber_delete)(subscriber=subscriber)
        await assert_revoked(ws, "subscriber_deleted")
        assert await other.receive_nothing(timeout=0.3)
    finally:
        await ws.disconnect()
        await other.disconnect()


@LIVE_DB
@pytest.mark.usefixtures("_fresh_channel_layer")
@pytest.mark.parametrize("action", ["revoke_publishable", "rotate_secret"])
async def test_revocation_closes_every_socket_of_the_environment(action):
    first = await make_subscriber()
    second = await make_subscriber(environment=first.environment)
    elsewhere = await make_subscriber()
    sockets = [await connected_socket(await sync_to_async(token_for)(s)) for s in (first, second, elsewhere)]
    try:
        if action == "revoke_publishable":
            key = await sync_to_async(api_key_create)(environment=first.environment, kind=ApiKey.Kind.PUBLISHABLE)
            await sync_to_async(api_key_revoke)(api_key=key.api_key)
            reason = "api_key_revoked"
        else:
            await sync_to_async(environment_inbox_secret_rotate)(environment=first.environment)
            reason = "inbox_secret_rotated"
        await assert_revoked(sockets[0], reason)
        await assert_revoked(sockets[1], reason)
        assert await sockets[2].receive_nothing(timeout=0.3)
    finally:
        for ws in sockets:
            await ws.disconnect()


@LIVE_DB
@pytest.mark.usefixtures("_fresh_channel_layer")
async def test_a_revoked_token_cannot_connect_and_a_new_one_survives_a_late_revocation():
    subscriber = await make_subscriber()
    old_token = await sync_to_async(token_for)(subscriber)
    await sync_to_async(environment_inbox_secret_rotate)(environment=subscriber.environment)

    ws = WebsocketCommunicator(application, f"/ws/inbox/?token={quote(old_token)}")
    try:
        connected, _ = await ws.connect(timeout=FRAME_TIMEOUT)
        assert connected
        assert await ws.receive_output(timeout=FRAME_TIMEOUT) == {"type": "websocket.close", "code": 4401}
    finally:
        await ws.disconnect()

    fresh = await connected_socket(await sync_to_async(token_for)(await reload(subscriber)))
    try:
        # A revocation message older than the fresh token's version (delivered late) leaves it open.
        current = (await reload(subscriber)).environment.inbox_session_version
        await get_channel_layer().group_send(
            f"inbox.{subscriber.environment_id}", {"type": "inbox.revoke", "reason": "late", "version": current}
        )
        assert await fresh.receive_nothing(timeout=0.3)
    finally:
        await fresh.disconnect()


@LIVE_DB
@pytest.mark.usefixtures("_fresh_channel_layer")
async def test_a_socket_let_in_from_memory_is_checked_when_the_memory_runs_out(monkeypatch):
    """A revocation made by another process before the socket joined its groups reached no socket
    here; the socket, let in because this process remembered the session, is closed at the recheck."""
    monkeypatch.setattr(inbox_auth, "SESSION_CHECK_SECONDS", 0.5)
    monkeypatch.setattr(inbox_auth, "_clock", __import__("time").monotonic)
    subscriber = await make_subscriber()
    token = await sync_to_async(token_for)(subscriber)  # remembered for 0.5 s
    await sync_to_async(
        lambda: Environment.objects.filter(pk=subscriber.environment_id).update(
            inbox_session_version=F("inbox_session_version") + 1
        )
    )()
    ws = await connected_socket(token)
    try:
        await assert_revoked(ws, "session_revoked")
    finally:
        await ws.disconnect()
