"""The hosted preference center and one-click unsubscribe: tokens, CSRF, idempotence, languages."""

from __future__ import annotations

import re
from typing import Any

import pytest
from django.core import signing
from django.test import Client

from apps.preferences.links import email_links
from apps.preferences.models import Preference, PreferenceChange, QuietHours
from apps.preferences.selectors import subscriber_preferences
from apps.preferences.tokens import PAGE_SALT, UNSUBSCRIBE_SALT, preference_token, unsubscribe_token
from tests.factories import CategoryFactory, SubscriberFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def setup(tenant: Any) -> dict[str, Any]:
    env = tenant.environment
    env.branding = {"product_name": "Acme", "primary_color": "#ff5500", "logo_url": "javascript:alert(1)"}
    env.save()
    subscriber = SubscriberFactory(environment=env, subscriber_id="u1", locale="en", timezone="Europe/Paris")
    comments = CategoryFactory(environment=env, key="comments", name="Comments", order=1)
    billing = CategoryFactory(environment=env, key="billing", name="Billing", order=2)
    security = CategoryFactory(environment=env, key="security", name="Security", critical=True, order=3)
    return {"subscriber": subscriber, "comments": comments, "billing": billing, "security": security}


def page_url(subscriber: Any) -> str:
    return f"/preferences/{preference_token(subscriber=subscriber)}/"


def form_from_page(html: str) -> dict[str, Any]:
    """What a browser would post back unchanged: checked boxes, selected options, input values."""
    data: dict[str, Any] = {}
    for tag in re.findall(r"<input[^>]*>", html):
        name = re.search(r'name="([^"]+)"', tag)
        if not name or "disabled" in tag:
            continue
        kind = re.search(r'type="([^"]+)"', tag)
        value = re.search(r'value="([^"]*)"', tag)
        if kind and kind.group(1) == "checkbox":
            if "checked" in tag:
                data[name.group(1)] = "on"
        else:
            data[name.group(1)] = value.group(1) if value else ""
    for name, body in re.findall(r'<select name="([^"]+)"[^>]*>(.*?)</select>', html, re.S):
        selected = re.search(r'<option value="([^"]*)"[^>]*selected', body)
        data[name] = selected.group(1) if selected else ""
    return data


# --- the preference center ---------------------------------------------------------------------


def test_page_shows_categories_locked_critical_and_branding(client: Client, setup: dict[str, Any]) -> None:
    response = client.get(page_url(setup["subscriber"]))
    assert response.status_code == 200
    html = response.content.decode()
    assert '<html lang="en">' in html
    assert html.index("Comments") < html.index("Billing") < html.index("Security")  # category order
    assert "Always on" in html and "cannot be turned off" in html
    assert f'name="cat-{setup["security"].pk}-email"' not in html  # locked: no field to post
    assert f'name="cat-{setup["comments"].pk}-email"' in html
    assert f'name="freq-{setup["comments"].pk}"' in html
    assert "--brand: #ff5500" in html and "Acme" in html
    assert "javascript:" not in html  # a logo that isn't http(s) is dropped
    assert 'name="csrfmiddlewaretoken"' in html
    assert response["Cache-Control"].startswith("max-age=0")
    # Channels the subscriber can't be reached on (no phone, no device) are not offered.
    assert f'name="cat-{setup["comments"].pk}-sms"' not in html
    assert 'name="channel-email"' in html


def test_save_writes_changes_records_history_and_says_what_was_saved(setup: dict[str, Any]) -> None:
    subscriber, comments, billing = setup["subscriber"], setup["comments"], setup["billing"]
    client = Client(enforce_csrf_checks=True)
    url = page_url(subscriber)
    data = form_from_page(client.get(url).content.decode())
    assert data.pop(f"cat-{comments.pk}-email") == "on"
    data[f"freq-{billing.pk}"] = "daily"
    data["quiet_enabled"] = "on"
    data["quiet_start"], data["quiet_end"] = "22:00", "07:00"
    response = client.post(url, data)
    assert response.status_code == 302 and response["Location"] == url + "#saved"

    state = subscriber_preferences(subscriber=subscriber)
    by_key = {c["key"]: c for c in state["categories"]}
    assert by_key["comments"]["channels"]["email"] is False
    assert by_key["comments"]["channels"]["in_app"] is True
    assert by_key["billing"]["frequency"] == "daily"
    quiet = QuietHours.objects.get(subscriber=subscriber)
    assert (quiet.start.hour, quiet.end.hour, quiet.timezone) == (22, 7, "")  # follows the subscriber's zone
    # Only what changed was written: one category row, no row for untouched switches.
    assert list(Preference.objects.filter(subscriber=subscriber).values_list("channel", flat=True)) == ["email"]
    history = list(PreferenceChange.objects.filter(subscriber=subscriber).order_by("id"))
    assert {h.source for h in history} == {"page"}
    kinds = [c["kind"] for h in history for c in h.changes]
    assert sorted(kinds) == ["category", "frequency", "quiet_hours"]

    page = client.get(url).content.decode()
    assert "Your preferences were saved." in page
    assert "Comments: Email off" in page
    assert "Billing: daily digest" in page
    assert "Quiet hours: 22:00 to 07:00" in page
    # Saving again unchanged changes nothing and says so.
    client.post(url, form_from_page(page))
    assert "Nothing changed" in client.get(url).content.decode()
    assert PreferenceChange.objects.filter(subscriber=subscriber).count() == len(history)


def test_save_needs_the_csrf_token(setup: dict[str, Any]) -> None:
    client = Client(enforce_csrf_checks=True)
    url = page_url(setup["subscriber"])
    data = form_from_page(client.get(url).content.decode())
    data.pop("csrfmiddlewaretoken")
    data.pop(f"cat-{setup['comments'].pk}-email")
    assert client.post(url, data).status_code == 403
    assert not Preference.objects.exists()
    assert Client(enforce_csrf_checks=True).post(url, form_from_page(client.get(url).content.decode())).status_code == (
        403  # no cookie
    )


def test_invalid_quiet_hours_save_nothing(client: Client, setup: dict[str, Any]) -> None:
    url = page_url(setup["subscriber"])
    data = form_from_page(client.get(url).content.decode())
    data.pop(f"cat-{setup['comments'].pk}-email")
    data.update({"quiet_enabled": "on", "quiet_start": "22:00", "quiet_end": "22:00"})
    response = client.post(url, data)
    assert response.status_code == 400
    assert "Nothing was saved" in response.content.decode()
    assert not Preference.objects.exists() and not QuietHours.objects.exists()


def test_page_in_the_subscribers_language(client: Client, setup: dict[str, Any]) -> None:
    subscriber = setup["subscriber"]
    for locale, lang, title in [
        ("fr-CA", "fr", "Préférences de notification"),
        ("de", "de", "Benachrichtigungseinstellungen"),
        ("pt", "en", "Notification preferences"),
    ]:
        subscriber.locale = locale
        subscriber.save()
        html = client.get(page_url(subscriber), HTTP_ACCEPT_LANGUAGE="en").content.decode()
        assert f'<html lang="{lang}">' in html
        assert title in html


def test_global_switch_and_unsubscribe_all_from_the_page(client: Client, setup: dict[str, Any]) -> None:
    subscriber = setup["subscriber"]
    url = page_url(subscriber)
    data = form_from_page(client.get(url).content.decode())
    data.pop("channel-email")
    data["unsubscribed"] = "on"
    client.post(url, data)
    state = subscriber_preferences(subscriber=subscriber)
    assert state["channels"]["email"] is False and state["unsubscribed"] is True
    security = next(c for c in state["categories"] if c["key"] == "security")
    assert all(security["channels"].values())  # critical stays on
    page = client.get(url).content.decode()
    assert "Email turned off for everything" in page
    assert "Unsubscribed from everything except essential messages" in page
    assert 'id="unsubscribed-notice"' in page  # and the page keeps saying so until undone


# --- tokens ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("make", "status", "text"),
    [
        (lambda s: preference_token(subscriber=s)[:-3] + "abc", 400, "This link is not valid"),
        (lambda s: "not-a-token", 400, "This link is not valid"),
        (lambda s: signing.dumps({"e": s.environment_id, "s": s.pk}, salt=UNSUBSCRIBE_SALT), 400, "not valid"),
        (lambda s: signing.dumps({"e": s.environment_id, "s": s.pk}, salt="clarion.inbox"), 400, "not valid"),
        (lambda s: signing.dumps({"e": s.environment_id + 999, "s": s.pk}, salt=PAGE_SALT), 404, "no longer works"),
        (lambda s: signing.dumps(["e", s.pk], salt=PAGE_SALT), 400, "not valid"),
    ],
)
def test_bad_page_tokens_get_a_clear_page(
    client: Client, setup: dict[str, Any], make: Any, status: int, text: str
) -> None:
    response = client.get(f"/preferences/{make(setup['subscriber'])}/")
    assert response.status_code == status
    assert text in response.content.decode()
    assert "<html" in response.content.decode()


def test_expired_tokens(client: Client, setup: dict[str, Any], settings: Any) -> None:
    subscriber = setup["subscriber"]
    page = page_url(subscriber)
    unsubscribe = f"/unsubscribe/{unsubscribe_token(subscriber=subscriber, category_key='comments')}"
    settings.CLARION = {**settings.CLARION, "PREFERENCE_LINK_MAX_AGE": -1}
    for response in (client.get(page), client.post(unsubscribe)):
        assert response.status_code == 410
        assert "This link has expired" in response.content.decode()
    assert not Preference.objects.exists()


def test_tokens_are_scoped_to_one_subscriber(client: Client, setup: dict[str, Any]) -> None:
    subscriber = setup["subscriber"]
    other = SubscriberFactory(environment=subscriber.environment, subscriber_id="u2")
    token = unsubscribe_token(subscriber=other, category_key="comments")
    assert client.post(f"/unsubscribe/{token}").status_code == 200
    assert not Preference.objects.filter(subscriber=subscriber).exists()
    assert Preference.objects.get(subscriber=other).enabled is False


# --- one-click unsubscribe (RFC 8058) -----------------------------------------------------------


def test_email_links_and_headers(setup: dict[str, Any], settings: Any) -> None:
    settings.PUBLIC_URL = "https://notify.example.com"
    subscriber = setup["subscriber"]
    links = email_links(subscriber=subscriber, category_key="comments", mailto="unsubscribe@example.com")
    assert links["preferences_url"].startswith("https://notify.example.com/preferences/")
    assert links["unsubscribe_url"].startswith("https://notify.example.com/unsubscribe/")
    assert links["headers"] == {
        "List-Unsubscribe": f"<{links['unsubscribe_url']}>, <mailto:unsubscribe@example.com?subject=unsubscribe>",
        "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
    }
    critical = email_links(subscriber=subscriber, category_key="security", critical=True, base_url="https://x.io/")
    assert critical["unsubscribe_url"] is None and critical["headers"] == {}
    assert critical["preferences_url"].startswith("https://x.io/preferences/")


def test_one_click_post_without_cookies_is_idempotent(setup: dict[str, Any]) -> None:
    subscriber = setup["subscriber"]
    url = (
        "/unsubscribe/"
        + email_links(subscriber=subscriber, category_key="comments")["unsubscribe_url"].rsplit("/unsubscribe/", 1)[1]
    )
    client = Client(enforce_csrf_checks=True)  # a mail provider: no cookie, no CSRF token
    for _ in range(3):
        response = client.post(url, "List-Unsubscribe=One-Click", content_type="application/x-www-form-urlencoded")
        assert response.status_code == 200
        assert "You are unsubscribed" in response.content.decode()
        assert not response.cookies
    state = {c["key"]: c["channels"] for c in subscriber_preferences(subscriber=subscriber)["categories"]}
    assert state["comments"]["email"] is False
    assert state["comments"]["in_app"] is True  # only the email channel of that category
    assert state["billing"]["email"] is True
    history = list(PreferenceChange.objects.filter(subscriber=subscriber))
    assert len(history) == 1 and history[0].source == "one_click"
    assert history[0].changes == [
        {"kind": "category", "category": "comments", "channel": "email", "from": True, "to": False}
    ]
    # The same with multipart/form-data, as RFC 8058 allows.
    assert client.post(url, {"List-Unsubscribe": "One-Click"}).status_code == 200


def test_get_never_changes_anything(client: Client, setup: dict[str, Any]) -> None:
    subscriber = setup["subscriber"]
    for key in ("comments", None):
        url = f"/unsubscribe/{unsubscribe_token(subscriber=subscriber, category_key=key)}"
        for method in (client.get, client.head):
            response = method(url)
            assert response.status_code == 200
        assert '<form method="post"' in client.get(url).content.decode()
    assert not Preference.objects.exists()
    assert not PreferenceChange.objects.exists()


def test_unsubscribe_from_everything(setup: dict[str, Any]) -> None:
    subscriber = setup["subscriber"]
    response = Client().post(f"/unsubscribe/{unsubscribe_token(subscriber=subscriber, category_key=None)}/")
    assert response.status_code == 200
    assert "except essential messages" in response.content.decode()
    state = subscriber_preferences(subscriber=subscriber)
    assert state["unsubscribed"] is True
    by_key = {c["key"]: c["channels"] for c in state["categories"]}
    assert not any(by_key["comments"].values()) and all(by_key["security"].values())


def test_unsubscribe_link_for_a_deleted_or_critical_category(client: Client, setup: dict[str, Any]) -> None:
    subscriber = setup["subscriber"]
    critical = client.post(f"/unsubscribe/{unsubscribe_token(subscriber=subscriber, category_key='security')}")
    assert critical.status_code == 422 and "can't be turned off" in critical.content.decode()
    token = unsubscribe_token(subscriber=subscriber, category_key="comments")
    setup["comments"].delete()
    gone = client.post(f"/unsubscribe/{token}")
    assert gone.status_code == 410 and "no longer exists" in gone.content.decode()
    assert not Preference.objects.exists()


def test_tampered_unsubscribe_token(client: Client, setup: dict[str, Any]) -> None:
    subscriber = setup["subscriber"]
    token = unsubscribe_token(subscriber=subscriber, category_key="comments")
    payload, rest = token.split(":", 1)
    forged = signing.dumps({"e": subscriber.environment_id, "s": subscriber.pk}, salt=UNSUBSCRIBE_SALT, key="guess")
    for bad in (payload[:-2] + "xx:" + rest, token + "x", forged, preference_token(subscriber=subscriber)):
        response = client.post(f"/unsubscribe/{bad}")
        assert response.status_code == 400, bad
        assert "This link is not valid" in response.content.decode()
    assert not Preference.objects.exists()


def test_links_are_what_reverse_gives_under_any_script_prefix(tenant):
    """The links' paths are resolved once per process (``links._token_path``): the same as
    ``reverse`` for every token, and under a script prefix (a deployment below a sub-path)."""
    from django.urls import reverse, set_script_prefix

    from apps.preferences import links, tokens

    subscriber = SubscriberFactory(environment=tenant.environment)
    for prefix in ("/", "/clarion/", "/"):
        set_script_prefix(prefix)
        page = tokens.preference_token(subscriber=subscriber)
        off = tokens.unsubscribe_token(subscriber=subscriber, category_key="digest", channel="email")
        assert links.preferences_url(subscriber=subscriber, base_url="https://n.example") == (
            "https://n.example" + reverse("preference-center", kwargs={"token": page})
        )
        assert links.unsubscribe_url(subscriber=subscriber, category_key="digest", base_url="https://n.example") == (
            "https://n.example" + reverse("one-click-unsubscribe", kwargs={"token": off})
        )
        assert links._token_path("preference-center", "a b%") == reverse("preference-center", kwargs={"token": "a b%"})
