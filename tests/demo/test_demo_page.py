from __future__ import annotations

import html as html_lib
import json
import shlex
from html.parser import HTMLParser

import pytest
from django.test import Client

from apps.inbox.auth import subscriber_hash_compute

URL = "/demo/inbox/"


@pytest.fixture
def var_dir(settings, tmp_path):
    settings.VAR_DIR = tmp_path
    settings.CLARION_DEMO_PAGE = True
    return tmp_path


def test_demo_page_is_off_unless_enabled(demo, settings):
    settings.CLARION_DEMO_PAGE = False
    assert Client().get(URL).status_code == 404


@pytest.fixture
def demo(var_dir, tenant):
    data = {
        "environment_slug": tenant.environment.slug,
        "secret_key": tenant.secret_key,
        "publishable_key": tenant.publishable_key,
        "inbox_hmac_secret": tenant.environment.inbox_hmac_secret,
        "subscriber_id": "demo-user",
    }
    (var_dir / "demo.json").write_text(json.dumps(data))
    return data


class _WidgetAttrs(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.attrs: dict[str, str | None] | None = None

    def handle_starttag(self, tag, attrs):
        if tag == "clarion-inbox":
            self.attrs = dict(attrs)


def page_config(response):
    """The widget's configuration as the browser sees it: the <clarion-inbox> element's attributes."""
    parser = _WidgetAttrs()
    parser.feed(response.content.decode())
    assert parser.attrs is not None, "no <clarion-inbox> on the page"
    return {
        "publishable_key": parser.attrs["publishable-key"],
        "subscriber_id": parser.attrs["subscriber-id"],
        "subscriber_hash": parser.attrs["subscriber-hash"],
        "inline": "inline" in parser.attrs,
    }


def test_demo_page_renders_with_demo_json(demo, tenant, django_assert_num_queries):
    with django_assert_num_queries(0):
        response = Client().get(URL)

    assert response.status_code == 200
    html = response.content.decode()
    assert '<script src="/static/clarion/inbox.js" defer></script>' in html  # the one script tag
    config = page_config(response)
    assert config == {
        "publishable_key": demo["publishable_key"],
        "subscriber_id": "demo-user",
        "subscriber_hash": tenant.subscriber_hash("demo-user"),
        "inline": True,
    }
    assert demo["inbox_hmac_secret"] not in html  # the secret stays on the server


def test_demo_page_shows_a_trigger_command(demo):
    html = Client().get(URL).content.decode()
    start = html.index('id="clarion-demo-curl">') + len('id="clarion-demo-curl">')
    command = html_lib.unescape(html[start : html.index("</pre>", start)])
    argv = shlex.split(command.replace("\\\n", " "))
    assert argv[:4] == ["curl", "-X", "POST", "http://testserver/api/v1/events/trigger"]
    assert f"Authorization: Bearer {demo['secret_key']}" in argv
    body = json.loads(argv[argv.index("-d") + 1])
    assert body == {
        "workflow": "comment-created",
        "to": ["demo-user"],
        "payload": {"post_title": "Hello", "comment": "First!", "author": "Grace"},
    }


def test_demo_page_hash_opens_a_real_session(demo, anon_api):
    config = page_config(Client().get(URL))
    response = anon_api.post(
        "/api/v1/inbox/session",
        {k: config[k] for k in ("publishable_key", "subscriber_id", "subscriber_hash")},
        format="json",
    )
    assert response.status_code == 201, response.content


def test_demo_page_without_demo_json_is_a_helpful_404(var_dir, db):
    response = Client().get(URL)

    assert response.status_code == 404
    html = response.content.decode()
    assert "seed_demo" in html and "make run" in html
    assert "demo.json" in html


@pytest.mark.parametrize("content", ["{not json", "[]", json.dumps({"environment_slug": "x"})])
def test_demo_page_with_broken_demo_json_is_a_helpful_404(var_dir, db, content):
    (var_dir / "demo.json").write_text(content)
    response = Client().get(URL)
    assert response.status_code == 404
    assert "seed_demo" in response.content.decode()


def test_demo_page_escapes_values(var_dir, db):
    nasty = "</script><script>alert(1)</script>"
    (var_dir / "demo.json").write_text(
        json.dumps(
            {
                "environment_slug": nasty,
                "secret_key": "sk_x",
                "publishable_key": "pk_x",
                "inbox_hmac_secret": "s",
                "subscriber_id": nasty,
            }
        )
    )
    response = Client().get(URL)
    assert response.status_code == 200
    assert nasty not in response.content.decode()
    assert page_config(response)["subscriber_hash"] == subscriber_hash_compute(secret="s", subscriber_id=nasty)


def test_demo_page_is_get_only(demo):
    assert Client().post(URL).status_code == 405


@pytest.mark.parametrize("script", ["inbox.js", "demo-page.js"])
def test_demo_scripts_are_served(demo, script):
    response = Client().get(f"/static/clarion/{script}")
    assert response.status_code == 200
    assert "javascript" in response["Content-Type"]
