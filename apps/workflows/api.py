from __future__ import annotations

from typing import Any

from django.db.models import QuerySet
from drf_spectacular.utils import OpenApiParameter, extend_schema, inline_serializer
from rest_framework import generics, serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from apps.core.channels import CHANNEL_CHOICES
from apps.core.durations import DURATION_PATTERN
from apps.core.pagination import IdCursorPagination
from apps.core.schema import key_path_parameter, paginated_schema, pagination_parameters, with_schema
from apps.preferences.api import WorkflowPreferenceSerializer
from apps.preferences.selectors import workflow_channel_defaults
from apps.preferences.services import workflow_preference_set
from apps.subscribers.selectors import subscriber_get
from apps.tenancy.auth import request_environment
from apps.workflows import selectors, services
from apps.workflows.models import FrequencyCap, Run, Workflow, WorkflowVersion

KEY_FIELD = serializers.SlugField(max_length=100)


class WorkflowVersionSerializer(serializers.ModelSerializer):
    class Meta:
        model = WorkflowVersion
        fields = ["number", "steps", "category_key", "payload_schema", "created_at"]


class WorkflowSerializer(serializers.ModelSerializer):
    category = serializers.SerializerMethodField()
    steps = serializers.JSONField(source="draft_steps")
    published_version = WorkflowVersionSerializer(allow_null=True)

    class Meta:
        model = Workflow
        fields = [
            "key",
            "name",
            "description",
            "category",
            "active",
            "use_latest_templates",
            "steps",
            "payload_schema",
            "published_version",
            "created_at",
            "updated_at",
        ]

    def get_category(self, obj: Workflow) -> str | None:
        return obj.category.key if obj.category else None


class WorkflowInputSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=200, required=False)
    description = serializers.CharField(allow_blank=True, required=False)
    category = serializers.SlugField(max_length=100, allow_null=True, required=False)
    steps = with_schema(
        serializers.JSONField, {"type": "array", "items": {"type": "object", "additionalProperties": {}}}
    )(required=False, help_text="Ordered list of step objects (docs/workflows.md)")
    payload_schema = serializers.JSONField(required=False, allow_null=True)
    active = serializers.BooleanField(required=False)
    use_latest_templates = serializers.BooleanField(
        required=False,
        help_text="Off (default): a run renders the template versions published when its event started, "
        "even after a delay. On: each message renders the version published when it is sent.",
    )
    publish = serializers.BooleanField(default=False, help_text="Publish a new version right away")


class WorkflowListView(generics.ListAPIView):
    serializer_class = WorkflowSerializer

    def get_queryset(self) -> QuerySet[Workflow]:
        return selectors.workflow_list(environment=request_environment(self.request))


class WorkflowDetailView(APIView):
    @extend_schema(responses=WorkflowSerializer)
    def get(self, request: Request, key: str) -> Response:
        workflow = selectors.workflow_get(environment=request_environment(request), key=key)
        return Response(WorkflowSerializer(workflow).data)

    @extend_schema(
        parameters=[key_path_parameter()],
        request=WorkflowInputSerializer,
        responses={200: WorkflowSerializer, 201: WorkflowSerializer},
    )
    def put(self, request: Request, key: str) -> Response:
        KEY_FIELD.run_validation(key)
        serializer = WorkflowInputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data: dict[str, Any] = dict(serializer.validated_data)
        kwargs: dict[str, Any] = {
            "name": data.get("name"),
            "description": data.get("description"),
            "steps": data.get("steps"),
            "active": data.get("active"),
            "use_latest_templates": data.get("use_latest_templates"),
            "publish": data["publish"],
        }
        if "category" in data:
            kwargs["category_key"] = data["category"]
        if "payload_schema" in data:
            kwargs["payload_schema"] = data["payload_schema"]
        workflow, created = services.workflow_upsert(environment=request_environment(request), key=key, **kwargs)
        workflow = selectors.workflow_get(environment=workflow.environment, key=key)
        return Response(WorkflowSerializer(workflow).data, status=status.HTTP_201_CREATED if created else 200)

    @extend_schema(responses={204: None})
    def delete(self, request: Request, key: str) -> Response:
        workflow = selectors.workflow_get(environment=request_environment(request), key=key)
        services.workflow_delete(workflow=workflow)
        return Response(status=status.HTTP_204_NO_CONTENT)


class WorkflowPublishView(APIView):
    @extend_schema(request=None, responses=WorkflowSerializer)
    def post(self, request: Request, key: str) -> Response:
        environment = request_environment(request)
        workflow = selectors.workflow_get(environment=environment, key=key)
        services.workflow_publish(workflow=workflow)
        return Response(WorkflowSerializer(selectors.workflow_get(environment=environment, key=key)).data)


class WorkflowVersionListView(generics.ListAPIView):
    serializer_class = WorkflowVersionSerializer

    def get_queryset(self) -> QuerySet[WorkflowVersion]:
        workflow = selectors.workflow_get(environment=request_environment(self.request), key=self.kwargs["key"])
        return WorkflowVersion.objects.filter(workflow=workflow)


# A workflow's own channel defaults, kept by the preferences app (which resolves them).
class WorkflowPreferenceView(APIView):
    @extend_schema(operation_id="workflows_preferences_retrieve", responses={200: WorkflowPreferenceSerializer})
    def get(self, request: Request, key: str) -> Response:
        environment = request_environment(request)
        workflow = selectors.workflow_get(environment=environment, key=key)
        return Response({"default_channels": workflow_channel_defaults(environment=environment, workflow=workflow)})

    @extend_schema(
        operation_id="workflows_preferences_update",
        summary="Set a workflow's own channel defaults",
        request=WorkflowPreferenceSerializer,
        responses={200: WorkflowPreferenceSerializer},
    )
    def put(self, request: Request, key: str) -> Response:
        workflow = selectors.workflow_get(environment=request_environment(request), key=key)
        serializer = WorkflowPreferenceSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        preference = workflow_preference_set(
            workflow=workflow, default_channels=serializer.validated_data["default_channels"]
        )
        return Response({"default_channels": preference.default_channels})


# --------------------------------------------------------------------------------------------
# "Why" per subscriber, digests, frequency caps
# --------------------------------------------------------------------------------------------


class SubscriberRunsView(generics.GenericAPIView):
    pagination_class = IdCursorPagination

    @extend_schema(
        responses={200: paginated_schema({"type": "object", "additionalProperties": True})},
        parameters=[
            OpenApiParameter("status", str, enum=[s.value for s in Run.Status]),
            OpenApiParameter("workflow", str, description="Only runs of this workflow key"),
            *pagination_parameters(),
        ],
        summary="A subscriber's runs, newest first, with every step decision and message",
    )
    def get(self, request: Request, subscriber_id: str) -> Response:
        environment = request_environment(request)
        subscriber = subscriber_get(environment=environment, subscriber_id=subscriber_id)
        status_filter = request.query_params.get("status")
        if status_filter and status_filter not in Run.Status.values:
            raise serializers.ValidationError({"status": [f"Use one of: {', '.join(Run.Status.values)}."]})
        runs = selectors.subscriber_runs(
            environment=environment,
            subscriber_pk=subscriber.pk,
            status=status_filter,
            workflow_key=request.query_params.get("workflow"),
        )
        page = self.paginate_queryset(runs)
        assert page is not None  # the view has a pagination class
        return self.get_paginated_response([run_summary(run) for run in page])


def run_summary(run: Run) -> dict[str, Any]:
    return {
        "id": run.pk,
        "workflow": run.workflow_version.workflow.key,
        "workflow_version": run.workflow_version.number,
        "transaction_id": run.event.transaction_id,
        "created_at": run.created_at,
        **selectors.run_data(run),
    }


class DigestFlushSerializer(serializers.Serializer):
    workflow = serializers.SlugField(max_length=100, required=False, help_text="Only this workflow's digests")
    category = serializers.SlugField(
        max_length=100, required=False, help_text="Only this category's digests (messages held back by caps)"
    )
    subscriber_id = serializers.CharField(max_length=200, required=False)
    key = serializers.CharField(max_length=255, required=False, allow_blank=True)

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if attrs.get("workflow") and attrs.get("category"):
            raise serializers.ValidationError("Give a workflow or a category, not both.")
        return attrs


class DigestFlushView(APIView):
    @extend_schema(
        request=DigestFlushSerializer,
        responses={200: dict},
        summary="Send matching open digests now (by workflow, category, subscriber and/or digest key)",
    )
    def post(self, request: Request) -> Response:
        serializer = DigestFlushSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        flushed = services.digests_flush(
            environment=request_environment(request),
            workflow_key=data.get("workflow"),
            subscriber_id=data.get("subscriber_id"),
            key=data.get("key"),
            category_key=data.get("category"),
        )
        return Response({"flushed": flushed})


class FrequencyCapSerializer(serializers.ModelSerializer):
    category = serializers.SerializerMethodField()

    class Meta:
        model = FrequencyCap
        fields = ["id", "channel", "category", "limit", "window", "active", "created_at"]

    def get_category(self, cap: FrequencyCap) -> str | None:
        return cap.category.key if cap.category is not None else None


class FrequencyCapInputSerializer(serializers.Serializer):
    channel = serializers.ChoiceField(choices=CHANNEL_CHOICES)
    category = serializers.SlugField(max_length=100, required=False, allow_null=True)
    limit = serializers.IntegerField(min_value=1, max_value=1_000_000)
    window = with_schema(serializers.CharField, {"type": "string", "maxLength": 20, "pattern": DURATION_PATTERN})(
        max_length=20, help_text="A duration: 1h, 1d, PT12H…"
    )
    active = serializers.BooleanField(required=False, default=True)


class FrequencyCapListView(APIView):
    @extend_schema(
        responses={200: inline_serializer("FrequencyCapList", {"data": FrequencyCapSerializer(many=True)})},
        summary="List frequency caps",
    )
    def get(self, request: Request) -> Response:
        caps = selectors.frequency_cap_list(environment=request_environment(request))
        return Response({"data": FrequencyCapSerializer(caps, many=True).data})

    @extend_schema(
        request=FrequencyCapInputSerializer,
        responses={200: FrequencyCapSerializer, 201: FrequencyCapSerializer},
        summary="Create or change the cap for a channel (and optionally a category)",
    )
    def post(self, request: Request) -> Response:
        serializer = FrequencyCapInputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        cap, created = services.frequency_cap_upsert(
            environment=request_environment(request),
            channel=data["channel"],
            category_key=data.get("category"),
            limit=data["limit"],
            window=data["window"],
            active=data["active"],
        )
        return Response(
            FrequencyCapSerializer(cap).data, status=status.HTTP_201_CREATED if created else status.HTTP_200_OK
        )


class FrequencyCapDetailView(APIView):
    @extend_schema(responses={204: None}, summary="Remove a frequency cap")
    def delete(self, request: Request, cap_id: int) -> Response:
        cap = selectors.frequency_cap_get(environment=request_environment(request), cap_id=cap_id)
        services.frequency_cap_delete(cap=cap)
        return Response(status=status.HTTP_204_NO_CONTENT)
