"""The message page: the email rendered in a sandboxed iframe that can run nothing in the admin's
origin, its plain-text part, attempts and provider callbacks read-only; resend and close-the-circuit
recorded; the integration's price editable."""

from __future__ import annotations

import re
from decimal import Decimal
from html.parser import HTMLParser
from typing import Any

import pytest
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.contrib.admin.models import LogEntry
from django.urls import reverse
from django.utils import timezone

from apps.delivery.models import Integration, Message
from tests.admin_trace import HOSTILE_HTML, HOSTILE_TEXT, Trace, trace_fixture  # noqa: F401
from tests.core.test_csp import assert_safe_page
from tests.delivery.test_admin import change_form_data
from tests.factories import IntegrationFactory
from tests.workflows.conftest import comment_workflow  # noqa: F401

pytestmark = pytest.mark.django_db


class _Frames(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.frames: list[dict[str, str | None]] = []
        self.scripts: list[dict[str, str | None]] = []
        self.pre: list[str] = []
        self._in_pre = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "iframe":
            self.frames.append(dict(attrs))
        if tag == "script":
            self.scripts.append(dict(attrs))
        if tag == "pre":
            self._in_pre = True
            self.pre.append("")

    def handle_endtag(self, tag: str) -> None:
        if tag == "pre":
            self._in_pre = False

    def handle_data(self, data: str) -> None:
        if self._in_pre:
            self.pre[-1] += data


def test_email_is_shown_in_a_sandboxed_frame_that_runs_nothing(admin_client: Any, trace: Trace) -> None:
    response = admin_client.get(reverse("admin:delivery_message_change", args=[trace.email.pk]))
    # The page itself: no inline script, no handler attribute, scripts from 'self' only; inline styles
    # allowed for the email's own styling (the srcdoc frame inherits the page's policy).
    assert_safe_page(response, inline_styles=True)
    html = response.content.decode()
    page = _Frames()
    page.feed(html)

    [frame] = page.frames
    assert frame["sandbox"] == ""  # every restriction: no allow-scripts, no allow-same-origin
    assert frame["srcdoc"] == HOSTILE_HTML  # the whole email, as the attribute's (unescaped) value
    # ... written escaped: the email's markup never becomes part of the admin page.
    assert "<script>parent.document" not in html and 'onerror="alert(1)"' not in html
    assert "&lt;script&gt;parent.document.title=&quot;pwned&quot;&lt;/script&gt;" in html
    assert all(script.get("src") for script in page.scripts)  # only the admin's own files

    assert HOSTILE_TEXT in page.pre  # the plain-text part, escaped inside its <pre>
    assert "<script>alert(2)" not in html


def test_other_channels_show_their_body_as_text(admin_client: Any, trace: Trace) -> None:
    sms = Message.objects.create(
        environment=trace.email.environment, step_id="s", channel="sms", recipient="+15550001", body="<b>hi</b>"
    )
    html = admin_client.get(reverse("admin:delivery_message_change", args=[sms.pk])).content.decode()
    assert "<iframe" not in html
    assert '<pre class="clarion-text">&lt;b&gt;hi&lt;/b&gt;</pre>' in html


def test_attempts_and_provider_callbacks_are_read_only_rows(admin_client: Any, trace: Trace) -> None:
    html = admin_client.get(reverse("admin:delivery_message_change", args=[trace.email.pk])).content.decode()
    assert "HTTP 500" in html and "&lt;b&gt;no&lt;/b&gt;" in html and "&lt;i&gt;mailbox full&lt;/i&gt;" in html
    editable = re.findall(r'<(?:input(?![^>]*type="hidden")|textarea|select)[^>]*name="(?:attempts_log|events)-', html)
    assert editable == []  # the row ids travel as hidden inputs, nothing else


def test_resend_is_recorded_on_the_original(
    admin_client: Any, trace: Trace, django_capture_on_commit_callbacks: Any
) -> None:
    with django_capture_on_commit_callbacks(execute=False):
        admin_client.post(
            "/admin/delivery/message/", {"action": "resend", ACTION_CHECKBOX_NAME: [trace.email.pk]}, follow=True
        )
    copy = Message.objects.get(data__resend_of=trace.email.pk)
    entry = LogEntry.objects.get(object_id=str(trace.email.pk), content_type__model="message")
    assert entry.get_change_message() == f"Resent from the admin as message {copy.pk}."


def test_close_circuit_goes_through_the_service_and_is_recorded(admin_client: Any, tenant: Any) -> None:
    integration = IntegrationFactory(
        environment=tenant.environment, provider="smtp", circuit_failures=5, circuit_open_until=timezone.now()
    )
    admin_client.post(
        "/admin/delivery/integration/", {"action": "reset_circuit", ACTION_CHECKBOX_NAME: [integration.pk]}
    )
    integration.refresh_from_db()
    assert integration.circuit_failures == 0 and integration.circuit_open_until is None
    entry = LogEntry.objects.get(object_id=str(integration.pk), content_type__model="integration")
    assert entry.get_change_message() == "Closed the circuit breaker from the admin."


def test_integration_price_is_edited_in_the_admin(admin_client: Any, tenant: Any) -> None:
    integration = IntegrationFactory(
        environment=tenant.environment, provider="sendgrid", credentials={"api_key": "SG.do-not-show-me-9f3c"}
    )
    url = reverse("admin:delivery_integration_change", args=[integration.pk])
    assert 'name="price"' in admin_client.get(url).content.decode()
    response = admin_client.post(url, change_form_data(integration, price="0.000850"))
    assert response.status_code == 302, response.content.decode()[:1000]
    assert Integration.objects.get(pk=integration.pk).price == Decimal("0.000850")
    admin_client.post(url, change_form_data(integration, price=""))
    assert Integration.objects.get(pk=integration.pk).price is None
