"""Clicks on in-app action URLs: the inbox API gives each http(s) action URL a tracked form (the
same signed redirect as email links) which counts the click on the in-app delivery message."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import pytest
from django.test import Client

from apps.delivery.models import Message
from apps.events.services import TriggerRequest, event_trigger
from apps.inbox.models import InboxMessage
from tests.inbox.conftest import inbox_client_for
from tests.workflows.conftest import make_workflow, published_template

pytestmark = pytest.mark.django_db

MESSAGES = "/api/v1/inbox/messages"


@pytest.fixture(autouse=True)
def _public_url(settings: Any) -> None:
    settings.PUBLIC_URL = "http://testserver"


def _in_app(env: Any, alice: Any, capture: Any, *, action_url: str, action: str = "") -> InboxMessage:
    published_template(
        env,
        "comment",
        "in_app",
        title_en="New comment",
        body_en="on {{ payload.post }}",
        action_url=action_url,
        primary_action_label_en="Reply" if action else "",
        primary_action_url=action,
    )
    make_workflow(env, "comment", [{"id": "inbox", "type": "in_app", "template": "comment"}])
    with capture(execute=True):
        event_trigger(environment=env, request=TriggerRequest("comment", [alice.subscriber_id], {"post": "7"}))
    return InboxMessage.objects.get(subscriber=alice)


def _listed(alice: Any) -> dict[str, Any]:
    response = inbox_client_for(alice).get(MESSAGES)
    assert response.status_code == 200, response.content
    (item,) = response.json()["data"]
    return dict(item)


def test_action_url_click_is_counted_and_redirected(tenant, alice, django_capture_on_commit_callbacks):
    row = _in_app(
        tenant.environment,
        alice,
        django_capture_on_commit_callbacks,
        action_url="https://app.example/posts/{{ payload.post }}",
        action="https://app.example/posts/{{ payload.post }}/reply",
    )
    assert row.message_id is not None
    message = Message.objects.get(pk=row.message_id)
    assert message.channel == "in_app" and message.status == Message.Status.SENT

    item = _listed(alice)
    assert item["action_url"] == "https://app.example/posts/7"
    (action,) = item["actions"]
    assert action["url"] == "https://app.example/posts/7/reply"
    assert item["action_tracking_url"].startswith("http://testserver/t/c/")
    assert action["tracking_url"].startswith("http://testserver/t/c/")

    client = Client()
    response = client.get(urlsplit(item["action_tracking_url"]).path)
    assert response.status_code == 302 and response["Location"] == "https://app.example/posts/7"
    message.refresh_from_db()
    assert message.status == Message.Status.CLICKED and message.clicked_at is not None

    response = client.get(urlsplit(action["tracking_url"]).path)
    assert response.status_code == 302 and response["Location"] == "https://app.example/posts/7/reply"
    # The stored action buttons are unchanged: the tracked URL is computed, never written.
    row.refresh_from_db()
    assert "tracking_url" not in row.actions[0]


def test_relative_action_urls_have_no_tracked_form(tenant, alice, django_capture_on_commit_callbacks):
    _in_app(tenant.environment, alice, django_capture_on_commit_callbacks, action_url="/posts/7", action="/reply")
    item = _listed(alice)
    assert item["action_url"] == "/posts/7" and item["action_tracking_url"] == ""
    assert "tracking_url" not in item["actions"][0]  # the widget opens the URL itself


def test_no_action_url_no_tracked_form(tenant, alice, django_capture_on_commit_callbacks):
    _in_app(tenant.environment, alice, django_capture_on_commit_callbacks, action_url="")
    item = _listed(alice)
    assert item["action_url"] == "" and item["action_tracking_url"] == "" and item["actions"] == []


def test_a_message_without_its_delivery_row_has_no_tracked_form(alice, make_message):
    make_message(alice, action_url="https://app.example/x", message=None)
    assert _listed(alice)["action_tracking_url"] == ""


def test_the_list_stays_one_query_with_tracked_urls(
    tenant, alice, django_capture_on_commit_callbacks, django_assert_num_queries
):
    _in_app(tenant.environment, alice, django_capture_on_commit_callbacks, action_url="https://app.example/p")
    client = inbox_client_for(alice)
    with django_assert_num_queries(1):
        response = client.get(MESSAGES)
    assert response.json()["data"][0]["action_tracking_url"]


def test_the_widget_opens_the_tracked_url():
    """The widget prefers the tracked form and falls back to the URL itself (static/clarion/inbox.js)."""
    from django.conf import settings

    source = (settings.BASE_DIR / "static" / "clarion" / "inbox.js").read_text()
    assert "safeUrl(m.action_tracking_url) || safeUrl(m.action_url)" in source
    assert "safeUrl(action.tracking_url) || safeUrl(action.url)" in source
