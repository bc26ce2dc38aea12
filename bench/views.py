"""The ingest baselines: the same request handling as the trigger API, plus one insert and nothing else.

Same middleware, authentication, permission, rate-limit scope, parser, renderer and serializer
validation as ``POST /api/v1/events/trigger`` (resp. ``/events/bulk``); then ONE INSERT of
Event-shaped rows into the events table (resp. one ``bulk_create``), autocommit, for a workflow
looked up once per process. No workflow resolution per request, no payload schema, no
transaction, no duplicate detection, no enqueue: what the trigger costs above this is Clarion's
own work. The rows are written already ``processed`` so that no worker ever picks them up.
"""

from __future__ import annotations

import uuid
from typing import Any

from drf_spectacular.utils import extend_schema
from rest_framework import status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from apps.events.api import BulkTriggerSerializer, validate_trigger
from apps.events.models import Event
from apps.events.services import BulkItemResult, TriggerRequest
from apps.tenancy.auth import HasEnvironment, SecretKeyAuthentication, request_environment
from apps.tenancy.models import Environment
from apps.workflows.models import Workflow

BENCH_WORKFLOW = "bench"

_workflows: dict[int, tuple[int, int]] = {}  # environment pk -> (workflow pk, published version pk)


def _workflow_of(environment: Environment) -> tuple[int, int]:
    """The bench workflow's ids, looked up on the first request of each process only."""
    ids = _workflows.get(environment.pk)
    if ids is None:
        workflow = Workflow.objects.get(environment=environment, key=BENCH_WORKFLOW)
        assert workflow.published_version_id is not None
        ids = _workflows[environment.pk] = (workflow.pk, workflow.published_version_id)
    return ids


def _row(environment: Environment, request: TriggerRequest) -> Event:
    workflow_id, version_id = _workflow_of(environment)
    return Event(
        environment=environment,
        transaction_id=request.transaction_id or uuid.uuid4().hex,
        workflow_id=workflow_id,
        workflow_version_id=version_id,
        payload=request.payload,
        actor=request.actor
        if isinstance(request.actor, dict) or request.actor is None
        else {"subscriber_id": request.actor},
        recipients=[r if isinstance(r, dict) else {"subscriber_id": r} for r in request.to],
        cancellation_key=request.cancellation_key,
        status=Event.Status.PROCESSED,
    )


class _Baseline(APIView):
    authentication_classes = [SecretKeyAuthentication]
    permission_classes = [HasEnvironment]
    throttle_scope = "trigger"  # counted like the trigger endpoints: one cache round trip


class BaselineView(_Baseline):
    """``TriggerSerializer`` validation (``validate_trigger``, as the trigger view), then one INSERT of an
    Event row; answers like the trigger."""

    @extend_schema(exclude=True)
    def post(self, request: Request) -> Response:
        event = _row(request_environment(request), validate_trigger(request.data))
        event.save(force_insert=True)
        return Response({"transaction_id": event.transaction_id, "status": "accepted"}, status=status.HTTP_202_ACCEPTED)


class BulkBaselineView(_Baseline):
    """``BulkTriggerSerializer`` validation, then one ``bulk_create`` of the valid items' Event rows."""

    json_items_key = "events"  # as BulkTriggerView: the serializer checks each item

    @extend_schema(exclude=True)
    def post(self, request: Request) -> Response:
        serializer = BulkTriggerSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        environment = request_environment(request)
        items: list[Any] = serializer.validated_data["events"]
        rows = [_row(environment, item) for item in items if isinstance(item, TriggerRequest)]
        Event.objects.bulk_create(rows)
        written = iter(rows)
        data = [
            {"transaction_id": r.transaction_id, "status": r.status, "error": r.error}
            if isinstance(r, BulkItemResult)
            else {"transaction_id": next(written).transaction_id, "status": "accepted", "error": None}
            for r in items
        ]
        return Response({"data": data}, status=status.HTTP_202_ACCEPTED)
