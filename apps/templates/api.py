"""Templates API: ``/api/v1/templates/{key}`` (+ ``/versions``, ``/publish``, ``/preview``)."""

from __future__ import annotations

import json
from typing import Any

from django.conf import settings
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_field, inline_serializer
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from apps.core.pagination import IdCursorPagination
from apps.preferences.models import CHANNELS
from apps.templates import selectors, services
from apps.templates.models import Template, TemplateVersion
from apps.tenancy.auth import request_environment

# --- serializers --------------------------------------------------------------------------------

_FIELDS_SCHEMA = {
    "type": "object",
    "properties": {name: {"type": "string"} for name in ("subject", "title", "body")},
}
CONTENT_SCHEMA = {
    "type": "object",
    "description": "Translated content by language code, e.g. "
    '{"en": {"subject": "...", "title": "...", "body": "..."}, "fr": {...}}',
    "additionalProperties": _FIELDS_SCHEMA,
}


@extend_schema_field(CONTENT_SCHEMA)
class ContentField(serializers.DictField):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(
            child=serializers.DictField(child=serializers.CharField(allow_blank=True, trim_whitespace=False)),
            **kwargs,
        )


class TemplateVersionSerializer(serializers.Serializer):
    number = serializers.IntegerField()
    content = serializers.SerializerMethodField()
    action_url = serializers.CharField()
    note = serializers.CharField()
    is_published = serializers.SerializerMethodField()
    created_by = serializers.SerializerMethodField()
    created_at = serializers.DateTimeField()

    @extend_schema_field(CONTENT_SCHEMA)
    def get_content(self, version: TemplateVersion) -> dict[str, dict[str, str]]:
        return services.version_content(version)

    def get_is_published(self, version: TemplateVersion) -> bool:
        return version.template.published_version_id == version.pk

    @extend_schema_field(OpenApiTypes.STR)
    def get_created_by(self, version: TemplateVersion) -> str | None:
        return version.created_by.get_username() if version.created_by_id else None


class TemplateSerializer(serializers.Serializer):
    key = serializers.CharField()
    name = serializers.CharField()
    channel = serializers.ChoiceField(choices=CHANNELS)
    description = serializers.CharField()
    published_version = serializers.SerializerMethodField(help_text="Number of the published version")
    latest_version = serializers.SerializerMethodField(help_text="Number of the newest version")
    created_at = serializers.DateTimeField()
    updated_at = serializers.DateTimeField()

    @extend_schema_field(OpenApiTypes.INT)
    def get_published_version(self, template: Template) -> int | None:
        return template.published_version.number if template.published_version_id else None

    @extend_schema_field(OpenApiTypes.INT)
    def get_latest_version(self, template: Template) -> int | None:
        return getattr(template, "latest_number", None)


class TemplateDetailSerializer(TemplateSerializer):
    published = serializers.SerializerMethodField(help_text="The published version's content, or null")

    @extend_schema_field(TemplateVersionSerializer(allow_null=True))
    def get_published(self, template: Template) -> dict[str, Any] | None:
        if not template.published_version_id:
            return None
        return TemplateVersionSerializer(template.published_version).data


class TemplateSaveResponseSerializer(TemplateDetailSerializer):
    version = TemplateVersionSerializer(
        allow_null=True, help_text="The version written by this call (or the identical latest one)"
    )


class TemplatePutSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=200, required=False, help_text="Defaults to the key on creation")
    channel = serializers.ChoiceField(choices=CHANNELS, required=False, help_text="Required on creation")
    description = serializers.CharField(required=False, allow_blank=True)
    content = ContentField(required=False, help_text="When given, a new version is created (unless identical)")
    action_url = serializers.CharField(required=False, allow_blank=True, max_length=2000, trim_whitespace=False)
    note = serializers.CharField(required=False, allow_blank=True, max_length=500)
    publish = serializers.BooleanField(default=False)


class TemplatePublishSerializer(serializers.Serializer):
    version = serializers.IntegerField(required=False, allow_null=True, min_value=1, help_text="Default: latest")


class PreviewSerializer(serializers.Serializer):
    payload = serializers.DictField(required=False, default=dict)
    subscriber = serializers.DictField(required=False, help_text="Subscriber data, as a stored subscriber renders")
    subscriber_id = serializers.CharField(required=False, max_length=200, help_text="Render as this subscriber")
    actor = serializers.JSONField(required=False, allow_null=True)
    locale = serializers.CharField(required=False, allow_blank=True, max_length=20)
    version = serializers.IntegerField(required=False, allow_null=True, min_value=1, help_text="Default: latest")
    strict = serializers.BooleanField(default=False, help_text="Fail on undefined variables")

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if "subscriber" in attrs and "subscriber_id" in attrs:
            raise serializers.ValidationError({"subscriber": "Give either subscriber or subscriber_id, not both."})
        limit = settings.CLARION["MAX_PAYLOAD_BYTES"]
        if len(json.dumps(attrs.get("payload") or {}, default=str)) > limit:
            raise serializers.ValidationError({"payload": f"Larger than {limit} bytes."})
        return attrs


class PreviewResponseSerializer(serializers.Serializer):
    version = serializers.IntegerField()
    locale = serializers.CharField(help_text="The language rendered")
    subject = serializers.CharField()
    title = serializers.CharField()
    body = serializers.CharField()
    action_url = serializers.CharField()
    fallbacks = serializers.DictField(
        child=serializers.CharField(), help_text="field -> language used when the requested one was empty"
    )


_ERROR = inline_serializer(
    "TemplateError",
    {
        "error": inline_serializer(
            "TemplateErrorBody",
            {
                "code": serializers.CharField(),
                "message": serializers.CharField(),
                "details": serializers.DictField(),
            },
        )
    },
)


def _validate_key(key: str) -> str:
    try:
        return serializers.SlugField(max_length=100).run_validation(key)
    except serializers.ValidationError as exc:
        raise serializers.ValidationError({"key": exc.detail}) from exc


def _str_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


# --- views --------------------------------------------------------------------------------------


class VersionPagination(IdCursorPagination):
    ordering = "-number"


class TemplateListView(APIView):
    pagination_class = IdCursorPagination

    @extend_schema(
        operation_id="templates_list",
        parameters=[OpenApiParameter("channel", str, enum=CHANNELS, required=False)],
        responses={200: TemplateSerializer(many=True), 400: _ERROR},
        tags=["templates"],
    )
    def get(self, request: Request) -> Response:
        channel = request.query_params.get("channel") or None
        if channel is not None and channel not in CHANNELS:
            raise serializers.ValidationError({"channel": [f"Use one of: {', '.join(CHANNELS)}."]})
        queryset = selectors.template_list(environment=request_environment(request), channel=channel)
        paginator = self.pagination_class()
        page = paginator.paginate_queryset(queryset, request, view=self)
        return paginator.get_paginated_response(TemplateSerializer(page, many=True).data)


class TemplateDetailView(APIView):
    @extend_schema(
        operation_id="templates_retrieve", responses={200: TemplateDetailSerializer, 404: _ERROR}, tags=["templates"]
    )
    def get(self, request: Request, key: str) -> Response:
        template = selectors.template_get(environment=request_environment(request), key=key)
        return Response(TemplateDetailSerializer(template).data)

    @extend_schema(
        operation_id="templates_upsert",
        request=TemplatePutSerializer,
        responses={
            200: TemplateSaveResponseSerializer,
            201: TemplateSaveResponseSerializer,
            400: _ERROR,
            409: _ERROR,
            422: _ERROR,
        },
        tags=["templates"],
    )
    def put(self, request: Request, key: str) -> Response:
        key = _validate_key(key)
        serializer = TemplatePutSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        environment = request_environment(request)
        saved = services.template_save(
            environment=environment,
            key=key,
            name=data.get("name"),
            channel=data.get("channel"),
            description=data.get("description"),
            content=data.get("content"),
            action_url=data.get("action_url", ""),
            note=data.get("note", ""),
            publish=data["publish"],
        )
        template = selectors.template_get(environment=environment, key=key)
        body = dict(TemplateDetailSerializer(template).data)
        body["version"] = (
            TemplateVersionSerializer(
                selectors.template_version_get(template=template, number=saved.version.number)
            ).data
            if saved.version
            else None
        )
        return Response(body, status=status.HTTP_201_CREATED if saved.created else status.HTTP_200_OK)

    @extend_schema(
        operation_id="templates_destroy", responses={204: None, 404: _ERROR, 409: _ERROR}, tags=["templates"]
    )
    def delete(self, request: Request, key: str) -> Response:
        template = selectors.template_get(environment=request_environment(request), key=key)
        services.template_delete(template=template)
        return Response(status=status.HTTP_204_NO_CONTENT)


class TemplateVersionListView(APIView):
    pagination_class = VersionPagination

    @extend_schema(
        operation_id="templates_versions_list",
        responses={200: TemplateVersionSerializer(many=True), 404: _ERROR},
        tags=["templates"],
    )
    def get(self, request: Request, key: str) -> Response:
        template = selectors.template_get(environment=request_environment(request), key=key)
        paginator = self.pagination_class()
        page = paginator.paginate_queryset(selectors.template_versions(template=template), request, view=self)
        return paginator.get_paginated_response(TemplateVersionSerializer(page, many=True).data)


class TemplateVersionDetailView(APIView):
    @extend_schema(
        operation_id="templates_versions_retrieve",
        responses={200: TemplateVersionSerializer, 404: _ERROR},
        tags=["templates"],
    )
    def get(self, request: Request, key: str, number: int) -> Response:
        template = selectors.template_get(environment=request_environment(request), key=key)
        version = selectors.template_version_get(template=template, number=number)
        return Response(TemplateVersionSerializer(version).data)


class TemplatePublishView(APIView):
    @extend_schema(
        operation_id="templates_publish",
        request=TemplatePublishSerializer,
        responses={200: TemplateDetailSerializer, 404: _ERROR, 422: _ERROR},
        tags=["templates"],
    )
    def post(self, request: Request, key: str) -> Response:
        serializer = TemplatePublishSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        environment = request_environment(request)
        template = selectors.template_get(environment=environment, key=key)
        services.template_publish(template=template, version_number=serializer.validated_data.get("version"))
        return Response(TemplateDetailSerializer(selectors.template_get(environment=environment, key=key)).data)


class TemplatePreviewView(APIView):
    @extend_schema(
        operation_id="templates_preview",
        request=PreviewSerializer,
        responses={200: PreviewResponseSerializer, 400: _ERROR, 404: _ERROR, 422: _ERROR},
        tags=["templates"],
        description="Render a version (default: the latest, published or not) with sample data. "
        "Rendering errors answer 422 with code template_render.",
    )
    def post(self, request: Request, key: str) -> Response:
        serializer = PreviewSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        environment = request_environment(request)
        template = selectors.template_get(environment=environment, key=key)
        version = selectors.template_version_get(template=template, number=data.get("version"))
        if "subscriber_id" in data:
            subscriber = selectors.preview_subscriber_context(
                environment=environment, subscriber_id=data["subscriber_id"]
            )
        else:
            subscriber = data.get("subscriber") or {}
        rendered = selectors.template_preview(
            version=version,
            payload=data["payload"],
            subscriber=subscriber,
            actor=data.get("actor"),
            locale=data.get("locale") or _str_or_none(subscriber.get("locale")),
            strict=data["strict"],
        )
        return Response(
            {
                "version": version.number,
                "locale": rendered.locale,
                "subject": rendered.subject,
                "title": rendered.title,
                "body": rendered.body,
                "action_url": rendered.action_url,
                "fallbacks": rendered.fallbacks,
            }
        )
