from __future__ import annotations

from typing import Any

from django.db.models import QuerySet
from drf_spectacular.utils import extend_schema
from rest_framework import generics, serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from apps.tenancy.auth import request_environment
from apps.workflows import selectors, services
from apps.workflows.models import Workflow, WorkflowVersion

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
    steps = serializers.JSONField(required=False, help_text="Ordered list of step objects (docs/workflows.md)")
    payload_schema = serializers.JSONField(required=False, allow_null=True)
    active = serializers.BooleanField(required=False)
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

    @extend_schema(request=WorkflowInputSerializer, responses={200: WorkflowSerializer, 201: WorkflowSerializer})
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
