from __future__ import annotations

from django.db.models import Prefetch, QuerySet

from apps.core.errors import NotFound
from apps.tenancy.models import Environment
from apps.workflows.models import FrequencyCap, Run, StepRun, Workflow


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


def subscriber_runs(
    *, environment: Environment, subscriber_pk: int, status: str | None = None, workflow_key: str | None = None
) -> QuerySet[Run]:
    """A subscriber's runs, newest first, with their decisions and messages prefetched."""
    from apps.delivery.models import DeliveryAttempt, Message

    runs = (
        Run.objects.filter(environment=environment, subscriber_id=subscriber_pk)
        .select_related("subscriber", "event", "workflow_version__workflow")
        .prefetch_related(
            Prefetch("step_runs", queryset=StepRun.objects.order_by("id")),
            Prefetch(
                "messages",
                queryset=Message.objects.order_by("id").prefetch_related(
                    Prefetch("attempts_log", queryset=DeliveryAttempt.objects.order_by("id"))
                ),
            ),
        )
    )
    if status:
        runs = runs.filter(status=status)
    if workflow_key:
        runs = runs.filter(workflow_version__workflow__key=workflow_key)
    return runs


def frequency_cap_list(*, environment: Environment) -> QuerySet[FrequencyCap]:
    return FrequencyCap.objects.filter(environment=environment).select_related("category").order_by("channel", "id")


def frequency_cap_get(*, environment: Environment, cap_id: int) -> FrequencyCap:
    cap = frequency_cap_list(environment=environment).filter(pk=cap_id).first()
    if cap is None:
        raise NotFound(f"No frequency cap {cap_id} in this environment.", code="frequency_cap_not_found")
    return cap
