"""The environment's currency and email tracking switches are edited in the admin; revoking a key
and rotating the inbox secret are recorded in the admin's history."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.contrib.admin.models import LogEntry
from django.urls import reverse

from apps.tenancy.models import ApiKey, Environment

pytestmark = pytest.mark.django_db


def environment_form(env: Environment, **overrides: str) -> dict[str, Any]:
    data: dict[str, Any] = {
        "project": env.project_id,
        "name": env.name,
        "slug": env.slug,
        "allowed_origins": "[]",
        "branding": "{}",
        "api_keys-TOTAL_FORMS": "0",
        "api_keys-INITIAL_FORMS": str(env.api_keys.count()),
        "api_keys-MIN_NUM_FORMS": "0",
        "api_keys-MAX_NUM_FORMS": "1000",
    }
    data.update(overrides)
    return data


def test_currency_and_tracking_switches(admin_client: Any, tenant: Any) -> None:
    env = tenant.environment
    url = reverse("admin:tenancy_environment_change", args=[env.pk])
    page = admin_client.get(url).content.decode()
    for name in ("currency", "track_opens", "track_clicks", "track_critical"):
        assert f'name="{name}"' in page, name

    response = admin_client.post(url, environment_form(env, currency="eur", track_opens="on", track_clicks="on"))
    assert response.status_code == 302, response.content.decode()[:2000]
    env.refresh_from_db()
    assert (env.currency, env.track_opens, env.track_clicks, env.track_critical) == ("EUR", True, True, False)

    refused = admin_client.post(url, environment_form(env, currency="E1"))
    assert refused.status_code == 200 and "Three letters" in refused.content.decode()
    admin_client.post(url, environment_form(env))  # currency left out: kept
    env.refresh_from_db()
    assert (env.currency, env.track_opens) == ("EUR", False)


def test_revoke_is_recorded_once_per_key(admin_client: Any, tenant: Any) -> None:
    key = ApiKey.objects.get(environment=tenant.environment, kind=ApiKey.Kind.PUBLISHABLE)
    for _ in range(2):  # the second time there is nothing left to revoke
        admin_client.post("/admin/tenancy/apikey/", {"action": "revoke", ACTION_CHECKBOX_NAME: [key.pk]})
    key.refresh_from_db()
    assert key.revoked_at is not None
    [entry] = LogEntry.objects.filter(object_id=str(key.pk), content_type__model="apikey")
    assert entry.get_change_message() == "Revoked from the admin."


def test_rotating_the_inbox_secret_is_recorded(admin_client: Any, tenant: Any) -> None:
    env = tenant.environment
    old = env.inbox_hmac_secret
    admin_client.post("/admin/tenancy/environment/", {"action": "rotate_inbox_secret", ACTION_CHECKBOX_NAME: [env.pk]})
    env.refresh_from_db()
    assert env.inbox_hmac_secret != old
    entry = LogEntry.objects.get(object_id=str(env.pk), content_type__model="environment")
    assert entry.get_change_message() == "Rotated the inbox HMAC secret from the admin."
