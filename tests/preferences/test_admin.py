from __future__ import annotations

from typing import Any

import pytest

from apps.preferences.models import Category
from tests.factories import CategoryFactory
from tests.preferences.factories import PreferenceFactory

pytestmark = pytest.mark.django_db


def _form(tenant: Any, default_channels: str) -> dict[str, Any]:
    return {
        "environment": tenant.environment.pk,
        "key": "billing",
        "name": "Billing",
        "description": "",
        "default_channels": default_channels,
        "order": 0,
        "digest_schedule": "daily 09:00",
        "digest_templates": "{}",
    }


def test_category_admin_validates_default_channels(admin_client: Any, tenant: Any) -> None:
    response = admin_client.post("/admin/preferences/category/add/", _form(tenant, '{"fax": true}'))
    assert response.status_code == 200
    assert b"Unknown channel(s): fax" in response.content
    assert not Category.objects.exists()

    response = admin_client.post("/admin/preferences/category/add/", _form(tenant, '{"sms": false}'))
    assert response.status_code == 302
    assert Category.objects.get().default_channels == {"sms": False}


def test_preference_admin_is_read_only(admin_client: Any, tenant: Any) -> None:
    category = CategoryFactory(environment=tenant.environment)
    preference = PreferenceFactory(subscriber__environment=tenant.environment, category=category)
    assert admin_client.get("/admin/preferences/preference/").status_code == 200
    assert admin_client.get(f"/admin/preferences/preference/{preference.pk}/change/").status_code == 200
    assert admin_client.get("/admin/preferences/preference/add/").status_code == 403
    response = admin_client.post(
        f"/admin/preferences/preference/{preference.pk}/change/", {"enabled": "on", "channel": "sms"}
    )
    assert response.status_code == 403
    preference.refresh_from_db()
    assert (preference.channel, preference.enabled) == ("email", False)


def test_history_and_frequency_admin_are_read_only(admin_client: Any, tenant: Any) -> None:
    from apps.preferences.models import PreferenceChange
    from apps.preferences.services import preferences_update
    from tests.factories import SubscriberFactory

    subscriber = SubscriberFactory(environment=tenant.environment)
    CategoryFactory(environment=tenant.environment, key="billing")
    preferences_update(subscriber=subscriber, channels={"sms": False}, frequencies={"billing": "daily"}, source="page")
    response = admin_client.get("/admin/preferences/preferencechange/")
    assert response.status_code == 200
    assert "channel sms: True → False" in response.content.decode()
    assert "frequency billing: instant → daily" in response.content.decode()
    change = PreferenceChange.objects.get()
    assert admin_client.get(f"/admin/preferences/preferencechange/{change.pk}/change/").status_code == 200
    assert admin_client.get(f"/admin/preferences/preferencechange/{change.pk}/delete/").status_code == 403
    assert admin_client.get("/admin/preferences/categoryfrequency/").status_code == 200
    assert admin_client.get("/admin/preferences/categoryfrequency/add/").status_code == 403


def test_workflow_preference_admin_validates(admin_client: Any, tenant: Any, other_tenant: Any) -> None:
    from apps.preferences.models import WorkflowPreference
    from apps.workflows.models import Workflow

    workflow = Workflow.objects.create(environment=tenant.environment, key="otp", name="OTP")
    form = {"environment": tenant.environment.pk, "workflow": workflow.pk, "default_channels": '{"fax": true}'}
    response = admin_client.post("/admin/preferences/workflowpreference/add/", form)
    assert response.status_code == 200 and b"Unknown channel(s): fax" in response.content
    form["environment"] = other_tenant.environment.pk
    form["default_channels"] = '{"sms": false}'
    response = admin_client.post("/admin/preferences/workflowpreference/add/", form)
    assert response.status_code == 200 and b"another environment" in response.content
    form["environment"] = tenant.environment.pk
    assert admin_client.post("/admin/preferences/workflowpreference/add/", form).status_code == 302
    assert WorkflowPreference.objects.get().default_channels == {"sms": False}


def test_category_admin_validates_digest_settings(admin_client: Any, tenant: Any) -> None:
    form = _form(tenant, "{}") | {"digest_schedule": "daily 22:00-07:00", "digest_templates": '{"fax": "x"}'}
    response = admin_client.post("/admin/preferences/category/add/", form)
    assert response.status_code == 200
    assert b"not a range" in response.content and b"Unknown channel(s): fax" in response.content
    form |= {"digest_schedule": "weekly friday 17:00", "digest_templates": '{"email": "billing-digest"}'}
    assert admin_client.post("/admin/preferences/category/add/", form).status_code == 302
    category = Category.objects.get()
    assert (category.digest_schedule, category.digest_templates) == ("weekly friday 17:00", {"email": "billing-digest"})
