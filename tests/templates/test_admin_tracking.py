"""A template's open and click tracking is set on its settings page (beside name and description),
through ``template_upsert``; a form that leaves it out keeps it. Publishing from the admin is
recorded in the object's history."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.contrib.admin.models import LogEntry
from django.urls import reverse

from apps.core.errors import ApiError
from apps.templates.models import Template
from apps.templates.services import template_upsert
from apps.workflows.services import workflow_upsert
from tests.templates.conftest import make_template

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


def test_publishing_from_the_admin_is_recorded(admin_client: Any, tenant: Any) -> None:
    template, _ = make_template(tenant.environment, publish=False)
    empty = Template.objects.create(environment=tenant.environment, key="empty", name="Empty", channel="sms")
    admin_client.post(
        reverse("admin:notification_templates_template_changelist"),
        {"action": "publish_latest", ACTION_CHECKBOX_NAME: [template.pk, empty.pk]},
    )
    [entry] = LogEntry.objects.filter(content_type__model="template")  # nothing for the one without versions
    assert (entry.object_id, entry.get_change_message()) == (str(template.pk), "Published version 1 from the admin.")


def test_publishing_a_workflow_from_the_admin_is_recorded(admin_client: Any, tenant: Any) -> None:
    make_template(tenant.environment, "hello")
    workflow, _ = workflow_upsert(
        environment=tenant.environment, key="w", name="w", steps=[{"id": "a", "type": "in_app", "template": "hello"}]
    )
    admin_client.post("/admin/workflows/workflow/", {"action": "publish", ACTION_CHECKBOX_NAME: [workflow.pk]})
    workflow.refresh_from_db()
    assert workflow.published_version is not None
    entry = LogEntry.objects.get(object_id=str(workflow.pk), content_type__model="workflow")
    assert entry.get_change_message() == f"Published version {workflow.published_version.number} from the admin."
