"""Clarion's own email open and click tracking, end to end through the real send path: which emails
are tracked, the HTML they go out with, and the pixel and redirect endpoints."""

from __future__ import annotations

import re
import secrets
from typing import Any
from urllib.parse import urlsplit

import pytest
from django.core import mail, signing
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from apps.delivery.models import Message
from apps.delivery.services.statuses import message_status_apply
from apps.delivery.tasks import deliver_messages
from apps.delivery.tracking import (
    CLICK_SALT,
    Tracking,
    click_token,
    click_url,
    open_token,
    open_url,
    tracked_html,
    tracking_decide,
)
from apps.events.services import TriggerRequest, event_trigger
from apps.templates.models import EmailLayout, Template
from tests.delivery.test_batch import email_integration, postmark
from tests.factories import CategoryFactory, SubscriberFactory
from tests.workflows.conftest import make_workflow, published_template

pytestmark = pytest.mark.django_db

POST_URL = "https://example.com/post/1?a=1&b=2"
BODY = (
    '<p>Read <a href="https://example.com/post/1?a=1&amp;b=2">the post</a> or '
    '<a href="mailto:help@example.com">write</a>, <a href="tel:+15550100">call</a>, '
    '<a href="#top">go up</a>, <a href="https://example.com/raw" data-clarion-track="off">raw</a>.</p>'
)
CLICK_PATH = re.compile(r'href="(http://testserver/t/c/[^"]+)"')
PIXEL_PATH = re.compile(r'<img src="(http://testserver/t/o/[^"]+)"[^>]*>')


@pytest.fixture(autouse=True)
def _public_url(settings: Any) -> None:
    settings.PUBLIC_URL = "http://testserver"


def _environment(tenant: Any, **switches: bool) -> Any:
    env = tenant.environment
    for name, value in switches.items():
        setattr(env, name, value)
    env.save()
    return env


def _email_workflow(env: Any, *, tracking: str = "inherit", category_key: str | None = None) -> Template:
    layout = EmailLayout.objects.get(environment=env, is_default=True)
    template = published_template(
        env, "news", "email", subject_en="News", body_en=BODY, body_format="html", layout=layout
    )
    template.tracking = tracking
    template.save(update_fields=["tracking"])
    make_workflow(env, "news", [{"id": "mail", "type": "email", "template": "news"}], category_key=category_key)
    SubscriberFactory(environment=env, subscriber_id="u1", email="u1@example.com")
    return template


def _send(env: Any, capture: Any) -> tuple[Message, Any]:
    with capture(execute=True):
        event_trigger(environment=env, request=TriggerRequest("news", ["u1"], {}))
    message = Message.objects.get(channel="email")
    (sent,) = mail.outbox
    return message, sent


def _html(sent: Any) -> str:
    ((html, mimetype),) = sent.alternatives
    assert mimetype == "text/html"
    return str(html)


def _path(url: str) -> str:
    return urlsplit(url).path


# --- which emails ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("template", "opens", "clicks", "critical_too", "critical", "expected"),
    [
        ("inherit", True, True, False, False, Tracking(True, True)),
        ("inherit", True, False, False, False, Tracking(True, False)),
        ("inherit", False, False, False, False, Tracking()),
        ("on", False, False, False, False, Tracking(True, True)),
        ("off", True, True, True, False, Tracking()),
        ("inherit", True, True, False, True, Tracking()),
        ("on", True, True, False, True, Tracking()),
        ("inherit", True, True, True, True, Tracking(True, True)),
    ],
)
def test_the_rule(template, opens, clicks, critical_too, critical, expected):
    decided = tracking_decide(
        template_tracking=template,
        track_opens=opens,
        track_clicks=clicks,
        track_critical=critical_too,
        critical=critical,
    )
    assert decided == expected


def test_a_tracked_email_end_to_end(tenant, django_capture_on_commit_callbacks):
    env = _environment(tenant, track_opens=True, track_clicks=True)
    _email_workflow(env)
    message, sent = _send(env, django_capture_on_commit_callbacks)
    html = _html(sent)

    # The stored body stays the clean rendered HTML; the plain-text part goes straight to the links.
    assert "/t/c/" not in message.body and "/t/o/" not in message.body
    assert POST_URL in sent.body and "/t/" not in sent.body
    # Links through the redirect, except mailto:, tel:, anchors, opted-out and the footer's own links.
    (click,) = CLICK_PATH.findall(html)
    for untouched in ('href="mailto:help@example.com"', 'href="tel:+15550100"', 'href="#top"'):
        assert untouched in html
    assert 'href="https://example.com/raw"' in html and "data-clarion-track" not in html
    one_click = sent.extra_headers["List-Unsubscribe"].strip("<>")
    assert f'href="{one_click}"' in html  # the footer's unsubscribe link is the header's, unwrapped
    assert re.search(r'href="http://testserver/preferences/[^"]+/"', html)
    # The pixel at the end of the body, once.
    (pixel,) = PIXEL_PATH.findall(html)
    assert html.rstrip().endswith("</body></html>")
    assert html.index("/t/o/") > html.index("clarion-footer")
    assert html.startswith("<!DOCTYPE html>")

    client = Client()
    opened = client.get(_path(pixel))
    assert opened.status_code == 200
    assert opened["Content-Type"] == "image/gif" and opened.content.startswith(b"GIF89a")
    assert "no-store" in opened["Cache-Control"]
    message.refresh_from_db()
    assert message.status == Message.Status.OPENED and message.opened_at is not None
    first_open = message.opened_at

    clicked = client.get(_path(click))
    assert clicked.status_code == 302
    assert clicked["Location"] == POST_URL
    assert clicked["Referrer-Policy"] == "no-referrer"
    message.refresh_from_db()
    assert message.status == Message.Status.CLICKED and message.clicked_at is not None

    # A late pixel (images loaded after the click) changes nothing: no regression, first open kept.
    assert client.get(_path(pixel)).status_code == 200
    message.refresh_from_db()
    assert message.status == Message.Status.CLICKED and message.opened_at == first_open


def test_opens_only_leaves_links_alone(tenant, django_capture_on_commit_callbacks):
    env = _environment(tenant, track_opens=True)
    _email_workflow(env)
    _message, sent = _send(env, django_capture_on_commit_callbacks)
    html = _html(sent)
    assert not CLICK_PATH.findall(html) and 'href="https://example.com/post/1?a=1&amp;b=2"' in html
    assert len(PIXEL_PATH.findall(html)) == 1


def test_nothing_on_leaves_the_email_as_rendered(tenant, django_capture_on_commit_callbacks):
    _email_workflow(tenant.environment)
    message, sent = _send(tenant.environment, django_capture_on_commit_callbacks)
    assert _html(sent) == message.body


def test_template_off_is_never_tracked(tenant, django_capture_on_commit_callbacks):
    env = _environment(tenant, track_opens=True, track_clicks=True)
    _email_workflow(env, tracking="off")
    message, sent = _send(env, django_capture_on_commit_callbacks)
    assert _html(sent) == message.body


def test_template_on_is_tracked_with_the_environment_off(tenant, django_capture_on_commit_callbacks):
    _email_workflow(tenant.environment, tracking="on")
    _message, sent = _send(tenant.environment, django_capture_on_commit_callbacks)
    html = _html(sent)
    assert len(CLICK_PATH.findall(html)) == 1 and len(PIXEL_PATH.findall(html)) == 1


def test_a_critical_category_is_not_tracked_unless_enabled(tenant, django_capture_on_commit_callbacks):
    env = _environment(tenant, track_opens=True, track_clicks=True)
    CategoryFactory(environment=env, key="security", critical=True)
    _email_workflow(env, tracking="on", category_key="security")
    message, sent = _send(env, django_capture_on_commit_callbacks)
    assert _html(sent) == message.body

    env.track_critical = True
    env.save(update_fields=["track_critical"])
    mail.outbox.clear()
    with django_capture_on_commit_callbacks(execute=True):
        event_trigger(environment=env, request=TriggerRequest("news", ["u1"], {}, transaction_id="again"))
    html = _html(mail.outbox[0])
    assert len(CLICK_PATH.findall(html)) == 1 and len(PIXEL_PATH.findall(html)) == 1


def test_a_non_critical_category_follows_the_switches(tenant, django_capture_on_commit_callbacks):
    env = _environment(tenant, track_opens=True, track_clicks=True)
    CategoryFactory(environment=env, key="product", critical=False)
    _email_workflow(env, category_key="product")
    _message, sent = _send(env, django_capture_on_commit_callbacks)
    assert len(CLICK_PATH.findall(_html(sent))) == 1


def test_an_email_without_a_template_is_not_tracked(tenant, mailoutbox):
    from apps.delivery.services import message_send_now

    _environment(tenant, track_opens=True, track_clicks=True)
    message = message_send_now(
        environment_id=tenant.environment.pk,
        channel="email",
        recipient="pm@example.com",
        subject="Test send",
        body='<p><a href="https://example.com/">x</a></p>',
    )
    assert message.status == "sent"
    assert _html(mailoutbox[0]) == message.body


def test_a_category_digest_is_decided_by_the_category_it_names(tenant, django_assert_num_queries):
    """Run-less messages (a category digest) name their category in their data; a batch of them is
    still two queries."""
    from apps.delivery.tracking import tracking_for_messages

    env = _environment(tenant, track_opens=True, track_clicks=True)
    CategoryFactory(environment=env, key="security", critical=True)
    CategoryFactory(environment=env, key="product", critical=False)
    template = published_template(env, "digest", "email", body_en="x")
    messages = [
        Message.objects.create(
            environment=env,
            step_id="digest",
            channel="email",
            recipient=f"u{i}@example.com",
            template_version=template.published_version,
            data={"category": key},
        )
        for i, key in enumerate(["security", "product", "security", "product", ""])
    ]
    with django_assert_num_queries(2):
        plan = tracking_for_messages(messages)
    assert [plan[m.pk] for m in messages] == [
        Tracking(),
        Tracking(True, True),
        Tracking(),
        Tracking(True, True),
        Tracking(True, True),
    ]


# --- through an ESP, in a batch -----------------------------------------------------------------


def _queued_tracked_emails(env: Any, template: Template, count: int) -> list[int]:
    version = template.published_version
    return [
        Message.objects.create(
            environment=env,
            step_id="s",
            channel="email",
            recipient=f"u{i}@example.com",
            subject="Hi",
            body=BODY,
            template_version=version,
        ).pk
        for i in range(count)
    ]


def _batch_queries(env: Any, template: Template, server: Any, count: int) -> tuple[int, list[Any]]:
    """Deliver ``count`` queued emails as one batch: (queries, the requests the ESP received)."""
    ids = _queued_tracked_emails(env, template, count)
    before = len(server.requests)
    with CaptureQueriesContext(connection) as captured:
        deliver_messages(ids)
    assert Message.objects.filter(pk__in=ids, status=Message.Status.SENT).count() == count
    # The decision: one query for the whole batch (no category here, so not the second one).
    assert sum('"track_opens"' in q["sql"] for q in captured.captured_queries) == 1
    return len(captured), server.requests[before:]


def test_a_batch_through_an_esp_is_tracked_with_a_fixed_number_of_queries(tenant, fake_server, settings):
    settings.CLARION_DELIVERY = {**settings.CLARION_DELIVERY, "SEND_WINDOW": 100}
    env = _environment(tenant, track_opens=True, track_clicks=True)
    template = _email_workflow(env)
    server = postmark(fake_server)
    email_integration(env, server)

    few, requests = _batch_queries(env, template, server, 3)
    assert len(requests) == 3
    for request in requests:
        html = request.json()["HtmlBody"]
        assert len(re.findall(r'href="http://testserver/t/c/', html)) == 1 and "/t/o/" in html
        assert "/t/" not in request.json()["TextBody"]
    many, _requests = _batch_queries(env, template, server, 30)
    assert many == few  # the decision is one or two queries per batch, never one per message

    # ...and costs at most two queries over an untracked batch.
    env.track_opens = env.track_clicks = False
    env.save(update_fields=["track_opens", "track_clicks"])
    untracked, requests = _batch_queries(env, template, server, 3)
    assert "/t/" not in requests[0].json()["HtmlBody"]
    assert few - untracked <= 2


# --- the endpoints --------------------------------------------------------------------------------


@pytest.fixture
def sent_message(tenant: Any) -> Message:
    return Message.objects.create(
        environment=tenant.environment,
        step_id="s",
        channel="email",
        recipient="u@example.com",
        body=BODY,
        status=Message.Status.DELIVERED,
    )


def _twin(message: Message) -> Message:
    """Another message in the same state: what ``message_status_apply`` itself costs."""
    return Message.objects.create(
        environment_id=message.environment_id,
        step_id="t",
        channel=message.channel,
        recipient=message.recipient,
        status=message.status,
    )


def _not_bookkeeping(queries: list[dict[str, Any]]) -> list[str]:
    return [q["sql"] for q in queries if not q["sql"].startswith(("SAVEPOINT", "RELEASE SAVEPOINT"))]


@pytest.mark.parametrize("kind", ["open", "click"])
def test_an_endpoint_costs_the_status_write_and_nothing_more(sent_message, kind):
    status = Message.Status.OPENED if kind == "open" else Message.Status.CLICKED
    path = _path(open_url(sent_message.pk) if kind == "open" else click_url(sent_message.pk, POST_URL))
    twin = _twin(sent_message)
    with CaptureQueriesContext(connection) as applied:
        message_status_apply(message_id=twin.pk, status=status)
    client = Client()

    with CaptureQueriesContext(connection) as captured:
        response = client.get(path)
    assert response.status_code in (200, 302)
    sql = _not_bookkeeping(captured.captured_queries)
    assert len(sql) == len(_not_bookkeeping(applied.captured_queries))
    # Today two UPDATEs of one row by primary key (plus whatever analytics counts on a move).
    assert sum('"delivery_message"' in q for q in sql) <= 3
    assert not any('"delivery_message"."body"' in q for q in sql)
    sent_message.refresh_from_db()
    assert sent_message.status == status


def _bad_tokens(message: Message) -> list[str]:
    good_click = click_token(message.pk, POST_URL)
    good_open = open_token(message.pk)
    return [
        good_click[:-1] + ("A" if good_click[-1] != "A" else "B"),  # tampered signature
        good_open.replace(f"{message.pk}:", f"{message.pk + 1}:"),  # another message, same signature
        "x" * 10_000,  # huge
        "%ff%fe%80",  # not UTF-8
        "a:b:c",
        signing.Signer(key="another-installation", salt=CLICK_SALT).sign_object([message.pk, POST_URL]),  # foreign
        signing.Signer(salt=CLICK_SALT).sign_object([message.pk, "javascript:alert(1)"]),  # not http(s)
        signing.Signer(salt=CLICK_SALT).sign_object([message.pk, "//evil.example/"]),  # no scheme
        signing.Signer(salt=CLICK_SALT).sign_object(["1", POST_URL]),  # wrong shape
        signing.Signer(salt=CLICK_SALT).sign_object({"id": message.pk}),
    ]


@pytest.mark.parametrize("endpoint", ["o", "c"])
def test_bad_tokens_are_404_before_any_query(sent_message, endpoint):
    client = Client()
    tokens = _bad_tokens(sent_message)
    # The other endpoint's genuine token is foreign here (another salt).
    tokens.append(click_token(sent_message.pk, POST_URL) if endpoint == "o" else open_token(sent_message.pk))
    for token in tokens:
        with CaptureQueriesContext(connection) as captured:
            response = client.get(f"/t/{endpoint}/{token}")
        assert response.status_code == 404, token
        assert response.content == b"Not found"
        assert len(captured) == 0, token
    sent_message.refresh_from_db()
    assert sent_message.status == Message.Status.DELIVERED


@pytest.mark.parametrize("endpoint", ["o", "c"])
def test_hostile_paths_are_4xx(sent_message, endpoint):
    client = Client()
    for path in (f"/t/{endpoint}/abc%00def", f"/t/{endpoint}/{open_token(sent_message.pk)}%00", f"/t/{endpoint}/"):
        assert 400 <= client.get(path).status_code < 500, path


def test_other_methods_and_head_record_nothing(sent_message):
    client = Client()
    path = _path(click_url(sent_message.pk, POST_URL))
    assert client.post(path).status_code == 405
    head = client.head(path)
    assert head.status_code == 302 and head["Location"] == POST_URL
    assert client.head(_path(open_url(sent_message.pk))).status_code == 200
    sent_message.refresh_from_db()
    assert sent_message.status == Message.Status.DELIVERED and sent_message.opened_at is None


def test_over_the_per_ip_rate_answers_but_records_nothing(sent_message, settings):
    rest = dict(settings.REST_FRAMEWORK)
    rest["DEFAULT_THROTTLE_RATES"] = {**rest["DEFAULT_THROTTLE_RATES"], "tracking_ip": "1/minute"}
    settings.REST_FRAMEWORK = rest
    # Fresh addresses (documentation /64s): counters outlive a test run in a shared Redis cache.
    first, second = (f"2001:db8:{secrets.randbits(16):x}:{secrets.randbits(16):x}::1" for _ in range(2))
    client = Client(REMOTE_ADDR=first)
    assert client.get(_path(open_url(sent_message.pk))).status_code == 200
    sent_message.refresh_from_db()
    assert sent_message.status == Message.Status.OPENED

    clicked = client.get(_path(click_url(sent_message.pk, POST_URL)))
    assert clicked.status_code == 302 and clicked["Location"] == POST_URL  # the link still works
    sent_message.refresh_from_db()
    assert sent_message.status == Message.Status.OPENED  # ...but the click was not recorded

    other = Client(REMOTE_ADDR=second)  # another address has its own budget
    assert other.get(_path(click_url(sent_message.pk, POST_URL))).status_code == 302
    sent_message.refresh_from_db()
    assert sent_message.status == Message.Status.CLICKED


def test_a_click_on_a_pruned_message_still_redirects(sent_message):
    path = _path(click_url(sent_message.pk, POST_URL))
    sent_message.delete()
    response = Client().get(path)
    assert response.status_code == 302 and response["Location"] == POST_URL


# --- the rewrite ----------------------------------------------------------------------------------


def test_rewrite_keeps_the_document():
    document = (
        '<!DOCTYPE html>\n<html lang="fr"><head><meta charset="utf-8">'
        "<!--[if mso]><style>td{}</style><![endif]--></head>"
        '<body><p>Déjà vu — <a href="https://exemple.fr/é?x=1&amp;y=2">lien</a></p>'
        '<map><area href="https://example.com/area" alt=""></map></body></html>'
    )
    out = tracked_html(document, message_id=5, tracking=Tracking(opens=True, clicks=True))
    assert out.startswith("<!DOCTYPE html>")
    assert '<html lang="fr">' in out and "Déjà vu — " in out
    assert "<!--[if mso]><style>td{}</style><![endif]-->" in out
    hrefs = re.findall(r'href="([^"]+)"', out)
    assert len(hrefs) == 2 and all("/t/c/" in href for href in hrefs)
    pixel_at = out.index("/t/o/")
    assert out.index("</map>") < pixel_at < out.index("</body>")


def test_rewrite_keeps_a_fragment_a_fragment():
    fragment = 'Hi <b>there</b> &amp; <a href="https://x.io">x</a>'
    out = tracked_html(fragment, message_id=5, tracking=Tracking(opens=True, clicks=True))
    assert out.startswith('Hi <b>there</b> &amp; <a href="http://testserver/t/c/')
    assert "<html" not in out and "<body" not in out
    assert out.endswith('padding:0">')


def test_links_already_tracked_or_too_long_are_left_alone():
    already = click_url(1, "https://example.com/")
    long_url = "https://example.com/" + "a" * 3000
    body = f'<a href="{already}">a</a><a href="{long_url}">b</a><a href="javascript:alert(1)">c</a><a>d</a>'
    out = tracked_html(body, message_id=2, tracking=Tracking(clicks=True))
    assert out == body


def test_a_failing_rewrite_never_stops_the_send(tenant, monkeypatch, mailoutbox):
    from apps.delivery import tracking
    from apps.delivery.services import message_deliver

    template = published_template(tenant.environment, "t", "email", body_en="x")
    template.tracking = "on"
    template.save(update_fields=["tracking"])
    message = Message.objects.create(
        environment=tenant.environment,
        step_id="s",
        channel="email",
        recipient="u@example.com",
        body=BODY,
        template_version=template.published_version,
    )

    def broken(*args: Any, **kwargs: Any) -> str:
        raise RuntimeError("parser bug")

    monkeypatch.setattr(tracking, "tracked_html", broken)
    message_deliver(message_id=message.pk)
    message.refresh_from_db()
    assert message.status == Message.Status.SENT
    assert _html(mailoutbox[0]) == BODY
