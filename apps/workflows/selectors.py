from __future__ import annotations

from django.db.models import QuerySet

from apps.core.errors import NotFound
from apps.tenancy.models import Environment
from apps.workflows.models import Run, Workflow


def workflow_get(*, environment: Environment, key: str) -> Workflow:
    workflow = (
        Workflow.objects.select_related("published_version", "category")
        .filter(environment=environment, key=key)
        .first()
    )
    if workflow is None:
        raise NotFound(f"No workflow with key '{key}' in this environment.", code="workflow_not_found")
    return workflow


def workflow_list(*, environment: Environment) -> QuerySet[Workflow]:
    return Workflow.objects.select_related("published_version", "category").filter(environment=environment)


def runs_for_subscriber(*, environment: Environment, subscriber_pk: int) -> QuerySet[Run]:
    return Run.objects.filter(environment=environment, subscriber_id=subscriber_pk)
