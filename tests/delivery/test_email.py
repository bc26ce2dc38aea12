"""Email delivery through real Anymail backends against a fake ESP on loopback."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from django.core import mail

from apps.delivery.models import DeliveryAttempt, Message
from apps.delivery.providers.email import html_to_text
from apps.delivery.services import message_deliver, messages_requeue_stalled
from apps.events.models import Event
from apps.events.services import TriggerRequest, event_trigger
from tests.factories import IntegrationFactory, SubscriberFactory
from tests.workflows.conftest import make_workflow, published_template

pytestmark = pytest.mark.django_db


class FakePostmark:
    """Answers Postmark's /email endpoint with a fixed status, recording what it received."""

    def __init__(self, status: int) -> None:
        self.status = status
        self.requests: list[dict[str, Any]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.requests.append(
                    {"path": self.path, "body": body, "token": self.headers.get("X-Postmark-Server-Token")}
                )
                if outer.status == 200:
                    payload = {
                        "To": body["To"],
                        "MessageID": f"pm-{len(outer.requests)}",
                        "ErrorCode": 0,
                        "Message": "OK",
                    }
                else:
                    payload = {"ErrorCode": 500, "Message": "Internal error"}
                data = json.dumps(payload).encode()
                self.send_response(outer.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def postmark_servers() -> Iterator[tuple[FakePostmark, FakePostmark]]:
    broken, healthy = FakePostmark(500), FakePostmark(200)
    yield broken, healthy
    broken.close()
    healthy.close()


@pytest.fixture
def email_flow(tenant: Any) -> Any:
    env = tenant.environment
    published_template(env, "welcome", "email", subject_en="Welcome {{ subscriber.first_name }}", body_en="<p>Hi</p>")
    make_workflow(env, "welcome", [{"id": "mail", "type": "email", "template": "welcome"}])
    SubscriberFactory(environment=env, subscriber_id="u1", email="u1@example.com", first_name="Ada")
    return env


def _trigger(env: Any, capture: Any) -> Message:
    with capture(execute=True):
        event_trigger(environment=env, request=TriggerRequest("welcome", ["u1"], {}))
    return Message.objects.get(channel="email")


def test_anymail_integration_sends_over_http_and_records_attempt(
    email_flow, postmark_servers, django_capture_on_commit_callbacks
):
    _broken, healthy = postmark_servers
    IntegrationFactory(
        environment=email_flow,
        provider="postmark",
        credentials={"server_token": "pm-token", "api_url": healthy.url},
        settings={"from_email": "Acme <hello@acme.test>"},
    )
    message = _trigger(email_flow, django_capture_on_commit_callbacks)

    assert message.status == Message.Status.SENT
    assert message.provider == "postmark"
    assert message.provider_message_id == "pm-1"
    (request,) = healthy.requests
    assert request["token"] == "pm-token"
    assert request["body"]["To"] == "u1@example.com"
    assert request["body"]["From"] == "Acme <hello@acme.test>"
    assert request["body"]["Subject"] == "Welcome Ada"
    assert request["body"]["HtmlBody"] == "<p>Hi</p>"
    attempt = DeliveryAttempt.objects.get(message=message)
    assert attempt.status == "success"
    assert mail.outbox == []  # went through the ESP, not Django's default backend


def test_failing_provider_falls_over_to_next_integration(
    email_flow, postmark_servers, django_capture_on_commit_callbacks
):
    broken, healthy = postmark_servers
    IntegrationFactory(
        environment=email_flow,
        provider="postmark",
        priority=0,
        retries=0,
        credentials={"server_token": "a", "api_url": broken.url},
    )
    IntegrationFactory(
        environment=email_flow,
        provider="postmark",
        priority=1,
        credentials={"server_token": "b", "api_url": healthy.url},
    )
    message = _trigger(email_flow, django_capture_on_commit_callbacks)

    assert message.status == Message.Status.SENT
    assert len(broken.requests) == 1 and len(healthy.requests) == 1
    attempts = list(DeliveryAttempt.objects.filter(message=message).values_list("status", flat=True))
    assert attempts == ["failed", "success"]
    assert "500" in DeliveryAttempt.objects.filter(message=message).first().error


def test_all_providers_failing_marks_message_failed(email_flow, postmark_servers, django_capture_on_commit_callbacks):
    broken, _healthy = postmark_servers
    IntegrationFactory(
        environment=email_flow, provider="postmark", credentials={"server_token": "a", "api_url": broken.url}
    )
    message = _trigger(email_flow, django_capture_on_commit_callbacks)
    assert message.status == Message.Status.FAILED
    assert message.error


def test_without_integration_uses_django_backend(email_flow, django_capture_on_commit_callbacks):
    message = _trigger(email_flow, django_capture_on_commit_callbacks)
    assert message.status == Message.Status.SENT
    assert message.provider == "default"
    (sent,) = mail.outbox
    assert sent.to == ["u1@example.com"]
    assert sent.alternatives[0][0] == "<p>Hi</p>"
    assert sent.body == "Hi"


def test_delivering_twice_sends_once(email_flow, django_capture_on_commit_callbacks):
    message = _trigger(email_flow, django_capture_on_commit_callbacks)
    assert message_deliver(message_id=message.pk) is None
    assert len(mail.outbox) == 1


def test_interrupted_send_is_requeued(email_flow, settings):
    from datetime import timedelta

    from django.utils import timezone

    settings.CLARION_TASKS_EAGER = False
    from unittest import mock

    with mock.patch("apps.core.tasks.enqueue"):
        event_trigger(environment=email_flow, request=TriggerRequest("welcome", ["u1"], {}))
    settings.CLARION_TASKS_EAGER = True
    from apps.workflows.engine import process_event

    process_event(Event.objects.get().pk)
    message = Message.objects.get()
    # A worker claimed it and died before calling any provider (no send_started_at): queued again.
    long_ago = timezone.now() - timedelta(minutes=10)
    Message.objects.filter(pk=message.pk).update(status=Message.Status.SENDING, updated_at=long_ago)
    assert messages_requeue_stalled(stalled_before=timezone.now() - timedelta(minutes=2)) == [message.pk]
    message_deliver(message_id=message.pk)
    assert Message.objects.get().status == Message.Status.SENT


def test_html_to_text():
    assert (
        html_to_text('<p>Hi &amp; bye</p><p><a href="https://x.io">Open</a></p>') == "Hi & bye\n\nOpen (https://x.io)"
    )


def test_message_send_now_delivers_without_a_run(tenant: Any, mailoutbox: Any) -> None:
    from apps.delivery.services import message_send_now

    message = message_send_now(
        environment_id=tenant.environment.pk,
        channel="email",
        recipient="pm@example.com",
        subject="Test send",
        body="<p>Hello</p>",
    )

    assert message.status == "sent"
    assert message.run_id is None and message.subscriber_id is None
    assert [m.to for m in mailoutbox] == [["pm@example.com"]]
    assert message.attempts_log.get().status == "success"


def test_email_uses_text_part_and_extra_headers_from_data(tenant: Any, mailoutbox: Any) -> None:
    from apps.delivery.services import message_send_now

    message = message_send_now(
        environment_id=tenant.environment.pk,
        channel="email",
        recipient="pm@example.com",
        subject="Digest",
        body="<p>Hello</p>",
        data={
            "text": "Hello (plain)",
            "headers": {
                "List-Unsubscribe": "<https://c.example/unsubscribe/abc>",
                "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
            },
        },
    )
    assert message.status == "sent"
    (sent,) = mailoutbox
    assert sent.body == "Hello (plain)"
    assert sent.extra_headers["List-Unsubscribe"] == "<https://c.example/unsubscribe/abc>"
    assert sent.extra_headers["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert sent.extra_headers["X-Clarion-Message-Id"] == str(message.pk)


def test_smtp_integration_against_a_local_smtp_server(tenant: Any) -> None:
    """Plain SMTP through Django's backend, to a real SMTP server on loopback."""
    import socket

    from aiosmtpd.controller import Controller

    received: list[dict[str, Any]] = []

    class Handler:
        async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
            if address.startswith("nobody@"):
                return "550 5.1.1 No such user"
            envelope.rcpt_tos.append(address)
            return "250 OK"

        async def handle_DATA(self, server, session, envelope):
            received.append({"to": envelope.rcpt_tos, "data": envelope.content.decode()})
            return "250 Message accepted"

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    controller = Controller(Handler(), hostname="127.0.0.1", port=port)
    controller.start()
    try:
        from apps.delivery.services import message_send_now

        IntegrationFactory(
            environment=tenant.environment,
            provider="smtp",
            credentials={"host": "127.0.0.1", "port": port},
            settings={"from_email": "Acme <hi@acme.test>"},
        )
        ok = message_send_now(
            environment_id=tenant.environment.pk,
            channel="email",
            recipient="ada@example.com",
            subject="Hi",
            body="<p>x</p>",
        )
        bad = message_send_now(
            environment_id=tenant.environment.pk,
            channel="email",
            recipient="nobody@example.com",
            subject="Hi",
            body="x",
        )
    finally:
        controller.stop()
    assert ok.status == "sent" and received[0]["to"] == ["ada@example.com"]
    assert "Subject: Hi" in received[0]["data"]
    assert bad.status == "failed" and bad.attempts_log.get().error_kind == "invalid_address"
