from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from apps.inbox.models import InboxMessage
from tests.factories import SubscriberFactory
from tests.inbox.conftest import inbox_client_for

MESSAGES = "/api/v1/inbox/messages"
COUNTS = "/api/v1/inbox/counts"
ACTIONS = ["read", "unread", "seen", "archive", "unarchive"]


def ids(response):
    return [m["id"] for m in response.json()["data"]]


# --- list --------------------------------------------------------------------------------------


def test_list_is_newest_first_in_the_shared_shape(alice_client, alice, make_message):
    old = make_message(alice, title="old", body="first", category_key="comments", data={"k": 1})
    new = make_message(alice, title="new")

    response = alice_client.get(MESSAGES)

    assert response.status_code == 200
    assert ids(response) == [new.pk, old.pk]
    item = response.json()["data"][1]
    assert item["title"] == "old"
    assert item["body"] == "first"
    assert item["category"] == "comments"
    assert item["data"] == {"k": 1}
    assert item["is_read"] is False and item["read_at"] is None
    assert set(item) >= {"id", "action_url", "avatar", "workflow", "created_at", "seen_at", "archived_at"}


def test_list_paginates_with_a_cursor(alice_client, alice, make_message):
    made = [make_message(alice).pk for _ in range(5)]

    first = alice_client.get(MESSAGES, {"limit": 2}).json()
    second = alice_client.get(MESSAGES, {"limit": 2, "cursor": first["next_cursor"]}).json()
    third = alice_client.get(MESSAGES, {"limit": 2, "cursor": second["next_cursor"]}).json()

    assert [m["id"] for m in first["data"] + second["data"] + third["data"]] == made[::-1]
    assert third["next_cursor"] is None


def test_list_only_shows_own_messages(alice_client, alice, bob, mallory, make_message):
    mine = make_message(alice)
    make_message(bob)
    make_message(mallory)

    assert ids(alice_client.get(MESSAGES)) == [mine.pk]


def test_other_environments_token_cannot_see_our_messages(alice, mallory, make_message):
    make_message(alice, title="secret")
    theirs = make_message(mallory, title="theirs")

    response = inbox_client_for(mallory).get(MESSAGES)

    assert ids(response) == [theirs.pk]


def test_filters_read_archived_category(alice_client, alice, make_message):
    now = timezone.now()
    unread = make_message(alice, category_key="comments")
    read = make_message(alice, read_at=now, seen_at=now, category_key="billing")
    archived = make_message(alice, archived_at=now)

    assert ids(alice_client.get(MESSAGES)) == [read.pk, unread.pk]  # archived hidden by default
    assert ids(alice_client.get(MESSAGES, {"read": "true"})) == [read.pk]
    assert ids(alice_client.get(MESSAGES, {"read": "false"})) == [unread.pk]
    assert ids(alice_client.get(MESSAGES, {"archived": "true"})) == [archived.pk]
    assert ids(alice_client.get(MESSAGES, {"archived": "false"})) == [read.pk, unread.pk]
    assert ids(alice_client.get(MESSAGES, {"category": "comments"})) == [unread.pk]
    assert ids(alice_client.get(MESSAGES, {"category": "billing", "read": "false"})) == []


@pytest.mark.parametrize("params", [{"read": "maybe"}, {"archived": "sometimes"}, {"category": "x" * 101}])
def test_bad_filters_are_400(alice_client, params):
    response = alice_client.get(MESSAGES, params)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "validation_error"


def test_list_query_count(alice_client, alice, make_message, django_assert_num_queries):
    for _ in range(30):
        make_message(alice)
    with django_assert_num_queries(1):
        response = alice_client.get(MESSAGES, {"limit": 10, "read": "false", "category": ""})
    assert len(response.json()["data"]) == 10
    cursor = response.json()["next_cursor"]
    with django_assert_num_queries(1):
        assert len(alice_client.get(MESSAGES, {"limit": 10, "cursor": cursor}).json()["data"]) == 10


# --- counts ------------------------------------------------------------------------------------


def test_counts(alice_client, alice, bob, mallory, make_message, django_assert_num_queries):
    now = timezone.now()
    make_message(alice)  # unread, unseen
    make_message(alice, seen_at=now)  # unread, seen
    make_message(alice, seen_at=now, read_at=now)  # read
    make_message(alice, archived_at=now)  # archived: not counted
    make_message(bob)
    make_message(mallory)

    with django_assert_num_queries(1):
        response = alice_client.get(COUNTS)

    assert response.status_code == 200
    assert response.json() == {"unread": 2, "unseen": 1, "total": 3}


def test_counts_empty(alice_client):
    assert alice_client.get(COUNTS).json() == {"unread": 0, "unseen": 0, "total": 0}


# --- marking one message -----------------------------------------------------------------------


def test_read_sets_read_and_seen(alice_client, alice, make_message):
    message = make_message(alice)

    response = alice_client.post(f"{MESSAGES}/{message.pk}/read")

    assert response.status_code == 200
    assert response.json()["id"] == message.pk
    assert response.json()["is_read"] is True and response.json()["is_seen"] is True
    message.refresh_from_db()
    assert message.read_at is not None and message.seen_at is not None
    assert alice_client.get(COUNTS).json() == {"unread": 0, "unseen": 0, "total": 1}


def test_read_twice_keeps_the_first_timestamp(alice_client, alice, make_message):
    first = timezone.now() - timedelta(days=1)
    message = make_message(alice, read_at=first, seen_at=first)
    alice_client.post(f"{MESSAGES}/{message.pk}/read")
    message.refresh_from_db()
    assert message.read_at == first


def test_unread(alice_client, alice, make_message):
    now = timezone.now()
    message = make_message(alice, read_at=now, seen_at=now)

    response = alice_client.post(f"{MESSAGES}/{message.pk}/unread")

    assert response.json()["is_read"] is False
    assert response.json()["is_seen"] is True  # unread does not make it unseen
    assert alice_client.get(COUNTS).json() == {"unread": 1, "unseen": 0, "total": 1}


def test_seen(alice_client, alice, make_message):
    message = make_message(alice)
    response = alice_client.post(f"{MESSAGES}/{message.pk}/seen")
    assert response.json()["is_seen"] is True and response.json()["is_read"] is False
    assert alice_client.get(COUNTS).json() == {"unread": 1, "unseen": 0, "total": 1}


def test_archive_and_unarchive(alice_client, alice, make_message):
    message = make_message(alice)

    archived = alice_client.post(f"{MESSAGES}/{message.pk}/archive")
    assert archived.json()["is_archived"] is True
    assert ids(alice_client.get(MESSAGES)) == []
    assert ids(alice_client.get(MESSAGES, {"archived": "true"})) == [message.pk]
    assert alice_client.get(COUNTS).json()["total"] == 0

    restored = alice_client.post(f"{MESSAGES}/{message.pk}/unarchive")
    assert restored.json()["is_archived"] is False
    assert ids(alice_client.get(MESSAGES)) == [message.pk]


@pytest.mark.parametrize("action", ACTIONS)
def test_another_subscribers_message_is_404_and_untouched(action, alice_client, bob, make_message):
    now = timezone.now()
    theirs = make_message(
        bob, read_at=now if action == "unread" else None, archived_at=now if action == "unarchive" else None
    )
    before = InboxMessage.objects.values().get(pk=theirs.pk)

    response = alice_client.post(f"{MESSAGES}/{theirs.pk}/{action}")

    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"
    assert InboxMessage.objects.values().get(pk=theirs.pk) == before


@pytest.mark.parametrize("action", ACTIONS)
def test_another_environments_message_is_404_and_untouched(action, alice, mallory, make_message):
    """Tenant B's token cannot touch tenant A's message."""
    now = timezone.now()
    ours = make_message(
        alice, read_at=now if action == "unread" else None, archived_at=now if action == "unarchive" else None
    )
    before = InboxMessage.objects.values().get(pk=ours.pk)

    response = inbox_client_for(mallory).post(f"{MESSAGES}/{ours.pk}/{action}")

    assert response.status_code == 404
    assert InboxMessage.objects.values().get(pk=ours.pk) == before


@pytest.mark.parametrize("message_id", ["0", "999999", str(2**70)])
def test_unknown_message_ids_are_404(alice_client, message_id):
    response = alice_client.post(f"{MESSAGES}/{message_id}/read")
    assert response.status_code == 404


def test_mark_needs_a_token(anon_api, tenant, alice, make_message):
    message = make_message(alice)
    assert anon_api.post(f"{MESSAGES}/{message.pk}/read").status_code == 401
    assert tenant.client.post(f"{MESSAGES}/{message.pk}/read").status_code == 401
    message.refresh_from_db()
    assert message.read_at is None


def test_get_on_a_mark_endpoint_is_405(alice_client, alice, make_message):
    message = make_message(alice)
    assert alice_client.get(f"{MESSAGES}/{message.pk}/read").status_code == 405


def test_mark_query_count(alice_client, alice, make_message, django_assert_max_num_queries):
    message = make_message(alice)
    # select + update + the analytics count (one INSERT); savepoint statements of the test transaction aside
    with django_assert_max_num_queries(5) as captured:
        alice_client.post(f"{MESSAGES}/{message.pk}/read")
    real = [q["sql"] for q in captured.captured_queries if "SAVEPOINT" not in q["sql"].upper()]
    assert len(real) == 3, real


def test_mark_pushes_message_updated_after_commit(
    alice_client, alice, make_message, django_capture_on_commit_callbacks
):
    message = make_message(alice)
    with django_capture_on_commit_callbacks() as callbacks:
        alice_client.post(f"{MESSAGES}/{message.pk}/read")
    assert len(callbacks) == 1  # the push waits for the commit

    with django_capture_on_commit_callbacks() as callbacks:
        alice_client.post(f"{MESSAGES}/{message.pk}/read")
    assert callbacks == []  # nothing changed: nothing pushed


# --- marking all -------------------------------------------------------------------------------


def test_read_all(alice_client, alice, bob, mallory, make_message, django_capture_on_commit_callbacks):
    now = timezone.now()
    earlier = now - timedelta(hours=1)
    a = make_message(alice)
    b = make_message(alice, seen_at=earlier)
    make_message(alice, read_at=earlier, seen_at=earlier)
    other = make_message(bob)
    foreign = make_message(mallory)

    with django_capture_on_commit_callbacks() as callbacks:
        response = alice_client.post(f"{MESSAGES}/read-all")

    assert response.status_code == 200
    assert response.json() == {"updated": 2}
    assert len(callbacks) == 1
    a.refresh_from_db(), b.refresh_from_db(), other.refresh_from_db(), foreign.refresh_from_db()
    assert a.read_at is not None and a.seen_at is not None
    assert b.seen_at == earlier  # an earlier seen_at is kept
    assert other.read_at is None and foreign.read_at is None
    assert alice_client.get(COUNTS).json() == {"unread": 0, "unseen": 0, "total": 3}


def test_read_all_with_nothing_to_do_pushes_nothing(alice_client, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks() as callbacks:
        assert alice_client.post(f"{MESSAGES}/read-all").json() == {"updated": 0}
    assert callbacks == []


def test_seen_all(alice_client, alice, bob, make_message):
    a = make_message(alice)
    other = make_message(bob)

    assert alice_client.post(f"{MESSAGES}/seen-all").json() == {"updated": 1}

    a.refresh_from_db(), other.refresh_from_db()
    assert a.seen_at is not None and a.read_at is None
    assert other.seen_at is None
    assert alice_client.get(COUNTS).json() == {"unread": 1, "unseen": 0, "total": 1}


def test_read_all_is_scoped_to_the_environment(alice, mallory, make_message):
    ours = make_message(alice)
    assert inbox_client_for(mallory).post(f"{MESSAGES}/read-all").json() == {"updated": 0}
    ours.refresh_from_db()
    assert ours.read_at is None


def test_read_all_query_count(alice_client, alice, make_message, django_assert_max_num_queries):
    for _ in range(20):
        make_message(alice)
    with django_assert_max_num_queries(4) as captured:
        alice_client.post(f"{MESSAGES}/read-all")
    real = [q["sql"] for q in captured.captured_queries if "SAVEPOINT" not in q["sql"].upper()]
    assert len(real) == 2, real  # the UPDATE (… RETURNING) + the analytics count (one INSERT)


def test_bulk_endpoints_need_a_token(anon_api, tenant):
    for path in (f"{MESSAGES}/read-all", f"{MESSAGES}/seen-all"):
        assert anon_api.post(path).status_code == 401
        assert tenant.client.post(path).status_code == 401


def test_new_subscriber_from_another_environment_cannot_guess_ids(alice, make_message, other_tenant):
    """Even a brand-new subscriber in another environment walking ids gets 404s."""
    target = make_message(alice)
    stranger = SubscriberFactory(environment=other_tenant.environment)
    client = inbox_client_for(stranger)
    for message_id in range(max(1, target.pk - 2), target.pk + 3):
        assert client.post(f"{MESSAGES}/{message_id}/archive").status_code == 404
