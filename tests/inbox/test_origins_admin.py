"""Allowed origins are edited in the admin (Environment): the form validates and normalises them."""

from __future__ import annotations

import pytest

from apps.tenancy.admin import EnvironmentForm


def form_for(environment, origins):
    data = {
        "project": environment.project_id,
        "name": environment.name,
        "slug": environment.slug,
        "inbox_hmac_secret": environment.inbox_hmac_secret,
        "allowed_origins": origins,
        "branding": "{}",
    }
    return EnvironmentForm(data=data, instance=environment)


def test_valid_origins_are_normalised(tenant):
    form = form_for(
        tenant.environment, '["https://App.Example.com/", "https://*.example.org", "http://localhost:3000"]'
    )
    assert form.is_valid(), form.errors
    assert form.cleaned_data["allowed_origins"] == [
        "https://app.example.com",
        "https://*.example.org",
        "http://localhost:3000",
    ]


@pytest.mark.parametrize("origins", ['["example.com"]', '["https://x.test/path"]', '"https://x.test"', "[1]"])
def test_invalid_origins_are_refused(tenant, origins):
    form = form_for(tenant.environment, origins)
    assert not form.is_valid()
    assert "allowed_origins" in form.errors


def test_admin_change_page_saves_origins(tenant, admin_client):
    from apps.tenancy.origins import allowed_origins_for

    env = tenant.environment
    assert allowed_origins_for(env.pk) == ()
    url = f"/admin/tenancy/environment/{env.pk}/change/"
    page = admin_client.get(url)
    assert page.status_code == 200
    data = {
        "project": env.project_id,
        "name": env.name,
        "slug": env.slug,
        "allowed_origins": '["https://app.example.com"]',
        "branding": "{}",
        "api_keys-TOTAL_FORMS": "0",
        "api_keys-INITIAL_FORMS": str(env.api_keys.count()),
        "api_keys-MIN_NUM_FORMS": "0",
        "api_keys-MAX_NUM_FORMS": "1000",
    }
    response = admin_client.post(url, data)
    assert response.status_code == 302, response.content.decode()[:2000]
    env.refresh_from_db()
    assert env.allowed_origins == ["https://app.example.com"]
    assert allowed_origins_for(env.pk) == ("https://app.example.com",)  # the cache was dropped
