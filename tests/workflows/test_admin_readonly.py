"""The Run page: its decisions as a readable table (code and plain words), its messages linked;
the digest bucket's "send now" still works and is recorded."""

from __future__ import annotations

import re
from typing import Any

import pytest
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.contrib.admin.models import LogEntry
from django.urls import reverse
from django.utils.html import escape

from apps.workflows.models import DigestBucket, StepRun
from apps.workflows.reasons import REASON_WORDS
from tests.admin_trace import Trace, trace_fixture  # noqa: F401

pytestmark = pytest.mark.django_db

# A cell's classes: Django's "field-<name>" among the admin theme's (django-unfold: utility classes
# and "field-tabular").
CELL = re.compile(r'<td class="[^"]*?(?<![\w-])field-(?!tabular\b)(\w+)[^"]*"[^>]*>(.*?)</td>', re.DOTALL)


def inline_rows(html: str) -> list[dict[str, str]]:
    """The cells of every tabular inline row, by field name, as text (tags dropped)."""
    rows = []
    for row in html.split('<tr class="form-row')[1:]:
        row = row.split("</tr>")[0]
        rows.append({name: re.sub(r"<[^>]+>", "", cell).strip() for name, cell in CELL.findall(row)})
    return rows


def test_run_page_shows_decisions_in_plain_words_and_links_messages(admin_client: Any, trace: Trace) -> None:
    StepRun.objects.create(
        run=trace.run, step_id="mail", step_type="email", decision="skipped", reason="no_address",
        detail={"channel": "email", "message": "the subscriber has no email address"},
    )  # fmt: skip
    html = admin_client.get(reverse("admin:workflows_run_change", args=[trace.run.pk])).content.decode()
    assert "Step decisions" in html
    decisions = [
        (row["step_id"], row["decision"], row["reason_code"], row["reason_in_words"])
        for row in inline_rows(html)
        if "decision" in row
    ]
    assert decisions == [
        ("inbox", "Executed", "sent", escape(REASON_WORDS["sent"])),  # no message from the step: the code's words
        ("wait", "Waiting", "delay", escape(REASON_WORDS["delay"])),
        ("mail", "Skipped", "no_address", "the subscriber has no email address"),
    ]
    assert "&quot;channel&quot;: &quot;email&quot;" in html  # the detail, indented and escaped
    for message in trace.run.messages.all():
        url = reverse("admin:delivery_message_change", args=[message.pk])
        assert f'<a href="{url}">message {message.pk}</a>' in html


def test_send_digest_now_is_recorded(admin_client: Any, trace: Trace, django_capture_on_commit_callbacks: Any) -> None:
    with django_capture_on_commit_callbacks(execute=False):
        response = admin_client.post(
            "/admin/workflows/digestbucket/", {"action": "flush", ACTION_CHECKBOX_NAME: [trace.bucket.pk]}, follow=True
        )
    assert response.status_code == 200
    trace.bucket.refresh_from_db()
    assert trace.bucket.status != DigestBucket.Status.OPEN
    entry = LogEntry.objects.get(object_id=str(trace.bucket.pk), content_type__model="digestbucket")
    assert entry.get_change_message() == "Sent now from the admin."
