"""A real trace to look at in the admin: one triggered event walked by the engine, plus a row of every
other trace table (an email message with hostile HTML, its attempt and provider callback, a preference
change, a digest bucket with an entry, a deferred wake-up).

Import the fixture into a test module: ``from tests.admin_trace import trace_fixture  # noqa: F401``; the module
also needs ``comment_workflow`` (``from tests.workflows.conftest import comment_workflow``).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone

from apps.core.models import DeferredTask
from apps.delivery.models import DeliveryAttempt, Message, MessageEvent
from apps.events.models import Event
from apps.inbox.models import InboxMessage
from apps.preferences.models import PreferenceChange
from apps.workflows.models import DigestBucket, DigestEntry, Run

# What a template author (or a payload) could put in an email: none of it may run in the admin.
HOSTILE_HTML = (
    '<html><body><p class="x">Hello "friend" &amp; co</p>'
    '<script>parent.document.title="pwned"</script>'
    '<img src="x" onerror="alert(1)"></body></html>'
)
HOSTILE_TEXT = "plain part </pre><script>alert(2)</script>"
HOSTILE_PAYLOAD = {"post_title": "Hello", "comment": "<script>alert(3)</script>"}


@dataclass
class Trace:
    event: Event
    run: Run
    email: Message
    attempt: DeliveryAttempt
    callback: MessageEvent
    inbox_message: InboxMessage
    preference_change: PreferenceChange
    bucket: DigestBucket
    entry: DigestEntry
    deferred: DeferredTask


@pytest.fixture(name="trace")
def trace_fixture(api: Any, tenant: Any, comment_workflow: Any, django_capture_on_commit_callbacks: Any) -> Trace:
    with django_capture_on_commit_callbacks(execute=True):
        response = api.post(
            "/api/v1/events/trigger",
            {"workflow": "comment-created", "to": ["u1"], "payload": HOSTILE_PAYLOAD, "transaction_id": "t-admin"},
            format="json",
        )
    assert response.status_code == 202, response.content
    event = Event.objects.get(transaction_id="t-admin")
    run = Run.objects.get(event=event)
    assert run.status == Run.Status.WAITING  # in the delay: cancellable
    env = tenant.environment
    email = Message.objects.create(
        environment=env, run=run, step_id="mail", channel="email", subscriber=run.subscriber,
        recipient="u1@example.com", subject="New comment", body=HOSTILE_HTML, status="failed", error="boom",
        data={"text": HOSTILE_TEXT, "workflow": "comment-created"},
    )  # fmt: skip
    attempt = DeliveryAttempt.objects.create(
        message=email, provider="postmark", status="failed", response={"error": "<b>no</b>"}, error="HTTP 500"
    )
    callback = MessageEvent.objects.create(
        environment=env, message=email, provider="postmark", event_type="bounced", status="bounced",
        dedupe_key="d-1", payload={"reason": "<i>mailbox full</i>"},
    )  # fmt: skip
    now = timezone.now()
    bucket = DigestBucket.objects.create(
        environment=env, subscriber=run.subscriber, workflow=comment_workflow, scope="wf:test", step_id="digest",
        digest_key="k", opened_at=now, closes_at=now + timedelta(hours=1), last_event_at=now, entry_count=1,
        leader_run=run,
    )  # fmt: skip
    entry = DigestEntry.objects.create(bucket=bucket, run=run, step_id="digest", content={"title": "<u>x</u>"})
    preference_change = PreferenceChange.objects.create(
        environment=env, subscriber=run.subscriber, source="api",
        changes=[{"kind": "channel", "category": None, "channel": "email", "from": True, "to": False}],
    )  # fmt: skip
    deferred = DeferredTask.objects.create(func="apps.workflows.tasks.advance_runs", args=[[run.pk]], next_try_at=now)
    return Trace(
        event=event,
        run=run,
        email=email,
        attempt=attempt,
        callback=callback,
        inbox_message=InboxMessage.objects.get(subscriber=run.subscriber),
        preference_change=preference_change,
        bucket=bucket,
        entry=entry,
        deferred=deferred,
    )
