"""A template's open and click tracking is set on its settings page (beside name and description),
through ``template_upsert``; a form that leaves it out keeps it."""

from __future__ import annotations

from typing import Any

import pytest
from django.urls import reverse

from apps.core.errors import ApiError
from apps.templates.models import Template
from apps.templates.services import template_upsert

pytestmark = pytest.mark.django_db


def settings_form(template: Template, **overrides: str) -> dict[str, str]:
    data = {
        "name": template.name,
        "description": template.description,
        "channel": template.channel,
        "versions-TOTAL_FORMS": "0",
        "versions-INITIAL_FORMS": "0",
        "versions-MIN_NUM_FORMS": "0",
        "versions-MAX_NUM_FORMS": "1000",
    }
    data.update(overrides)
    return data


def test_settings_page_sets_tracking(admin_client: Any, tenant: Any) -> None:
    template, _ = template_upsert(environment=tenant.environment, key="welcome", channel="email")
    url = reverse("admin:notification_templates_template_settings", args=[template.pk])
    page = admin_client.get(url).content.decode()
    assert '<select name="tracking"' in page and 'value="inherit" selected' in page

    response = admin_client.post(url, settings_form(template, tracking="off"))
    assert response.status_code == 302, response.content.decode()[:2000]
    assert Template.objects.get(pk=template.pk).tracking == "off"

    admin_client.post(url, settings_form(template, name="Welcome!"))  # tracking left out: kept
    template.refresh_from_db()
    assert (template.name, template.tracking) == ("Welcome!", "off")


def test_an_unknown_tracking_value_is_refused(admin_client: Any, tenant: Any) -> None:
    template, _ = template_upsert(environment=tenant.environment, key="welcome", channel="email")
    url = reverse("admin:notification_templates_template_settings", args=[template.pk])
    assert admin_client.post(url, settings_form(template, tracking="sometimes")).status_code == 200  # form error
    with pytest.raises(ApiError):
        template_upsert(environment=tenant.environment, key="welcome", tracking="sometimes")
    assert Template.objects.get(pk=template.pk).tracking == "inherit"
