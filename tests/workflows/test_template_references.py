"""Workflow → template reference rows: written at publish, backfilled by a data migration."""

from __future__ import annotations

import importlib
from typing import Any

import pytest
from django.apps import apps

from apps.workflows.models import WorkflowTemplateReference
from apps.workflows.services import workflow_delete, workflow_upsert
from tests.templates.conftest import make_template

pytestmark = pytest.mark.django_db

backfill = importlib.import_module("apps.workflows.migrations.0006_backfill_template_references").backfill


def references() -> set[tuple[str, str]]:
    return set(WorkflowTemplateReference.objects.values_list("workflow__key", "template__key"))


def test_backfill_writes_the_published_versions_references(tenant: Any, other_tenant: Any) -> None:
    for environment in (tenant.environment, other_tenant.environment):
        make_template(environment, "welcome")
        make_template(environment, "mail", channel="email")
    steps = [
        {"id": "i", "type": "in_app", "template": "welcome"},
        {"id": "reach", "type": "escalate", "channels": [{"channel": "email", "template": "mail"}]},
    ]
    workflow_upsert(environment=tenant.environment, key="signup", steps=steps, publish=True)
    workflow_upsert(environment=other_tenant.environment, key="other", steps=steps[:1], publish=True)
    workflow_upsert(environment=tenant.environment, key="draft-only", steps=steps[:1])
    written = references()
    assert written == {("signup", "welcome"), ("signup", "mail"), ("other", "welcome")}
    WorkflowTemplateReference.objects.filter(workflow__key="signup", template__key="mail").delete()
    WorkflowTemplateReference.objects.filter(workflow__key="other").delete()

    backfill(apps, None)
    backfill(apps, None)  # idempotent

    assert references() == written
    assert set(WorkflowTemplateReference.objects.values_list("workflow__environment", "template__environment")) == {
        (tenant.environment.pk, tenant.environment.pk),
        (other_tenant.environment.pk, other_tenant.environment.pk),
    }


def test_deleting_the_workflow_frees_its_templates(tenant: Any) -> None:
    from apps.templates.services import template_delete

    template, _ = make_template(tenant.environment, "welcome")
    workflow, _ = workflow_upsert(
        environment=tenant.environment,
        key="w",
        steps=[{"id": "i", "type": "in_app", "template": "welcome"}],
        publish=True,
    )

    workflow_delete(workflow=workflow)
    template_delete(template=template)

    assert not WorkflowTemplateReference.objects.exists()


def test_an_environment_is_deleted_with_its_workflows_and_templates(tenant: Any) -> None:
    """RESTRICT, not PROTECT: the references go with their workflows in the same delete."""
    from apps.templates.models import Template

    make_template(tenant.environment, "welcome")
    workflow_upsert(
        environment=tenant.environment,
        key="w",
        steps=[{"id": "i", "type": "in_app", "template": "welcome"}],
        publish=True,
    )

    tenant.environment.delete()

    assert not Template.objects.exists() and not WorkflowTemplateReference.objects.exists()
