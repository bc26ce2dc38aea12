from __future__ import annotations

from typing import Any

from django.db import IntegrityError, transaction
from django.db.models import Max

from apps.core.errors import ApiError, Conflict, Unprocessable
from apps.preferences.models import Category
from apps.templates.models import Template
from apps.tenancy.models import Environment
from apps.workflows.definitions import DefinitionError, template_keys, validate_steps
from apps.workflows.models import Run, Workflow, WorkflowVersion

_UNSET: Any = object()


def _category_for(environment: Environment, category_key: str | None) -> Category | None:
    if not category_key:
        return None
    category = Category.objects.filter(environment=environment, key=category_key).first()
    if category is None:
        raise Unprocessable(
            f"No category with key '{category_key}'. Create it with PUT /api/v1/categories/{category_key}.",
            code="unknown_category",
            details={"category": category_key},
        )
    return category


@transaction.atomic
def workflow_upsert(
    *,
    environment: Environment,
    key: str,
    name: str | None = None,
    description: str | None = None,
    category_key: str | None = _UNSET,
    steps: list[dict[str, Any]] | None = None,
    payload_schema: dict[str, Any] | None = _UNSET,
    active: bool | None = None,
    publish: bool = False,
) -> tuple[Workflow, bool]:
    if steps is not None:
        try:
            validate_steps(steps)
        except DefinitionError as exc:
            raise ApiError("The workflow definition is invalid.", code="invalid_workflow", details=exc.errors) from exc
    workflow = Workflow.objects.select_for_update().filter(environment=environment, key=key).first()
    created = workflow is None
    if workflow is None:
        workflow = Workflow(environment=environment, key=key, name=name or key)
    if name is not None:
        workflow.name = name
    if description is not None:
        workflow.description = description
    if category_key is not _UNSET:
        workflow.category = _category_for(environment, category_key)
    if steps is not None:
        workflow.draft_steps = steps
    if payload_schema is not _UNSET:
        workflow.payload_schema = payload_schema
    if active is not None:
        workflow.active = active
    workflow.save()
    if publish:
        workflow_publish(workflow=workflow)
    return workflow, created


def _check_templates(environment: Environment, steps: list[dict[str, Any]]) -> None:
    needed = template_keys(steps)
    if not needed:
        return
    found = dict(Template.objects.filter(environment=environment, key__in=needed).values_list("key", "channel"))
    errors: dict[str, str] = {}
    for key, channel in needed.items():
        if key not in found:
            errors[key] = f"no template '{key}' in this environment"
        elif found[key] != channel:
            errors[key] = f"template '{key}' is for channel '{found[key]}', the step sends '{channel}'"
    if errors:
        raise Unprocessable("Some steps use templates that do not fit.", code="invalid_templates", details=errors)


@transaction.atomic
def workflow_publish(*, workflow: Workflow) -> WorkflowVersion:
    """Freeze the draft into a new immutable version and make it the one new events use."""
    steps = workflow.draft_steps
    if not steps:
        raise Unprocessable("A workflow needs at least one step to be published.", code="empty_workflow")
    try:
        validate_steps(steps)
    except DefinitionError as exc:
        raise ApiError("The workflow definition is invalid.", code="invalid_workflow", details=exc.errors) from exc
    _check_templates(workflow.environment, steps)
    latest = WorkflowVersion.objects.filter(workflow=workflow).aggregate(n=Max("number"))["n"] or 0
    try:
        with transaction.atomic():
            version = WorkflowVersion.objects.create(
                workflow=workflow,
                number=latest + 1,
                steps=steps,
                category_key=workflow.category.key if workflow.category else "",
                payload_schema=workflow.payload_schema,
            )
    except IntegrityError as exc:
        raise Conflict("Another publish of this workflow happened at the same time; try again.") from exc
    workflow.published_version = version
    workflow.save(update_fields=["published_version", "updated_at"])
    return version


@transaction.atomic
def workflow_delete(*, workflow: Workflow) -> None:
    if Run.objects.filter(workflow_version__workflow=workflow, status__in=Run.ACTIVE_STATUSES).exists():
        raise Conflict(
            "This workflow has runs in progress; cancel them or wait before deleting it.", code="workflow_in_use"
        )
    # Events keep their history: deactivate instead of deleting when events reference it.
    if workflow.events.exists():
        workflow.active = False
        workflow.save(update_fields=["active", "updated_at"])
        return
    workflow.published_version = None
    workflow.save(update_fields=["published_version"])
    workflow.delete()
