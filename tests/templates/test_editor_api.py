"""REST parity with the admin editor: drafts previewed unsaved, sample payload, layouts,
rollback, diffs, variables and test sends."""

from __future__ import annotations

from django.core import mail

from tests.assertions import assert_error
from tests.factories import SubscriberFactory

LAYOUT = {
    "name": "Brand",
    "header": {"en": "<b>Acme</b>"},
    "footer": {"en": "Acme Inc", "fr": "Acme SA"},
    "brand_color": "#112233",
    "is_default": True,
}


def test_layout_crud_and_preview(api, other_tenant):
    created = api.put("/api/v1/layouts/brand", LAYOUT, format="json")
    assert created.status_code == 201, created.content
    assert created.json()["footer"] == {"en": "Acme Inc", "fr": "Acme SA", "de": ""}
    updated = api.put("/api/v1/layouts/brand", {"css": "p { color: #333333; }"}, format="json")
    assert updated.status_code == 200 and updated.json()["brand_color"] == "#112233"
    # Besides the neutral "default" every new environment starts with.
    assert [row["key"] for row in api.get("/api/v1/layouts").json()["data"]] == ["brand", "default"]
    assert_error(api.put("/api/v1/layouts/x", {"brand_color": "blue"}, format="json"), 422, "invalid_layout")

    preview = api.post("/api/v1/layouts/brand/preview", {"locale": "fr"}, format="json")
    assert preview.status_code == 200, preview.content
    assert "Acme SA" in preview.json()["body"] and "color: #333333" in preview.json()["body"]
    assert "Acme SA" in preview.json()["text"]

    other = other_tenant.client.get("/api/v1/layouts/brand")
    assert_error(other, 404, "layout_not_found")
    assert api.delete("/api/v1/layouts/brand").status_code == 204


def test_put_with_layout_sample_and_buttons_then_preview_a_draft(api):
    api.put("/api/v1/layouts/brand", LAYOUT, format="json")
    response = api.put(
        "/api/v1/templates/weekly",
        {
            "channel": "email",
            "sample_payload": {"count": 4},
            "content": {
                "en": {"subject": "{{ payload.count }} new", "preheader": "Hi", "body": "**{{ payload.count }}**"}
            },
            "layout": "brand",
            "body_format": "markdown",
            "publish": True,
        },
        format="json",
    )
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["sample_payload"] == {"count": 4}
    assert (body["version"]["layout"], body["version"]["body_format"]) == ("brand", "markdown")
    assert body["version"]["content"]["en"]["preheader"] == "Hi"

    stored = api.post("/api/v1/templates/weekly/preview", {"sample": True}, format="json").json()
    assert "<strong>4</strong>" in stored["body"] and stored["subject"] == "4 new" and stored["layout"] == "brand"
    assert "Unsubscribe" in stored["text"]

    draft = api.post(
        "/api/v1/templates/weekly/preview",
        {"content": {"en": {"subject": "S", "body": "# {{ payload.count }} things"}}, "layout": None, "strict": True},
        format="json",
    )
    assert draft.status_code == 200, draft.content
    assert draft.json()["body"] == "<h1>4 things</h1>" and draft.json()["version"] is None

    broken = api.post(
        "/api/v1/templates/weekly/preview",
        {
            "content": {"en": {"subject": "S", "body": "{{ payload.cuont }}"}, "fr": {"subject": "{{ x.y }}"}},
            "strict": True,
        },
        format="json",
    )
    error = assert_error(broken, 422, "template_render")
    assert set(error["details"]) == {"en.body"}  # French is only rendered for a French preview
    assert "cuont" in error["details"]["en.body"]

    assert_error(
        api.put(
            "/api/v1/templates/weekly",
            {"content": {"en": {"subject": "S", "body": "{{ payload.nope }}"}}, "publish": True},
            format="json",
        ),
        422,
        "template_render",
    )
    assert_error(
        api.put(
            "/api/v1/templates/weekly", {"content": {"en": {"subject": "S", "body": "B"}}, "layout": "x"}, format="json"
        ),
        422,
        "layout_not_found",
    )


def test_sms_preview_counts_segments(api):
    api.put("/api/v1/templates/code", {"channel": "sms", "content": {"en": {"body": "x" * 161}}}, format="json")
    preview = api.post("/api/v1/templates/code/preview", {}, format="json").json()
    assert preview["sms"] == {"characters": 161, "units": 161, "segments": 2, "encoding": "GSM-7"}


def test_rollback_diff_and_variables(api):
    for title in ("One", "Two"):
        api.put(
            "/api/v1/templates/note",
            {"channel": "in_app", "content": {"en": {"title": title}}, "publish": True, "sample_payload": {"a": 1}},
            format="json",
        )
    rolled = api.post("/api/v1/templates/note/rollback", {"version": 1}, format="json")
    assert rolled.status_code == 201, rolled.content
    assert rolled.json()["published_version"] == 3
    assert rolled.json()["published"]["content"]["en"]["title"] == "One"
    assert_error(api.post("/api/v1/templates/note/rollback", {"version": 9}, format="json"), 404, "version_not_found")

    diff = api.get("/api/v1/templates/note/versions/diff?a=2&b=3").json()
    (row,) = [row for row in diff["fields"] if row["field"] == "en.title"]
    assert (row["before"], row["after"], row["changed"]) == ("Two", "One", True)
    assert api.get("/api/v1/templates/note/versions/diff?a=2").status_code == 400

    variables = api.get("/api/v1/templates/note/variables").json()["data"]
    assert {"group": "payload", "name": "payload.a", "example": "1"} in variables


def test_test_send_endpoint(api, tenant, settings):
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    api.put(
        "/api/v1/templates/hello",
        {"channel": "email", "content": {"en": {"subject": "Hello {{ subscriber.first_name }}", "body": "Hi"}}},
        format="json",
    )
    SubscriberFactory(environment=tenant.environment, subscriber_id="u1", email="u1@example.com", first_name="Bo")

    sent = api.post("/api/v1/templates/hello/test", {"subscriber_id": "u1"}, format="json")

    assert sent.status_code == 200, sent.content
    assert sent.json()["status"] == "sent" and sent.json()["recipient"] == "u1@example.com"
    assert mail.outbox[0].subject == "Hello Bo"
    assert_error(api.post("/api/v1/templates/hello/test", {}, format="json"), 422, "recipient_required")
    api.put("/api/v1/templates/inbox", {"channel": "in_app", "content": {"en": {"title": "T"}}}, format="json")
    assert_error(api.post("/api/v1/templates/inbox/test", {"to": "x"}, format="json"), 422, "test_send_unsupported")
