from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from django.db.models import Prefetch, QuerySet

from apps.core.errors import NotFound
from apps.delivery.models import DeliveryAttempt, Message
from apps.events.models import Event
from apps.tenancy.models import Environment
from apps.workflows.models import FrequencyCap, Run, StepRun, Workflow, WorkflowVersion


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


def _with_trace(runs: QuerySet[Run]) -> QuerySet[Run]:
    """Runs with what ``run_data`` shows prefetched: decisions, messages and their attempts."""
    return runs.prefetch_related(
        Prefetch("step_runs", queryset=StepRun.objects.order_by("id")),
        Prefetch(
            "messages",
            queryset=Message.objects.order_by("id").prefetch_related(
                Prefetch("attempts_log", queryset=DeliveryAttempt.objects.order_by("id"))
            ),
        ),
    )


def subscriber_runs(
    *, environment: Environment, subscriber_pk: int, status: str | None = None, workflow_key: str | None = None
) -> QuerySet[Run]:
    """A subscriber's runs, newest first, with their decisions and messages prefetched."""
    runs = _with_trace(
        Run.objects.filter(environment=environment, subscriber_id=subscriber_pk).select_related(
            "subscriber", "event", "workflow_version__workflow"
        )
    )
    if status:
        runs = runs.filter(status=status)
    if workflow_key:
        runs = runs.filter(workflow_version__workflow__key=workflow_key)
    return runs


def event_runs_data(*, event: Event, subscriber_id: str | None = None, limit: int) -> list[dict[str, Any]]:
    """The first ``limit`` runs of an event (or one recipient's), as the trace shows them
    (``run_data``). A fixed number of queries whatever the number of runs."""
    runs = _with_trace(Run.objects.filter(event=event).select_related("subscriber")).order_by("id")
    if subscriber_id:
        runs = runs.filter(subscriber__subscriber_id=subscriber_id)
    return [run_data(run) for run in runs[:limit]]


def run_data(run: Run) -> dict[str, Any]:
    """One run as the trace and the subscriber's run list show it (prefetch with ``_with_trace``)."""
    return {
        "subscriber_id": run.subscriber.subscriber_id,
        "status": run.status,
        "step_index": run.step_index,
        "resume_at": run.resume_at,
        "completed_at": run.completed_at,
        "steps": [
            {
                "step": s.step_id,
                "type": s.step_type,
                "decision": s.decision,
                "reason": s.reason,
                "detail": s.detail,
                "at": s.created_at,
            }
            for s in run.step_runs.all()
        ],
        "messages": [
            {
                "id": m.pk,
                "step": m.step_id,
                "channel": m.channel,
                "status": m.status,
                "recipient": m.recipient,
                "subject": m.subject,
                "locale": m.locale,
                "provider": m.provider,
                "provider_message_id": m.provider_message_id,
                "error": m.error,
                "created_at": m.created_at,
                "sent_at": m.sent_at,
                "attempts": [
                    {
                        "provider": a.provider,
                        "status": a.status,
                        "error": a.error,
                        "duration_ms": a.duration_ms,
                        "response": a.response,
                        "at": a.created_at,
                    }
                    for a in m.attempts_log.all()
                ],
            }
            for m in run.messages.all()
        ],
    }


def frequency_cap_list(*, environment: Environment) -> QuerySet[FrequencyCap]:
    return FrequencyCap.objects.filter(environment=environment).select_related("category").order_by("channel", "id")


def frequency_cap_get(*, environment: Environment, cap_id: int) -> FrequencyCap:
    cap = frequency_cap_list(environment=environment).filter(pk=cap_id).first()
    if cap is None:
        raise NotFound(f"No frequency cap {cap_id} in this environment.", code="frequency_cap_not_found")
    return cap


FINISHED_STATUSES = (Run.Status.COMPLETED, Run.Status.CANCELLED, Run.Status.FAILED)


def finished_runs_page(
    *, environment: Environment, start: datetime, end: datetime, before: int | None, limit: int
) -> list[Run]:
    """Runs of the environment that finished in [start, end), newest first, below ``before`` (a run
    pk): the savings report's drill-down. Two queries; the runs of one version share its instance."""
    runs = Run.objects.filter(
        environment=environment, status__in=FINISHED_STATUSES, completed_at__gte=start, completed_at__lt=end
    )
    if before is not None:
        runs = runs.filter(pk__lt=before)
    page = list(
        runs.select_related("event", "subscriber")
        .only(
            "pk",
            "environment_id",
            "status",
            "step_index",
            "step_results",
            "completed_at",
            "workflow_version_id",
            "event",
            "subscriber",
            "event__transaction_id",
            "subscriber__subscriber_id",
        )
        .order_by("-pk")[:limit]
    )
    versions = WorkflowVersion.objects.select_related("workflow").in_bulk({run.workflow_version_id for run in page})
    for run in page:
        run.workflow_version = versions[run.workflow_version_id]
    return page


def workflow_versions(*, workflow: Workflow) -> QuerySet[WorkflowVersion]:
    """A workflow's versions, newest first, with who published each (one query)."""
    return WorkflowVersion.objects.filter(workflow=workflow).select_related("created_by").order_by("-number")


def workflow_version_diff(*, workflow: Workflow, a: int, b: int) -> list[dict[str, Any]]:
    """Two versions side by side: ``[{"field", "before", "after", "changed"}]`` for the steps (as
    indented JSON, one line per value), the category and the payload schema."""
    found = {
        version.number: version for version in WorkflowVersion.objects.filter(workflow=workflow, number__in=[a, b])
    }
    missing = [number for number in (a, b) if number not in found]
    if missing:
        raise NotFound(
            f"Workflow {workflow.key!r} has no version {missing[0]}.",
            code="version_not_found",
            details={"version": missing[0]},
        )

    def fields(version: WorkflowVersion) -> dict[str, str]:
        return {
            "steps": json.dumps(version.steps, indent=2, ensure_ascii=False),
            "category": version.category_key,
            "payload_schema": json.dumps(version.payload_schema, indent=2, ensure_ascii=False)
            if version.payload_schema is not None
            else "",
        }

    before, after = fields(found[a]), fields(found[b])
    return [
        {"field": name, "before": before[name], "after": after[name], "changed": before[name] != after[name]}
        for name in before
        if before[name] or after[name]
    ]
