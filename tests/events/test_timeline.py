"""The event page's timeline: each run → its decisions (code and plain words) → its messages → their
attempts and provider callbacks, linked; a fixed number of queries; the Cancel and Resend buttons,
their permissions and history entries; every value escaped."""

from __future__ import annotations

import ast
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.contrib.admin.models import LogEntry
from django.contrib.auth.models import Permission, User
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone
from django.utils.html import escape

from apps.delivery.models import DeliveryAttempt, Message, MessageEvent
from apps.events.models import Event
from apps.workflows.models import Run, StepRun
from apps.workflows.reasons import REASON_WORDS, reason_in_words
from tests.admin_trace import HOSTILE_HTML, Trace, trace_fixture  # noqa: F401
from tests.core.test_csp import assert_safe_page
from tests.factories import SubscriberFactory
from tests.workflows.conftest import comment_workflow  # noqa: F401

pytestmark = pytest.mark.django_db

HOSTILE_ERROR = '<img src=x onerror="alert(5)">'
HOSTILE_WORDS = "<script>alert(4)</script>"


def page_url(event: Event) -> str:
    return reverse("admin:events_event_change", args=[event.pk])


def cancel_url(event: Event) -> str:
    return reverse("admin:events_event_cancel_runs", args=[event.pk])


def resend_url(event: Event, message: Message) -> str:
    return reverse("admin:events_event_resend_message", args=[event.pk, message.pk])


@pytest.fixture
def crafted(trace: Trace) -> Trace:
    """The trace's event, plus: a retried email (503 then 500, both failed), a skipped step with the
    step's own words, one without (the code's words), a hostile detail; the callback dated."""
    occurred = timezone.now() - timedelta(minutes=3)
    DeliveryAttempt.objects.filter(pk=trace.attempt.pk).update(
        response_code=503, error_kind="server_error", retryable=True, duration_ms=87, error=HOSTILE_ERROR
    )
    DeliveryAttempt.objects.create(
        message=trace.email, provider="postmark", status="failed", response_code=500, error_kind="server_error",
        duration_ms=120, error="HTTP 500 again", response={"body": "<b>still no</b>"},
    )  # fmt: skip
    MessageEvent.objects.filter(pk=trace.callback.pk).update(occurred_at=occurred, description=HOSTILE_ERROR)
    run = trace.run
    StepRun.objects.create(
        run=run, step_id="text", step_type="sms", decision="skipped", reason="no_address",
        detail={"channel": "sms", "message": "the subscriber has no sms address"},
    )  # fmt: skip
    StepRun.objects.create(run=run, step_id="maybe", step_type="email", decision="skipped", reason="condition_false")
    StepRun.objects.create(
        run=run, step_id="odd", step_type="exit", decision="executed", reason="exit", detail={"message": HOSTILE_WORDS}
    )
    return trace


def test_every_level_of_the_trace_is_on_the_page_and_linked(admin_client: Any, crafted: Trace) -> None:
    response = admin_client.get(page_url(crafted.event))
    html = response.content.decode()
    run, email = crafted.run, crafted.email
    # the run, linked, with its subscriber, linked; the environment
    assert f'<a href="{reverse("admin:workflows_run_change", args=[run.pk])}">run {run.pk}</a>' in html
    assert f'<a href="{reverse("admin:subscribers_subscriber_change", args=[run.subscriber_id])}">u1</a>' in html
    assert f"Environment <strong>{crafted.event.environment}</strong>" in html
    # the decisions the engine took (in-app sent, the delay waiting), with code and plain words
    assert f"<td><code>sent</code></td><td>{escape(REASON_WORDS['sent'])}</td>" in html
    assert f"<td><code>delay</code></td><td>{escape(REASON_WORDS['delay'])}</td>" in html
    # a skipped step: the step's own words first, else the code's
    assert "<td><code>no_address</code></td><td>the subscriber has no sms address</td>" in html
    assert f"<td><code>condition_false</code></td><td>{escape(REASON_WORDS['condition_false'])}</td>" in html
    # the messages: the in-app one and the failed email, linked
    inbox = Message.objects.get(run=run, channel="in_app")
    for message in (inbox, email):
        assert (
            f'<a href="{reverse("admin:delivery_message_change", args=[message.pk])}">message {message.pk}</a>' in html
        )
    # both attempts of the email: provider, status, response code, duration, error kind
    assert "<td>postmark</td><td>failed (retryable)</td><td>503</td><td>server_error</td><td>87 ms</td>" in html
    assert (
        "<td>postmark</td><td>failed</td><td>500</td><td>server_error</td><td>120 ms</td><td>HTTP 500 again</td>"
        in html
    )
    # the provider's callback: what, which status, when it happened
    occurred = timezone.localtime(MessageEvent.objects.get(pk=crafted.callback.pk).occurred_at)
    assert f"<td>{occurred:%Y-%m-%d %H:%M:%S}</td>" in html
    assert "<td>postmark</td><td>bounced</td><td>bounced</td><td>no</td>" in html
    # in the order they happened: run, decisions, then each message with its attempts and callbacks
    assert (
        html.index(f"run {run.pk}</a>") < html.index("<code>no_address</code>") < html.index(f"message {email.pk}</a>")
    )
    assert html.index(f"message {email.pk}</a>") < html.index("503") < html.index("<td>bounced</td>")


def test_every_value_is_escaped(admin_client: Any, crafted: Trace) -> None:
    response = admin_client.get(page_url(crafted.event))
    assert_safe_page(response)  # no inline script, no handler attribute, no style attribute
    html = response.content.decode()
    for raw in (HOSTILE_ERROR, HOSTILE_WORDS, "<b>still no</b>", "<i>mailbox full</i>", "<b>no</b>", HOSTILE_HTML):
        assert raw not in html, raw
    assert "&lt;script&gt;alert(4)&lt;/script&gt;" in html  # the words, shown as text
    assert "&lt;img src=x onerror=&quot;alert(5)&quot;&gt;" in html
    assert "&lt;b&gt;still no&lt;/b&gt;" in html  # the response, as escaped JSON
    assert "&lt;script&gt;alert(3)&lt;/script&gt;" in html  # the payload


# --- Plain words for every reason code ---------------------------------------------------------------

WORKFLOWS = Path(settings.BASE_DIR) / "apps" / "workflows"
ENGINE_SOURCES = sorted(
    [*(WORKFLOWS / "steps").glob("*.py"), *(WORKFLOWS / "engine").glob("*.py"), WORKFLOWS / "digests.py"]
)
APPS = Path(settings.BASE_DIR) / "apps"


def _strings(node: ast.expr) -> set[str] | None:
    """The codes a reason argument can be: a literal, or either side of ``a if c else b``; None if computed."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return {node.value}
    if isinstance(node, ast.IfExp):
        body, orelse = _strings(node.body), _strings(node.orelse)
        return body | orelse if body is not None and orelse is not None else None
    return None


def _callee(call: ast.Call) -> str:
    func = call.func
    return func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""


def engine_reason_codes() -> tuple[set[str], list[str]]:
    """Every reason code the engine's source writes on a StepRun, and the places it computes one
    this scan cannot read (each must be a known pass-through, see below)."""
    codes: set[str] = set()
    computed: list[str] = []

    def take(node: ast.expr | None, where: str) -> None:
        if node is None:
            return
        found = _strings(node)
        if found is None:
            computed.append(f"{where}: {ast.unparse(node)}")
        else:
            codes.update(found)

    for source in ENGINE_SOURCES:
        tree = ast.parse(source.read_text())
        for node in ast.walk(tree):
            where = f"{source.relative_to(settings.BASE_DIR)}:{getattr(node, 'lineno', 0)}"
            if isinstance(node, ast.Call):
                name = _callee(node)
                keyword = next((k.value for k in node.keywords if k.arg == "reason"), None)
                if name == "trace" and isinstance(node.func, ast.Name):  # trace(writes, run, step, decision, reason)
                    take(node.args[4] if len(node.args) > 4 else keyword, where)
                elif name == "trace":  # walk.trace(step, decision, reason)
                    take(node.args[2] if len(node.args) > 2 else keyword, where)
                elif name in ("StepRun", "TraceEntry"):
                    take(node.args[4] if len(node.args) > 4 else keyword, where)
                elif name == "skip" and node.args:  # channel.py's skip(reason, ...)
                    take(node.args[0], where)
            # {"reason": "..."}: the hold reasons (channel.py) and the step results that mirror the trace
            if isinstance(node, ast.Dict):
                for key, value in zip(node.keys, node.values, strict=True):
                    if isinstance(key, ast.Constant) and key.value == "reason":
                        found = _strings(value)
                        codes.update(found or ())
            # raw SQL parameters: [..., StepRun.Decision.X, "code", ...] (digests.py's merged members)
            if isinstance(node, ast.List):
                for first, second in zip(node.elts, node.elts[1:], strict=False):
                    if "Decision" in ast.unparse(first) and _strings(second):
                        codes.update(_strings(second) or ())
    # cancellation reasons are given by the callers of events_cancel_runs, in any app
    for source in sorted(APPS.rglob("*.py")):
        for node in ast.walk(ast.parse(source.read_text())):
            if isinstance(node, ast.Call) and _callee(node) == "events_cancel_runs":
                take(next((k.value for k in node.keywords if k.arg == "reason"), None), str(source))
    return codes, computed


# The computed reasons the scan accepts, each filled from literals the scan also reads: skip()'s
# argument, the hold dicts' "reason", a StepRun copied into a TraceEntry, a cancellation's reason.
PASS_THROUGH = {"reason", "entry.reason"}


def test_every_reason_code_the_engine_writes_has_plain_words() -> None:
    codes, computed = engine_reason_codes()
    unexplained = [place for place in computed if place.rsplit(": ", 1)[1] not in PASS_THROUGH]
    assert not unexplained, f"a reason code this test cannot read; teach it where the code comes from: {unexplained}"
    # the scan sees what it should (a scan that found nothing would pass anything)
    assert {"no_address", "frequency_cap", "digest_merged", "cancelled_by_key", "engine_error", "exit"} <= codes
    missing = sorted(code for code in codes if code not in REASON_WORDS)
    assert not missing, f"add these reason codes to apps/workflows/reasons.py REASON_WORDS: {missing}"
    stale = sorted(set(REASON_WORDS) - codes)
    assert not stale, f"REASON_WORDS has codes the engine no longer writes: {stale}"


def test_reason_in_words_prefers_the_steps_own_message() -> None:
    assert reason_in_words("no_address", {"message": "no email address"}) == "no email address"
    assert reason_in_words("no_address", {}) == REASON_WORDS["no_address"]
    assert reason_in_words("exit", {"message": ""}) == REASON_WORDS["exit"]
    assert reason_in_words("something_new", None) == "something_new"
    assert reason_in_words("", {}) == "—"


# --- A fixed number of queries; a long event is cut --------------------------------------------------


def _add_runs(trace: Trace, count: int) -> None:
    event, env = trace.event, trace.event.environment
    for n in range(count):
        run = Run.objects.create(
            environment=env, event=event, workflow_version=event.workflow_version,
            subscriber=SubscriberFactory(environment=env), status="completed",
        )  # fmt: skip
        StepRun.objects.create(run=run, step_id="mail", step_type="email", decision="executed", reason="queued")
        StepRun.objects.create(run=run, step_id="text", step_type="sms", decision="skipped", reason="preference")
        message = Message.objects.create(
            environment=env, run=run, step_id="mail", channel="email", status="failed", recipient=f"r{n}@example.com"
        )
        DeliveryAttempt.objects.create(message=message, provider="smtp", status="failed", response_code=421)
        DeliveryAttempt.objects.create(message=message, provider="smtp", status="failed", response_code=550)
        MessageEvent.objects.create(
            environment=env, message=message, provider="smtp", event_type="bounced", dedupe_key=f"b-{n}"
        )


def test_the_page_costs_the_same_for_1_and_10_runs(admin_client: Any, crafted: Trace) -> None:
    def count() -> int:
        with CaptureQueriesContext(connection) as captured:
            assert admin_client.get(page_url(crafted.event)).status_code == 200
        return len(captured.captured_queries)

    one = count()
    _add_runs(crafted, 9)
    ten = count()
    assert Run.objects.filter(event=crafted.event).count() == 10
    assert one == ten


def test_past_the_first_runs_the_page_links_to_all_of_them(admin_client: Any, crafted: Trace, monkeypatch: Any) -> None:
    _add_runs(crafted, 2)
    monkeypatch.setattr("apps.events.admin.RUNS_SHOWN", 2)
    html = admin_client.get(page_url(crafted.event)).content.decode()
    assert html.count('<article class="clarion-run"') == 2
    assert f'<a href="/admin/workflows/run/?event__id__exact={crafted.event.pk}">all runs of this event</a>' in html
    monkeypatch.setattr("apps.events.admin.RUNS_SHOWN", 3)
    html = admin_client.get(page_url(crafted.event)).content.decode()
    assert html.count('<article class="clarion-run"') == 3 and "all runs of this event" not in html


# --- The buttons ---------------------------------------------------------------------------------------


def test_cancel_waiting_runs_goes_through_the_service_and_is_recorded(admin_client: Any, crafted: Trace) -> None:
    html = admin_client.get(page_url(crafted.event)).content.decode()
    assert f'action="{cancel_url(crafted.event)}"' in html and "Cancel waiting runs" in html
    response = admin_client.post(cancel_url(crafted.event), follow=True)
    assert response.redirect_chain[-1][0] == page_url(crafted.event)
    assert "t-admin: cancelled 1 run(s)." in [str(m) for m in response.context["messages"]]
    crafted.run.refresh_from_db()
    assert crafted.run.status == Run.Status.CANCELLED
    assert StepRun.objects.filter(run=crafted.run, decision="cancelled", reason="cancelled_by_api").exists()
    entry = LogEntry.objects.get(object_id=str(crafted.event.pk), content_type__model="event")
    assert entry.get_change_message() == "Cancelled 1 waiting run(s) from the admin."
    assert "Cancel waiting runs" not in response.content.decode()  # nothing left waiting


def test_an_event_still_fanning_out_can_be_cancelled_before_it_has_runs(admin_client: Any, crafted: Trace) -> None:
    Run.objects.filter(event=crafted.event).update(status=Run.Status.COMPLETED)
    assert "Cancel waiting runs" not in admin_client.get(page_url(crafted.event)).content.decode()
    Event.objects.filter(pk=crafted.event.pk).update(status=Event.Status.PENDING)
    assert "Cancel waiting runs" in admin_client.get(page_url(crafted.event)).content.decode()
    admin_client.post(cancel_url(crafted.event))
    assert Event.objects.get(pk=crafted.event.pk).status == Event.Status.CANCELLED


def test_a_failed_event_cannot_be_cancelled_and_nothing_is_recorded(admin_client: Any, crafted: Trace) -> None:
    Event.objects.filter(pk=crafted.event.pk).update(status=Event.Status.FAILED)
    response = admin_client.post(cancel_url(crafted.event), follow=True)
    assert any("nothing left to cancel" in str(m) for m in response.context["messages"])
    assert not LogEntry.objects.exists()


def test_resend_a_failed_message_through_delivery_and_it_is_recorded(admin_client: Any, crafted: Trace) -> None:
    email, event = crafted.email, crafted.event
    html = admin_client.get(page_url(event)).content.decode()
    assert f'action="{resend_url(event, email)}"' in html
    inbox = Message.objects.get(run=crafted.run, channel="in_app")
    assert f'action="{resend_url(event, inbox)}"' not in html  # only failed outbound messages
    response = admin_client.post(resend_url(event, email), follow=True)
    copy = Message.objects.get(data__resend_of=email.pk)
    assert copy.recipient == email.recipient and copy.body == email.body
    assert f"Message {email.pk} queued again as message {copy.pk}." in [str(m) for m in response.context["messages"]]
    email.refresh_from_db()
    assert email.status == Message.Status.FAILED  # the original is kept as it was
    on_message = LogEntry.objects.get(object_id=str(email.pk), content_type__model="message")
    assert on_message.get_change_message() == f"Resent from the admin as message {copy.pk}."
    on_event = LogEntry.objects.get(object_id=str(event.pk), content_type__model="event")
    assert on_event.get_change_message() == f"Resent message {email.pk} as message {copy.pk}."


def test_resend_refuses_what_is_not_a_failed_message_of_this_event(admin_client: Any, crafted: Trace) -> None:
    event = crafted.event
    inbox = Message.objects.get(run=crafted.run, channel="in_app")
    response = admin_client.post(resend_url(event, inbox), follow=True)
    assert any("only failed messages are resent" in str(m) for m in response.context["messages"])
    stranger = Message.objects.create(environment=event.environment, step_id="s", channel="email", status="failed")
    assert admin_client.post(resend_url(event, stranger)).status_code == 404
    assert admin_client.get(resend_url(event, crafted.email)).status_code == 405
    assert admin_client.get(cancel_url(event)).status_code == 405
    assert Message.objects.filter(data__has_key="resend_of").count() == 0
    assert not LogEntry.objects.exists()


def _staff(*codenames: str) -> Client:
    user = User.objects.create_user("staff-" + "-".join(codenames), password="pw-staff-1", is_staff=True)
    user.user_permissions.add(*Permission.objects.filter(codename__in=codenames))
    client = Client()
    client.force_login(user)
    return client


def test_view_only_staff_see_no_buttons_and_get_403(crafted: Trace) -> None:
    viewer = _staff("view_event")
    response = viewer.get(page_url(crafted.event))
    html = response.content.decode()
    assert response.status_code == 200 and "Timeline" in html
    assert "Cancel waiting runs" not in html and ">Resend<" not in html
    assert viewer.post(cancel_url(crafted.event)).status_code == 403
    assert viewer.post(resend_url(crafted.event, crafted.email)).status_code == 403
    crafted.run.refresh_from_db()
    assert crafted.run.status == Run.Status.WAITING
    assert not Message.objects.filter(data__has_key="resend_of").exists() and not LogEntry.objects.exists()


def test_each_button_needs_its_own_change_permission(crafted: Trace) -> None:
    """Cancelling changes events (events.change_event); resending changes messages (delivery.change_message)."""
    operator = _staff("view_event", "change_event")
    html = operator.get(page_url(crafted.event)).content.decode()
    assert "Cancel waiting runs" in html and ">Resend<" not in html
    assert operator.post(resend_url(crafted.event, crafted.email)).status_code == 403
    sender = _staff("view_event", "change_message")
    html = sender.get(page_url(crafted.event)).content.decode()
    assert "Cancel waiting runs" not in html and ">Resend<" in html
    assert sender.post(cancel_url(crafted.event)).status_code == 403


def test_buttons_need_the_csrf_token(crafted: Trace, admin_user: User) -> None:
    client = Client(enforce_csrf_checks=True)
    client.force_login(admin_user)
    assert client.post(cancel_url(crafted.event)).status_code == 403
    assert client.post(resend_url(crafted.event, crafted.email)).status_code == 403
    crafted.run.refresh_from_db()
    assert crafted.run.status == Run.Status.WAITING


def test_not_staff_not_in(crafted: Trace, client: Client) -> None:
    for url in (page_url(crafted.event), cancel_url(crafted.event), resend_url(crafted.event, crafted.email)):
        response = client.post(url) if url != page_url(crafted.event) else client.get(url)
        assert response.status_code == 302 and "/admin/login/" in response["Location"]
    crafted.run.refresh_from_db()
    assert crafted.run.status == Run.Status.WAITING
