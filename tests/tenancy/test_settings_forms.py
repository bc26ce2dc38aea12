"""The environment's settings page as forms: allowed origins as a list (an error per row), branding
as fields (colour picker, logo preview, other keys kept), API keys created (shown once, stored
hashed), revoked and their last use shown; staff permissions and CSRF."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from html import unescape
from typing import Any

import pytest
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.contrib.admin.models import LogEntry
from django.contrib.auth.models import Permission, User
from django.test import Client
from django.urls import reverse

from apps.inbox.origins import origin_matches
from apps.tenancy.admin import EnvironmentForm
from apps.tenancy.models import ApiKey, Environment
from apps.tenancy.services import environment_create, hash_key
from apps.tenancy.settings_forms import origin_entry_error

pytestmark = pytest.mark.django_db

INLINE = {
    "api_keys-TOTAL_FORMS": "0",
    "api_keys-MIN_NUM_FORMS": "0",
    "api_keys-MAX_NUM_FORMS": "1000",
}


def change_url(env: Environment) -> str:
    return reverse("admin:tenancy_environment_change", args=[env.pk])


def settings_post(env: Environment, **overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "project": env.project_id,
        "name": env.name,
        "slug": env.slug,
        "allowed_origins": [""],
        "brand_primary_color": "#4f46e5",
        "brand_color_default": "on",
        **INLINE,
        "api_keys-INITIAL_FORMS": str(env.api_keys.count()),
    }
    data.update(overrides)
    return data


def staff(*codenames: str) -> Client:
    user = User.objects.create_user("operator", password="x", is_staff=True)
    user.user_permissions.set(Permission.objects.filter(content_type__app_label="tenancy", codename__in=codenames))
    client = Client()
    client.force_login(user)
    return client


# --- allowed origins -------------------------------------------------------------------------------


def test_origins_round_trip_as_one_input_per_row(admin_client: Any, tenant: Any) -> None:
    env = tenant.environment
    posted = [
        "https://App.Example.com/",
        "",
        "https://*.example.org",
        "http://localhost:3000",
        "https://app.example.com",
    ]
    response = admin_client.post(change_url(env), settings_post(env, allowed_origins=posted))
    assert response.status_code == 302, response.content.decode()[:3000]
    env.refresh_from_db()
    # normalised, the empty row and the duplicate dropped, stored as the same JSON list
    assert env.allowed_origins == ["https://app.example.com", "https://*.example.org", "http://localhost:3000"]

    page = admin_client.get(change_url(env)).content.decode()
    rendered = re.findall(r'<input type="text" name="allowed_origins" id="[^"]+" value="([^"]*)"', page)
    assert rendered == [*env.allowed_origins, ""]  # one row each and an empty one to add another
    assert 'for="id_allowed_origins"' in page and 'id="id_allowed_origins"' in page

    again = admin_client.post(change_url(env), settings_post(env, allowed_origins=rendered))
    assert again.status_code == 302
    env.refresh_from_db()
    assert env.allowed_origins == ["https://app.example.com", "https://*.example.org", "http://localhost:3000"]

    admin_client.post(change_url(env), settings_post(env, allowed_origins=[""]))
    env.refresh_from_db()
    assert env.allowed_origins == []


def test_each_bad_origin_gets_its_own_error_and_nothing_is_saved(admin_client: Any, tenant: Any) -> None:
    env = tenant.environment
    env.allowed_origins = ["https://kept.example.com"]
    env.save(update_fields=["allowed_origins"])
    posted = ["https://ok.example.com", "https://x.test/path", "example.com", "https://*example.com", "<b>x</b>"]
    response = admin_client.post(change_url(env), settings_post(env, allowed_origins=posted))
    assert response.status_code == 200
    page = response.content.decode()
    rows = re.findall(r'<li class="clarion-origin-row( clarion-origin-invalid)?"><input[^>]*value="([^"]*)"', page)
    assert [(unescape(value), bool(bad)) for bad, value in rows] == [
        ("https://ok.example.com", False),
        ("https://x.test/path", True),
        ("example.com", True),
        ("https://*example.com", True),
        ("<b>x</b>", True),
        ("", False),
    ]
    assert page.count('aria-invalid="true"') == 4
    assert "<b>x</b>" not in page and "&lt;b&gt;x&lt;/b&gt;" in page  # escaped everywhere
    env.refresh_from_db()
    assert env.allowed_origins == ["https://kept.example.com"]


@pytest.mark.parametrize(
    ("entry", "origin"),
    [
        ("https://app.example.com", "https://app.example.com"),
        ("https://*.example.org", "https://a.b.example.org"),
        ("http://localhost:3000", "http://localhost:3000"),
        ("https://app.example.com:443", "https://app.example.com"),
        ("http://[::1]:8080", "http://[::1]:8080"),
    ],
)
def test_an_accepted_entry_is_one_the_inbox_matcher_matches(entry: str, origin: str, tenant: Any) -> None:
    form = EnvironmentForm(data=settings_post(tenant.environment, allowed_origins=[entry]), instance=tenant.environment)
    assert form.is_valid(), form.errors
    assert origin_matches(origin, form.cleaned_data["allowed_origins"])


@pytest.mark.parametrize(
    "entry",
    [
        *("example.com", "ftp://x.test", "https://x.test/app", "https://x.test?a=1", "https://u@x.test"),
        *("https://*x.test", "https://ex ample.test", "https://exämple.test", "https://*.*.x.test", "https://a_b.test"),
    ],
)
def test_entries_the_matcher_would_never_match_are_refused(entry: str) -> None:
    assert origin_entry_error(entry)


def test_a_pasted_json_list_is_still_read(tenant: Any) -> None:
    env = tenant.environment
    form = EnvironmentForm(data=settings_post(env, allowed_origins='["https://a.test", "ftp://b"]'), instance=env)
    assert not form.is_valid()
    assert "ftp://b" in str(form.errors["allowed_origins"]) and "https://a.test" not in str(form.errors)


# --- branding ----------------------------------------------------------------------------------------


def test_branding_fields_round_trip_and_keep_other_keys(admin_client: Any, tenant: Any) -> None:
    env = tenant.environment
    env.branding = {"name": "Old name", "color": "#abc", "support_email": "help@acme.test", "extra": {"a": 1}}
    env.save(update_fields=["branding"])

    page = admin_client.get(change_url(env)).content.decode()
    assert 'type="color" name="brand_primary_color" value="#aabbcc"' in page  # alias read, #rgb widened
    assert 'name="brand_product_name" value="Old name"' in page
    assert "support_email" in page  # the other keys are shown, read-only

    response = admin_client.post(
        change_url(env),
        settings_post(
            env,
            brand_product_name="Acme Cloud",
            brand_primary_color="#0F766E",
            brand_color_default="",
            brand_logo_url="https://cdn.acme.test/logo.png",
        ),
    )
    assert response.status_code == 302, response.content.decode()[:3000]
    env.refresh_from_db()
    assert env.branding == {
        "support_email": "help@acme.test",
        "extra": {"a": 1},
        "product_name": "Acme Cloud",
        "primary_color": "#0f766e",
        "logo_url": "https://cdn.acme.test/logo.png",
    }

    page = admin_client.get(change_url(env)).content.decode()
    [preview] = re.findall(r'<img class="clarion-logo-preview"[^>]*>', page)
    assert 'src="https://cdn.acme.test/logo.png"' in preview and 'referrerpolicy="no-referrer"' in preview

    admin_client.post(change_url(env), settings_post(env, brand_product_name="Acme Cloud", brand_color_default="on"))
    env.refresh_from_db()
    assert env.branding == {"support_email": "help@acme.test", "extra": {"a": 1}, "product_name": "Acme Cloud"}


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("brand_primary_color", "red", "A hex colour"),
        ("brand_primary_color", "#12345g", "A hex colour"),
        ("brand_logo_url", "http://cdn.acme.test/logo.png", "https://"),
        ("brand_logo_url", "javascript:alert(1)", "https://"),
        ("brand_logo_url", "https://", "Not a valid URL"),
    ],
)
def test_bad_branding_is_refused_at_its_field(
    admin_client: Any, tenant: Any, field: str, value: str, message: str
) -> None:
    env = tenant.environment
    response = admin_client.post(change_url(env), settings_post(env, brand_color_default="", **{field: value}))
    assert response.status_code == 200
    assert message in response.content.decode()
    env.refresh_from_db()
    assert env.branding == {}


def test_a_stored_http_logo_does_not_block_saving_other_fields(admin_client: Any, tenant: Any) -> None:
    env = tenant.environment
    env.branding = {"logo_url": "http://old.acme.test/logo.png"}
    env.save(update_fields=["branding"])
    page = admin_client.get(change_url(env)).content.decode()
    assert '<img class="clarion-logo-preview" src=""' in page  # not https: no preview request
    response = admin_client.post(
        change_url(env), settings_post(env, brand_logo_url="http://old.acme.test/logo.png", currency="EUR")
    )
    assert response.status_code == 302
    env.refresh_from_db()
    assert (env.currency, env.branding) == ("EUR", {"logo_url": "http://old.acme.test/logo.png"})


def test_branding_text_is_escaped(admin_client: Any, tenant: Any) -> None:
    env = tenant.environment
    env.branding = {"product_name": '"><script>alert(1)</script>', "other": "<img src=x onerror=alert(1)>"}
    env.save(update_fields=["branding"])
    page = admin_client.get(change_url(env)).content.decode()
    assert "<script>alert(1)" not in page and "<img src=x" not in page


# --- API keys ----------------------------------------------------------------------------------------


def test_create_a_key_shows_it_once_and_stores_only_its_hash(admin_client: Any, tenant: Any) -> None:
    env = tenant.environment
    url = reverse("admin:tenancy_environment_key_create", args=[env.pk])
    assert 'href="' + url + '"' in admin_client.get(change_url(env)).content.decode()
    form = admin_client.get(url)
    assert form.status_code == 200 and 'name="kind"' in form.content.decode()

    response = admin_client.post(url, {"kind": "secret", "name": "billing backend"})
    assert response.status_code == 200
    assert "no-store" in response["Cache-Control"]
    page = response.content.decode()
    [raw] = re.findall(r'id="clarion-raw-key"[^>]*value="(sk_[^"]+)"', page)
    key = ApiKey.objects.get(environment=env, name="billing backend")
    assert key.kind == "secret" and key.key_hash == hash_key(raw) and key.revoked_at is None
    assert raw not in (key.prefix, key.last_four, key.key_hash)

    # never again: not on the environment's page, the key list or its history
    for later in (change_url(env), "/admin/tenancy/apikey/", reverse("admin:tenancy_apikey_change", args=[key.pk])):
        assert raw not in admin_client.get(later).content.decode()
    entries = list(LogEntry.objects.values_list("object_repr", "change_message"))
    assert entries and all(raw not in f"{repr_}{message}" for repr_, message in entries)
    assert LogEntry.objects.filter(object_id=str(env.pk), content_type__model="environment").exists()

    # the server API takes it
    assert Client().get("/api/v1/workflows", HTTP_AUTHORIZATION=f"Bearer {raw}").status_code == 200


def test_create_a_publishable_key_and_refuse_a_bad_kind(admin_client: Any, tenant: Any) -> None:
    env = tenant.environment
    url = reverse("admin:tenancy_environment_key_create", args=[env.pk])
    before = ApiKey.objects.count()
    refused = admin_client.post(url, {"kind": "root", "name": "x"})
    assert refused.status_code == 200 and "Select a valid choice" in refused.content.decode()
    assert ApiKey.objects.count() == before
    created = admin_client.post(url, {"kind": "publishable"}).content.decode()
    assert re.search(r'value="pk_[^"]+"', created)
    assert ApiKey.objects.count() == before + 1


def test_revoke_a_key_from_its_environment_page(admin_client: Any, tenant: Any) -> None:
    env = tenant.environment
    key = ApiKey.objects.get(environment=env, kind="publishable")
    url = reverse("admin:tenancy_environment_key_revoke", args=[env.pk, key.pk])
    assert url in admin_client.get(change_url(env)).content.decode()
    confirm = admin_client.get(url)
    assert confirm.status_code == 200 and "cannot be undone" in confirm.content.decode()
    key.refresh_from_db()
    assert key.revoked_at is None  # a GET changes nothing

    done = admin_client.post(url, follow=True)
    assert done.redirect_chain[-1][0] == change_url(env) and "Revoked" in done.content.decode()
    key.refresh_from_db()
    assert key.revoked_at is not None
    assert LogEntry.objects.get(object_id=str(key.pk), content_type__model="apikey").get_change_message() == (
        "Revoked from the admin."
    )
    again = admin_client.post(url, follow=True)
    assert "already revoked" in again.content.decode()
    assert LogEntry.objects.filter(object_id=str(key.pk), content_type__model="apikey").count() == 1


def test_keys_are_scoped_to_their_environment(admin_client: Any, tenant: Any) -> None:
    other = environment_create(name="other", project_name="Other").environment
    key = ApiKey.objects.get(environment=other, kind="secret")
    url = reverse("admin:tenancy_environment_key_revoke", args=[tenant.environment.pk, key.pk])
    assert admin_client.get(url).status_code == 404
    assert admin_client.post(url).status_code == 404
    key.refresh_from_db()
    assert key.revoked_at is None
    assert admin_client.get(reverse("admin:tenancy_environment_key_create", args=[999999])).status_code == 404


def test_last_used_is_shown(admin_client: Any, tenant: Any) -> None:
    env = tenant.environment
    ApiKey.objects.filter(environment=env, kind="secret").update(last_used_at=datetime(2026, 3, 4, 5, 6, tzinfo=UTC))
    page = admin_client.get(change_url(env)).content.decode()
    assert "last used at" in page.lower() and "March 4, 2026" in page


def test_permissions(tenant: Any) -> None:
    env = tenant.environment
    key = ApiKey.objects.get(environment=env, kind="secret")
    create = reverse("admin:tenancy_environment_key_create", args=[env.pk])
    revoke = reverse("admin:tenancy_environment_key_revoke", args=[env.pk, key.pk])

    viewer = staff("view_environment", "view_apikey")
    page = viewer.get(change_url(env)).content.decode()
    assert create not in page and revoke not in page
    assert viewer.get(create).status_code == 403 and viewer.post(create, {"kind": "secret"}).status_code == 403
    assert viewer.post(revoke).status_code == 403
    assert "rotate_inbox_secret" not in viewer.get("/admin/tenancy/environment/").content.decode()
    assert 'value="revoke"' not in viewer.get("/admin/tenancy/apikey/").content.decode()
    viewer.post("/admin/tenancy/apikey/", {"action": "revoke", ACTION_CHECKBOX_NAME: [key.pk]})

    User.objects.filter(username="operator").delete()
    editor = staff("view_environment", "change_environment")  # may edit settings, not keys
    assert editor.post(create, {"kind": "secret"}).status_code == 403
    assert editor.post(revoke).status_code == 403

    anonymous = Client()
    assert anonymous.post(create, {"kind": "secret"}).status_code == 302  # to the login page
    key.refresh_from_db()
    assert key.revoked_at is None
    assert ApiKey.objects.filter(environment=env).count() == 2


def test_key_forms_need_the_csrf_token(tenant: Any, admin_user: Any) -> None:
    env = tenant.environment
    client = Client(enforce_csrf_checks=True)
    client.force_login(admin_user)
    key = ApiKey.objects.get(environment=env, kind="secret")
    create = reverse("admin:tenancy_environment_key_create", args=[env.pk])
    assert client.post(create, {"kind": "secret"}).status_code == 403
    assert client.post(reverse("admin:tenancy_environment_key_revoke", args=[env.pk, key.pk])).status_code == 403
    key.refresh_from_db()
    assert key.revoked_at is None and ApiKey.objects.filter(environment=env).count() == 2


# --- the inbox HMAC secret -------------------------------------------------------------------------------


def test_the_inbox_secret_is_masked_and_shown_once_when_rotated(admin_client: Any, tenant: Any) -> None:
    env = tenant.environment
    old = env.inbox_hmac_secret
    page = admin_client.get(change_url(env)).content.decode()
    assert old not in page and f"••••{old[-4:]}" in page

    url = reverse("admin:tenancy_environment_inbox_secret_rotate", args=[env.pk])
    assert url in page
    assert "Yes, rotate it" in admin_client.get(url).content.decode()
    env.refresh_from_db()
    assert env.inbox_hmac_secret == old  # a GET changes nothing

    response = admin_client.post(url)
    assert response.status_code == 200 and "no-store" in response["Cache-Control"]
    env.refresh_from_db()
    assert env.inbox_hmac_secret != old
    [shown] = re.findall(r'id="clarion-raw-key"[^>]*value="([^"]+)"', response.content.decode())
    assert shown == env.inbox_hmac_secret
    assert shown not in admin_client.get(change_url(env)).content.decode()
    [entry] = LogEntry.objects.filter(object_id=str(env.pk), content_type__model="environment")
    assert entry.get_change_message() == "Rotated the inbox HMAC secret from the admin." and shown not in str(
        entry.object_repr
    )


def test_rotating_from_the_page_needs_the_change_permission(tenant: Any) -> None:
    env = tenant.environment
    old = env.inbox_hmac_secret
    viewer = staff("view_environment")
    page = viewer.get(change_url(env)).content.decode()
    url = reverse("admin:tenancy_environment_inbox_secret_rotate", args=[env.pk])
    assert old not in page and url not in page
    assert viewer.post(url).status_code == 403
    env.refresh_from_db()
    assert env.inbox_hmac_secret == old
