"""The inbox API the widget needs: filters, multi-filter counts, the change feed, snooze, delete,
action buttons, filtered bulk writes, preferences, server-minted tokens and CORS / allowed origins."""

from __future__ import annotations

import ast
from datetime import timedelta

import pytest
import time_machine
from django.utils import timezone
from django.utils.dateparse import parse_datetime
from rest_framework.test import APIClient

from apps.inbox.auth import inbox_token_read
from apps.inbox.models import InboxMessage
from apps.inbox.origins import origin_matches
from apps.inbox.services import inbox_snooze_wake
from apps.preferences.models import Category, PreferenceChange
from apps.tenancy.origins import allowed_origins_forget, origin_entry_valid, origin_normalize
from tests.inbox.conftest import inbox_client_for

BASE = "/api/v1/inbox"
MESSAGES = f"{BASE}/messages"
COUNTS = f"{BASE}/counts"
CHANGES = f"{BASE}/changes"


def ids(response):
    assert response.status_code == 200, response.content
    return [m["id"] for m in response.json()["data"]]


@pytest.fixture(autouse=True)
def _fresh_origin_cache():
    allowed_origins_forget()
    yield
    allowed_origins_forget()


# --- list filters ------------------------------------------------------------------------------


def test_tags_filter_any_of(alice_client, alice, make_message):
    a = make_message(alice, tags=["billing", "urgent"])
    b = make_message(alice, tags=["social"])
    make_message(alice, tags=[])

    assert ids(alice_client.get(MESSAGES, {"tags": "urgent"})) == [a.pk]
    assert ids(alice_client.get(MESSAGES, {"tags": "urgent,social"})) == [b.pk, a.pk]
    assert ids(alice_client.get(f"{MESSAGES}?tags=social&tags=billing")) == [b.pk, a.pk]
    assert ids(alice_client.get(MESSAGES, {"tags": "nothing"})) == []


def test_several_categories_seen_and_all_archived(alice_client, alice, make_message):
    now = timezone.now()
    a = make_message(alice, category_key="comments")
    b = make_message(alice, category_key="billing", seen_at=now)
    make_message(alice, category_key="security")
    archived = make_message(alice, category_key="comments", archived_at=now)

    assert ids(alice_client.get(MESSAGES, {"category": "comments,billing"})) == [b.pk, a.pk]
    assert ids(alice_client.get(MESSAGES, {"seen": "true"})) == [b.pk]
    assert ids(alice_client.get(MESSAGES, {"archived": "all", "category": "comments"})) == [archived.pk, a.pk]


def test_snoozed_and_deleted_are_hidden(alice_client, alice, make_message):
    now = timezone.now()
    live = make_message(alice)
    snoozed = make_message(alice, snoozed_until=now + timedelta(hours=1))
    woke = make_message(alice, snoozed_until=now - timedelta(minutes=1))
    make_message(alice, deleted_at=now)

    assert ids(alice_client.get(MESSAGES)) == [woke.pk, live.pk]
    assert ids(alice_client.get(MESSAGES, {"snoozed": "true"})) == [snoozed.pk]
    assert alice_client.get(COUNTS).json() == {"unread": 2, "unseen": 2, "total": 2}


@pytest.mark.parametrize("params", [{"archived": "maybe"}, {"snoozed": "1x"}, {"tags": "x" * 101}, {"seen": "no?"}])
def test_bad_filters_are_400(alice_client, params):
    response = alice_client.get(MESSAGES, params)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "validation_error"


def test_filtered_list_is_one_query(alice_client, alice, make_message, django_assert_num_queries):
    for i in range(15):
        make_message(alice, tags=["a"] if i % 2 else ["b"], category_key="c")
    with django_assert_num_queries(1):
        response = alice_client.get(MESSAGES, {"limit": 5, "tags": "a", "category": "c", "read": "false"})
    assert len(response.json()["data"]) == 5


def test_message_shape_has_actions_tags_and_cursor(alice_client, alice, make_message):
    actions = [{"id": "a1", "label": "Accept", "url": "https://x.test/a", "kind": "primary", "completed_at": None}]
    message = make_message(alice, actions=actions, tags=["t"])
    item = alice_client.get(MESSAGES).json()["data"][0]
    assert item["actions"] == actions
    assert item["tags"] == ["t"]
    assert item["seq"] == message.seq > 0
    assert item["is_snoozed"] is False and item["is_deleted"] is False


# --- counts for several filters -----------------------------------------------------------------


def test_counts_for_several_filters_in_one_query(alice_client, alice, bob, make_message, django_assert_num_queries):
    now = timezone.now()
    make_message(alice, category_key="billing")
    make_message(alice, category_key="billing", read_at=now, seen_at=now)
    make_message(alice, category_key="comments", tags=["vip"])
    make_message(alice, category_key="comments", archived_at=now)
    make_message(bob, category_key="billing")
    filters = [
        {"read": False},
        {"category": "billing"},
        {"category": ["comments"], "read": False},
        {"archived": True},
        {"archived": "all"},
        {"tags": ["vip"]},
    ]
    with django_assert_num_queries(1):
        response = alice_client.post(COUNTS, {"filters": filters}, format="json")
    assert response.status_code == 200, response.content
    counts = [c["count"] for c in response.json()["counts"]]
    assert counts == [2, 2, 1, 1, 4, 1]
    assert response.json()["counts"][2]["filter"] == {"read": False, "categories": ["comments"]}


@pytest.mark.parametrize("body", [{}, {"filters": []}, {"filters": [{"read": "x"}]}, {"filters": [{}] * 11}])
def test_counts_bad_filters_are_400(alice_client, body):
    response = alice_client.post(COUNTS, body, format="json")
    assert response.status_code == 400, response.content


# --- the change feed ----------------------------------------------------------------------------


def test_changes_after_a_cursor_replays_creates_and_updates(alice_client, alice, bob, make_message):
    first = make_message(alice)
    cursor = alice_client.get(MESSAGES).json()["data"][0]["seq"]
    second = make_message(alice, title="new")
    make_message(bob)
    alice_client.post(f"{MESSAGES}/{first.pk}/read")
    alice_client.post(f"{MESSAGES}/{second.pk}/archive")

    response = alice_client.get(CHANGES, {"after": cursor})

    assert response.status_code == 200
    body = response.json()
    # each message once, at its latest version, in change order
    assert [m["id"] for m in body["data"]] == [first.pk, second.pk]
    assert body["data"][0]["is_read"] is True and body["data"][1]["is_archived"] is True
    assert body["cursor"] == body["data"][-1]["seq"] > cursor
    assert body["has_more"] is False
    assert body["counts"] == {"unread": 0, "unseen": 0, "total": 1}
    assert body["overlap"] > 0
    # nothing after the last cursor
    assert alice_client.get(CHANGES, {"after": body["cursor"]}).json()["data"] == []


def test_changes_page_through(alice_client, alice, make_message):
    made = [make_message(alice).pk for _ in range(5)]
    seen, after = [], 0
    while True:
        body = alice_client.get(CHANGES, {"after": after, "limit": 2}).json()
        seen += [m["id"] for m in body["data"]]
        after = body["cursor"]
        if not body["has_more"]:
            break
    assert seen == made


def test_bulk_write_moves_the_cursor_of_every_row(alice_client, alice, make_message):
    a, b = make_message(alice), make_message(alice)
    cursor = max(a.seq, b.seq)
    alice_client.post(f"{MESSAGES}/read-all")
    assert {m["id"] for m in alice_client.get(CHANGES, {"after": cursor}).json()["data"]} == {a.pk, b.pk}


def test_changes_without_a_cursor_gives_the_current_one(alice_client, alice, make_message):
    message = make_message(alice)
    body = alice_client.get(CHANGES).json()
    assert body["data"] == [] and body["has_more"] is False
    assert body["cursor"] > message.seq
    assert body["counts"] == {"unread": 1, "unseen": 1, "total": 1}


@pytest.mark.parametrize(
    "params", [{"after": ""}, {"after": "x"}, {"after": -1}, {"after": 0, "limit": 0}, {"after": 0, "limit": 501}]
)
def test_changes_bad_params_are_400(alice_client, params):
    assert alice_client.get(CHANGES, params).status_code == 400


def test_changes_are_scoped(alice, mallory, make_message):
    make_message(alice)
    assert inbox_client_for(mallory).get(CHANGES, {"after": 0}).json()["data"] == []


# --- snooze ---------------------------------------------------------------------------------------


def test_snooze_hides_until_the_time_and_wake_pushes_it_back(alice_client, alice, make_message):
    message = make_message(alice)
    until = timezone.now() + timedelta(hours=2)

    response = alice_client.post(f"{MESSAGES}/{message.pk}/snooze", {"until": until.isoformat()}, format="json")

    assert response.status_code == 200, response.content
    assert response.json()["is_snoozed"] is True
    assert ids(alice_client.get(MESSAGES)) == []
    assert alice_client.get(COUNTS).json()["total"] == 0
    message.refresh_from_db()
    seq = message.seq

    assert inbox_snooze_wake(message_id=message.pk, seq=seq) is False  # not yet
    with time_machine.travel(until + timedelta(seconds=1)):
        assert ids(alice_client.get(MESSAGES)) == [message.pk]  # the list honours the time by itself
        assert inbox_snooze_wake(message_id=message.pk, seq=seq) is True
        assert inbox_snooze_wake(message_id=message.pk, seq=seq) is False  # idempotent
    message.refresh_from_db()
    assert message.snoozed_until is None and message.seq > seq


def test_unsnooze(alice_client, alice, make_message):
    message = make_message(alice, snoozed_until=timezone.now() + timedelta(days=1))
    response = alice_client.post(f"{MESSAGES}/{message.pk}/unsnooze")
    assert response.json()["is_snoozed"] is False
    assert ids(alice_client.get(MESSAGES)) == [message.pk]


@pytest.mark.parametrize(
    ("until", "status"),
    [(timedelta(hours=-1), 422), (timedelta(days=400), 422), (None, 400)],
)
def test_snooze_validation(alice_client, alice, make_message, until, status):
    message = make_message(alice)
    body = {"until": (timezone.now() + until).isoformat()} if until is not None else {"until": "tomorrow"}
    response = alice_client.post(f"{MESSAGES}/{message.pk}/snooze", body, format="json")
    assert response.status_code == status, response.content


def test_snooze_someone_elses_message_is_404(alice_client, bob, make_message):
    theirs = make_message(bob)
    until = (timezone.now() + timedelta(hours=1)).isoformat()
    assert alice_client.post(f"{MESSAGES}/{theirs.pk}/snooze", {"until": until}, format="json").status_code == 404


# --- delete ---------------------------------------------------------------------------------------


def test_delete_erases_content_and_leaves_a_tombstone(
    alice_client, alice, make_message, django_capture_on_commit_callbacks
):
    message = make_message(alice, title="secret", body="b", data={"x": 1}, tags=["t"])
    before = message.seq
    with django_capture_on_commit_callbacks() as callbacks:
        response = alice_client.delete(f"{MESSAGES}/{message.pk}")
    assert response.status_code == 204
    assert len(callbacks) == 1
    message.refresh_from_db()
    assert message.deleted_at is not None and message.title == "" and message.data == {} and message.tags == []
    assert ids(alice_client.get(MESSAGES)) == []
    assert ids(alice_client.get(MESSAGES, {"archived": "all"})) == []
    changes = alice_client.get(CHANGES, {"after": before}).json()["data"]
    assert [(m["id"], m["is_deleted"]) for m in changes] == [(message.pk, True)]
    # gone: a second delete or a mark is 404
    assert alice_client.delete(f"{MESSAGES}/{message.pk}").status_code == 404
    assert alice_client.post(f"{MESSAGES}/{message.pk}/read").status_code == 404


def test_delete_someone_elses_message_is_404(alice, mallory, make_message):
    ours = make_message(alice)
    assert inbox_client_for(mallory).delete(f"{MESSAGES}/{ours.pk}").status_code == 404
    ours.refresh_from_db()
    assert ours.deleted_at is None


# --- action buttons -------------------------------------------------------------------------------

ACTIONS = [
    {"id": "accept", "label": "Accept", "url": "https://x.test/a", "kind": "primary", "completed_at": None},
    {"id": "decline", "label": "Decline", "url": "", "kind": "secondary", "completed_at": None},
]


def test_complete_an_action(alice_client, alice, make_message):
    message = make_message(alice, actions=ACTIONS)

    response = alice_client.post(f"{MESSAGES}/{message.pk}/actions/accept/complete")

    assert response.status_code == 200, response.content
    data = response.json()
    assert data["is_read"] is True
    accept, decline = data["actions"]
    assert parse_datetime(accept["completed_at"]) is not None
    assert decline["completed_at"] is None
    # idempotent: the first time is kept
    again = alice_client.post(f"{MESSAGES}/{message.pk}/actions/accept/complete").json()
    assert again["actions"][0]["completed_at"] == accept["completed_at"]


def test_unknown_action_is_404(alice_client, alice, bob, make_message):
    message = make_message(alice, actions=ACTIONS)
    assert alice_client.post(f"{MESSAGES}/{message.pk}/actions/nope/complete").status_code == 404
    theirs = make_message(bob, actions=ACTIONS)
    assert alice_client.post(f"{MESSAGES}/{theirs.pk}/actions/accept/complete").status_code == 404
    theirs.refresh_from_db()
    assert theirs.actions == ACTIONS


# --- bulk by category -----------------------------------------------------------------------------


def test_read_all_by_category(alice_client, alice, make_message, django_capture_on_commit_callbacks):
    billing = make_message(alice, category_key="billing")
    comment = make_message(alice, category_key="comments")

    response = alice_client.post(f"{MESSAGES}/read-all", {"category": "billing"}, format="json")

    assert response.json() == {"updated": 1}
    billing.refresh_from_db(), comment.refresh_from_db()
    assert billing.read_at is not None and comment.read_at is None


def test_archive_all_optionally_only_read_or_by_category(alice_client, alice, bob, make_message):
    now = timezone.now()
    read = make_message(alice, read_at=now, seen_at=now, category_key="a")
    unread = make_message(alice, category_key="a")
    other = make_message(alice, category_key="b")
    theirs = make_message(bob)

    assert alice_client.post(f"{MESSAGES}/archive-all", {"read": True}, format="json").json() == {"updated": 1}
    assert ids(alice_client.get(MESSAGES)) == [other.pk, unread.pk]
    assert alice_client.post(f"{MESSAGES}/archive-all", {"category": ["a"]}, format="json").json() == {"updated": 1}
    assert ids(alice_client.get(MESSAGES)) == [other.pk]
    assert alice_client.post(f"{MESSAGES}/archive-all").json() == {"updated": 1}
    assert ids(alice_client.get(MESSAGES, {"archived": "true"})) == [other.pk, unread.pk, read.pk]
    theirs.refresh_from_db()
    assert theirs.archived_at is None


def test_archive_all_is_one_query(alice_client, alice, make_message, django_assert_max_num_queries):
    for _ in range(10):
        make_message(alice)
    with django_assert_max_num_queries(3) as captured:
        alice_client.post(f"{MESSAGES}/archive-all", {"category": "x,y"}, format="json")
    # none matches: no analytics count to write either
    assert len([q for q in captured.captured_queries if "SAVEPOINT" not in q["sql"].upper()]) == 1


# --- preferences ----------------------------------------------------------------------------------


def test_preferences_read_and_update(alice_client, alice, tenant):
    Category.objects.create(environment=tenant.environment, key="billing", name="Billing")

    state = alice_client.get(f"{BASE}/preferences").json()
    assert state["channels"]["email"] is True
    assert [c["key"] for c in state["categories"]] == ["billing"]

    response = alice_client.patch(
        f"{BASE}/preferences", {"channels": {"sms": False}, "categories": {"billing": {"email": False}}}, format="json"
    )
    assert response.status_code == 200, response.content
    assert response.json()["channels"]["sms"] is False
    assert response.json()["categories"][0]["channels"]["email"] is False
    assert alice_client.get(f"{BASE}/preferences").json() == response.json()
    sources = set(PreferenceChange.objects.filter(subscriber=alice).values_list("source", flat=True))
    assert sources == {PreferenceChange.Source.INBOX}  # the history names the widget


def test_preferences_errors(alice_client, anon_api, tenant):
    assert alice_client.patch(f"{BASE}/preferences", {}, format="json").status_code == 400
    assert alice_client.patch(f"{BASE}/preferences", {"channels": {"fax": False}}, format="json").status_code == 400
    unknown = alice_client.patch(f"{BASE}/preferences", {"categories": {"nope": {"email": False}}}, format="json")
    assert unknown.status_code == 422
    assert anon_api.get(f"{BASE}/preferences").status_code == 401
    assert tenant.client.get(f"{BASE}/preferences").status_code == 401  # an sk_ key is not an inbox token


# --- server-minted tokens -------------------------------------------------------------------------


def test_mint_a_short_lived_token_with_the_secret_key(tenant, alice):
    response = tenant.client.post(f"{BASE}/tokens", {"subscriber_id": "alice", "ttl_seconds": 120}, format="json")

    assert response.status_code == 201, response.content
    data = response.json()
    assert inbox_token_read(data["token"]) == (tenant.environment.pk, alice.pk)
    assert abs(parse_datetime(data["expires_at"]) - (timezone.now() + timedelta(seconds=120))) < timedelta(seconds=5)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {data['token']}")
    assert client.get(COUNTS).status_code == 200
    with time_machine.travel(timezone.now() + timedelta(seconds=125)):
        assert inbox_token_read(data["token"]) is None
        assert client.get(COUNTS).status_code == 401


def test_mint_needs_the_secret_key(anon_api, tenant, alice_client):
    assert anon_api.post(f"{BASE}/tokens", {"subscriber_id": "a"}, format="json").status_code == 401
    assert alice_client.post(f"{BASE}/tokens", {"subscriber_id": "a"}, format="json").status_code == 401
    pk_client = APIClient()
    pk_client.credentials(HTTP_AUTHORIZATION=f"Bearer {tenant.publishable_key}")
    assert pk_client.post(f"{BASE}/tokens", {"subscriber_id": "a"}, format="json").status_code == 401


@pytest.mark.parametrize("ttl", [10, 10**9, "soon"])
def test_mint_ttl_bounds(tenant, ttl):
    assert (
        tenant.client.post(f"{BASE}/tokens", {"subscriber_id": "a", "ttl_seconds": ttl}, format="json").status_code
        == 400
    )


# --- allowed origins and CORS --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("origin", "allowed", "ok"),
    [
        ("https://app.example.com", ["https://app.example.com"], True),
        ("https://APP.example.com:443", ["https://app.example.com/"], True),
        ("http://app.example.com", ["https://app.example.com"], False),
        ("https://a.b.example.com", ["https://*.example.com"], True),
        ("https://example.com", ["https://*.example.com"], False),
        ("https://evilexample.com", ["https://*.example.com"], False),
        ("http://localhost:3000", ["http://localhost:3000"], True),
        ("http://localhost:3001", ["http://localhost:3000"], False),
        ("null", ["https://app.example.com"], False),
    ],
)
def test_origin_matching(origin, allowed, ok):
    assert origin_matches(origin, allowed) is ok


def test_origin_helpers():
    assert origin_normalize("https://x.test:443/") == "https://x.test"
    assert origin_normalize("ftp://x.test") is None
    assert origin_entry_valid("https://*.x.test") and origin_entry_valid("http://localhost:8000")
    assert not origin_entry_valid("x.test") and not origin_entry_valid("https://x.test/path")


@pytest.fixture
def locked_down(tenant):
    tenant.environment.allowed_origins = ["https://app.example.com"]
    tenant.environment.save(update_fields=["allowed_origins"])
    allowed_origins_forget()
    return tenant


def test_preflight_answers_any_origin(anon_api):
    response = anon_api.options(
        COUNTS,
        HTTP_ORIGIN="https://anywhere.test",
        HTTP_ACCESS_CONTROL_REQUEST_METHOD="GET",
        HTTP_ACCESS_CONTROL_REQUEST_HEADERS="authorization",
    )
    assert response.status_code == 204
    assert response["Access-Control-Allow-Origin"] == "https://anywhere.test"
    assert "Authorization" in response["Access-Control-Allow-Headers"]
    assert "PATCH" in response["Access-Control-Allow-Methods"]
    assert "Access-Control-Allow-Credentials" not in response


def test_allowed_origin_gets_cors_headers(locked_down, alice_client):
    response = alice_client.get(COUNTS, HTTP_ORIGIN="https://app.example.com")
    assert response.status_code == 200
    assert response["Access-Control-Allow-Origin"] == "https://app.example.com"
    assert "Origin" in response["Vary"]


def test_other_origin_is_refused_before_anything_happens(locked_down, alice_client, alice, make_message):
    message = make_message(alice)
    response = alice_client.post(f"{MESSAGES}/{message.pk}/read", HTTP_ORIGIN="https://evil.test")
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "origin_not_allowed"
    assert response["Access-Control-Allow-Origin"] == "https://evil.test"  # readable refusal, no data
    assert "data" not in response.json()
    message.refresh_from_db()
    assert message.read_at is None
    assert alice_client.get(MESSAGES, HTTP_ORIGIN="https://evil.test").status_code == 403


def test_no_origin_header_and_empty_list_are_allowed(tenant, alice_client):
    assert alice_client.get(COUNTS).status_code == 200  # a server, not a browser
    assert alice_client.get(COUNTS, HTTP_ORIGIN="https://anything.test").status_code == 200  # no list: open


def test_session_checks_the_origin(locked_down, anon_api):
    body = {
        "publishable_key": locked_down.publishable_key,
        "subscriber_id": "alice",
        "subscriber_hash": locked_down.subscriber_hash("alice"),
    }
    refused = anon_api.post(f"{BASE}/session", body, format="json", HTTP_ORIGIN="https://evil.test")
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "origin_not_allowed"
    assert "token" not in refused.json()
    ok = anon_api.post(f"{BASE}/session", body, format="json", HTTP_ORIGIN="https://app.example.com")
    assert ok.status_code == 201
    assert ok["Access-Control-Allow-Origin"] == "https://app.example.com"
    own = anon_api.post(f"{BASE}/session", body, format="json", HTTP_ORIGIN="http://testserver")
    assert own.status_code == 201  # the server's own pages (the demo) always work


def test_unauthenticated_error_is_readable_cross_origin(anon_api):
    response = anon_api.get(COUNTS, HTTP_ORIGIN="https://app.example.com")
    assert response.status_code == 401
    assert response["Access-Control-Allow-Origin"] == "https://app.example.com"  # so the widget can renew


def test_origin_lookup_is_cached(locked_down, alice_client, django_assert_num_queries):
    alice_client.get(COUNTS, HTTP_ORIGIN="https://app.example.com")  # warms the cache
    with django_assert_num_queries(1):  # the count only
        assert alice_client.get(COUNTS, HTTP_ORIGIN="https://app.example.com").status_code == 200


def test_existing_message_rows_work_without_new_fields(alice_client, alice):
    """Rows as the engine builds them (no actions / tags given) read as empty lists."""
    row = InboxMessage.objects.create(environment=alice.environment, subscriber=alice, title="t")
    item = alice_client.get(MESSAGES).json()["data"][0]
    assert item["id"] == row.pk and item["actions"] == [] and item["tags"] == [] and item["seq"] == row.seq


def test_snooze_schedules_its_wake_up(alice_client, alice, make_message, settings, django_capture_on_commit_callbacks):
    """Outside inline task mode the snooze writes a one-off django-q2 schedule for its end."""
    from django_q.models import Schedule

    settings.CLARION_TASKS_EAGER = False
    message = make_message(alice)
    until = timezone.now() + timedelta(hours=3)
    with django_capture_on_commit_callbacks(execute=True):
        alice_client.post(f"{MESSAGES}/{message.pk}/snooze", {"until": until.isoformat()}, format="json")
    message.refresh_from_db()
    schedule = Schedule.objects.get(name=f"inbox-snooze-{message.pk}-{message.seq}")
    assert schedule.func == "apps.inbox.tasks.inbox_snooze_wake_task"
    assert schedule.schedule_type == Schedule.ONCE
    assert abs(schedule.next_run - until) < timedelta(seconds=1)
    from apps.inbox.tasks import inbox_snooze_wake_task

    with time_machine.travel(until + timedelta(seconds=1)):
        assert inbox_snooze_wake_task(*ast.literal_eval(schedule.args)) is True  # django-q2 keeps args as a repr
