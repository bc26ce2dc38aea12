from __future__ import annotations

from typing import Any

from django.db import IntegrityError, transaction
from django.db.models import Max

from apps.core.durations import parse_duration
from apps.core.errors import ApiError, Conflict, NotFound, Unprocessable
from apps.preferences.models import Category
from apps.templates.models import Template
from apps.tenancy.models import Environment
from apps.workflows.definitions import CHANNEL_STEP_TYPES, DefinitionError, template_keys, validate_steps
from apps.workflows.models import FrequencyCap, Run, Workflow, WorkflowTemplateReference, WorkflowVersion
from apps.workflows.payloads import schema_problem

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
    use_latest_templates: bool | None = None,
    publish: bool = False,
    note: str = "",
    created_by: Any = None,
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
        problem = schema_problem(payload_schema)
        if problem:
            raise ApiError(
                "The payload schema is invalid.", code="invalid_workflow", details={"payload_schema": problem}
            )
        workflow.payload_schema = payload_schema
    if active is not None:
        workflow.active = active
    if use_latest_templates is not None:
        workflow.use_latest_templates = use_latest_templates
    workflow.save()
    if publish:
        workflow_publish(workflow=workflow, note=note, created_by=created_by)
    return workflow, created


def _check_templates(environment: Environment, steps: list[dict[str, Any]]) -> list[int]:
    """The pks of the templates the steps use; ``Unprocessable`` when one is missing or for another channel."""
    needed = template_keys(steps)
    if not needed:
        return []
    found = {
        key: (pk, channel)
        for pk, key, channel in Template.objects.filter(environment=environment, key__in=list(needed)).values_list(
            "pk", "key", "channel"
        )
    }
    errors: dict[str, str] = {}
    for key, channel in needed.items():
        if key not in found:
            errors[key] = f"no template '{key}' in this environment"
        elif found[key][1] != channel:
            errors[key] = f"template '{key}' is for channel '{found[key][1]}', the step sends '{channel}'"
    if errors:
        raise Unprocessable("Some steps use templates that do not fit.", code="invalid_templates", details=errors)
    return [pk for pk, _ in found.values()]


def _template_references_set(workflow: Workflow, template_pks: list[int]) -> None:
    """The workflow's reference rows become exactly ``template_pks`` (its published version's templates)."""
    current = set(WorkflowTemplateReference.objects.filter(workflow=workflow).values_list("template_id", flat=True))
    wanted = set(template_pks)
    if current - wanted:
        WorkflowTemplateReference.objects.filter(workflow=workflow, template_id__in=current - wanted).delete()
    WorkflowTemplateReference.objects.bulk_create(
        [WorkflowTemplateReference(workflow=workflow, template_id=pk) for pk in sorted(wanted - current)]
    )


@transaction.atomic
def workflow_publish(*, workflow: Workflow, note: str = "", created_by: Any = None) -> WorkflowVersion:
    """Freeze the draft into a new immutable version and make it the one new events use.

    ``note`` says why (shown in the version history); ``created_by`` is the admin user (None: the API)."""
    steps = workflow.draft_steps
    if not steps:
        raise Unprocessable("A workflow needs at least one step to be published.", code="empty_workflow")
    return _version_publish(
        workflow=workflow,
        steps=steps,
        category_key=workflow.category.key if workflow.category else "",
        payload_schema=workflow.payload_schema,
        note=note,
        created_by=created_by,
    )


@transaction.atomic
def workflow_rollback(*, workflow: Workflow, version_number: int, created_by: Any = None) -> WorkflowVersion:
    """Publish a NEW version equal to version ``version_number`` (history only ever grows); the
    draft becomes its steps, so the next edit starts from what is published."""
    source = WorkflowVersion.objects.filter(workflow=workflow, number=version_number).first()
    if source is None:
        raise NotFound(
            f"Workflow {workflow.key!r} has no version {version_number}.",
            code="version_not_found",
            details={"version": version_number},
        )
    workflow.draft_steps = source.steps
    workflow.save(update_fields=["draft_steps", "updated_at"])
    return _version_publish(
        workflow=workflow,
        steps=source.steps,
        category_key=source.category_key,
        payload_schema=source.payload_schema,
        note=f"Rollback to version {source.number}",
        created_by=created_by,
    )


def _version_publish(
    *,
    workflow: Workflow,
    steps: list[dict[str, Any]],
    category_key: str,
    payload_schema: dict[str, Any] | None,
    note: str,
    created_by: Any,
) -> WorkflowVersion:
    try:
        validate_steps(steps)
    except DefinitionError as exc:
        raise ApiError("The workflow definition is invalid.", code="invalid_workflow", details=exc.errors) from exc
    template_pks = _check_templates(workflow.environment, steps)
    latest = WorkflowVersion.objects.filter(workflow=workflow).aggregate(n=Max("number"))["n"] or 0
    try:
        with transaction.atomic():
            version = WorkflowVersion.objects.create(
                workflow=workflow,
                number=latest + 1,
                steps=steps,
                category_key=category_key,
                payload_schema=payload_schema,
                note=note[:500],
                created_by=created_by,
            )
    except IntegrityError as exc:
        raise Conflict("Another publish of this workflow happened at the same time; try again.") from exc
    workflow.published_version = version
    workflow.save(update_fields=["published_version", "updated_at"])
    _template_references_set(workflow, template_pks)
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


@transaction.atomic
def frequency_cap_upsert(
    *,
    environment: Environment,
    channel: str,
    limit: int,
    window: str,
    category_key: str | None = None,
    active: bool = True,
) -> tuple[FrequencyCap, bool]:
    """One cap per (channel, category); setting it again changes the limit and window."""
    if channel not in CHANNEL_STEP_TYPES.values():
        raise Unprocessable(
            f"Unknown channel {channel!r}.", code="invalid_channel", details={"channel": sorted(CHANNEL_STEP_TYPES)}
        )
    try:
        if parse_duration(window).total_seconds() <= 0:
            raise ValueError("the window must be longer than zero")
    except ValueError as exc:
        raise Unprocessable(str(exc), code="invalid_window", details={"window": str(exc)}) from exc
    category = _category_for(environment, category_key) if category_key else None
    cap, created = FrequencyCap.objects.select_for_update().get_or_create(
        environment=environment,
        channel=channel,
        category=category,
        defaults={"limit": limit, "window": window, "active": active},
    )
    if not created:
        cap.limit, cap.window, cap.active = limit, window, active
        cap.save(update_fields=["limit", "window", "active"])
    return cap, created


def frequency_cap_delete(*, cap: FrequencyCap) -> None:
    cap.delete()


def digests_flush(
    *,
    environment: Environment,
    workflow_key: str | None = None,
    subscriber_id: str | None = None,
    key: str | None = None,
    category_key: str | None = None,
) -> int:
    """Send matching open digests now. Returns how many.

    Workflow digests (by ``workflow``, ``key``) close and their leaders carry them on at once;
    category digests (messages held by a frequency cap or a daily/weekly choice, by
    ``category``) are sent directly. Without ``workflow`` or ``category``, both kinds match.
    """
    from apps.core.tasks import enqueue_on_commit
    from apps.subscribers.models import Subscriber
    from apps.workflows.digests import ACTIVE, category_scope
    from apps.workflows.digests import digests_flush as flush_buckets
    from apps.workflows.engine import ADVANCE_TASK, category_digests_send
    from apps.workflows.models import DigestBucket

    workflow_id = None
    if workflow_key:
        workflow = Workflow.objects.filter(environment=environment, key=workflow_key).first()
        if workflow is None:
            raise NotFound(f"No workflow with key '{workflow_key}' in this environment.", code="workflow_not_found")
        workflow_id = workflow.pk
    if category_key:
        _category_for(environment, category_key)
    subscriber_pk = None
    if subscriber_id:
        subscriber_pk = (
            Subscriber.objects.filter(environment=environment, subscriber_id=subscriber_id)
            .values_list("pk", flat=True)
            .first()
        )
        if subscriber_pk is None:
            raise NotFound(f"No subscriber '{subscriber_id}' in this environment.", code="subscriber_not_found")
    flushed = 0
    if not category_key:
        with transaction.atomic():
            leaders = flush_buckets(
                environment_id=environment.pk, workflow_id=workflow_id, subscriber_pk=subscriber_pk, key=key
            )
            if leaders:
                enqueue_on_commit(ADVANCE_TASK, leaders)
        flushed += len(leaders)
    if not workflow_key:
        buckets = DigestBucket.objects.filter(environment=environment, workflow__isnull=True, status__in=ACTIVE)
        if subscriber_pk is not None:
            buckets = buckets.filter(subscriber_id=subscriber_pk)
        if category_key:
            buckets = buckets.filter(scope__startswith=category_scope(category_key=category_key, channel=""))
        flushed += category_digests_send(bucket_pks=list(buckets.values_list("pk", flat=True)))
    return flushed
