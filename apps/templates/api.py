"""Templates API: ``/api/v1/templates/{key}`` (+ ``/versions``, ``/versions/diff``, ``/publish``, ``/rollback``,
``/preview``, ``/variables``, ``/test``) and email layouts ``/api/v1/layouts/{key}`` (+ ``/preview``)."""

from __future__ import annotations

import json
from typing import Any

from django.conf import settings
from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_field, inline_serializer
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from apps.core.channels import CHANNELS
from apps.core.errors import NotFound, Unprocessable
from apps.core.pagination import IdCursorPagination
from apps.core.schema import key_path_parameter, with_schema
from apps.templates import selectors, services
from apps.templates.models import EmailLayout, Template, TemplateVersion
from apps.templates.rendering import HEX_COLOR, TRANSLATED_FIELDS, URL_FIELDS, RenderedContent, sms_segments
from apps.tenancy.auth import request_environment

# --- serializers --------------------------------------------------------------------------------

_FIELDS_SCHEMA = {
    "type": "object",
    "properties": {name: {"type": "string"} for name in TRANSLATED_FIELDS},
    "additionalProperties": {"type": "string"},
}
CONTENT_SCHEMA = {
    "type": "object",
    "description": "Translated content by language code, e.g. "
    '{"en": {"subject": "...", "title": "...", "body": "...", "preheader": "...", "primary_action_label": "...", '
    '"secondary_action_label": "..."}, "fr": {...}}',
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
    primary_action_url = serializers.CharField()
    secondary_action_url = serializers.CharField()
    body_format = serializers.CharField()
    layout = serializers.SerializerMethodField(help_text="Key of the email layout")
    note = serializers.CharField()
    is_published = serializers.SerializerMethodField()
    created_by = serializers.SerializerMethodField()
    created_at = serializers.DateTimeField()

    @extend_schema_field(CONTENT_SCHEMA)
    def get_content(self, version: TemplateVersion) -> dict[str, dict[str, str]]:
        return services.version_content(version)

    @extend_schema_field({"type": "string", "nullable": True})
    def get_layout(self, version: TemplateVersion) -> str | None:
        return version.layout.key if version.layout_id and version.layout else None

    def get_is_published(self, version: TemplateVersion) -> bool:
        return version.template.published_version_id == version.pk

    @extend_schema_field({"type": "string", "nullable": True})
    def get_created_by(self, version: TemplateVersion) -> str | None:
        return version.created_by.get_username() if version.created_by is not None else None


class TemplateSerializer(serializers.Serializer):
    key = serializers.CharField()
    name = serializers.CharField()
    channel = serializers.ChoiceField(choices=CHANNELS)
    description = serializers.CharField()
    sample_payload = serializers.DictField(help_text="Example payload for previews and validation")
    published_version = serializers.SerializerMethodField(help_text="Number of the published version")
    latest_version = serializers.SerializerMethodField(help_text="Number of the newest version")
    created_at = serializers.DateTimeField()
    updated_at = serializers.DateTimeField()

    @extend_schema_field({"type": "integer", "nullable": True})
    def get_published_version(self, template: Template) -> int | None:
        return template.published_version.number if template.published_version is not None else None

    @extend_schema_field({"type": "integer", "nullable": True})
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
    primary_action_url = serializers.CharField(required=False, allow_blank=True, max_length=2000)
    secondary_action_url = serializers.CharField(required=False, allow_blank=True, max_length=2000)
    body_format = serializers.ChoiceField(choices=TemplateVersion.BodyFormat.values, required=False)
    layout = serializers.SlugField(
        required=False, allow_null=True, help_text="Email layout key; default: the environment's default layout"
    )
    sample_payload = serializers.DictField(required=False, help_text="Example payload for previews and validation")
    note = serializers.CharField(required=False, allow_blank=True, max_length=500)
    publish = serializers.BooleanField(
        default=False, help_text="Publish the version; it must render against the sample payload (422 otherwise)"
    )


class TemplatePublishSerializer(serializers.Serializer):
    version = serializers.IntegerField(required=False, allow_null=True, min_value=1, help_text="Default: latest")


class PreviewSerializer(serializers.Serializer):
    payload = serializers.DictField(required=False, help_text="Default: the template's sample payload")
    subscriber = serializers.DictField(required=False, help_text="Subscriber data, as a stored subscriber renders")
    subscriber_id = serializers.CharField(required=False, max_length=200, help_text="Render as this subscriber")
    actor = serializers.JSONField(required=False, allow_null=True)
    locale = serializers.CharField(required=False, allow_blank=True, max_length=20)
    version = serializers.IntegerField(required=False, allow_null=True, min_value=1, help_text="Default: latest")
    strict = serializers.BooleanField(default=False, help_text="Fail on undefined variables")
    sample = serializers.BooleanField(
        default=False,
        help_text="Render with the sample context the editor uses (sample subscriber, actor, digest, footer "
        "links; free-form data lenient). Implied when content is given.",
    )
    content = ContentField(required=False, help_text="Render this unsaved draft instead of a stored version")
    action_url = serializers.CharField(required=False, allow_blank=True, max_length=2000)
    primary_action_url = serializers.CharField(required=False, allow_blank=True, max_length=2000)
    secondary_action_url = serializers.CharField(required=False, allow_blank=True, max_length=2000)
    body_format = serializers.ChoiceField(choices=TemplateVersion.BodyFormat.values, required=False)
    layout = serializers.SlugField(required=False, allow_null=True)

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
    text = serializers.CharField(help_text="Email: the plain-text part")
    preheader = serializers.CharField()
    actions = serializers.ListField(child=serializers.DictField(), help_text="In-app buttons: label, url, kind")
    layout = serializers.CharField(help_text="Email: the layout used")
    sms = serializers.DictField(help_text="SMS: characters, units, segments, encoding")


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
        channel = request.query_params.get("channel")
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
        parameters=[key_path_parameter()],
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
            urls={name: data.get(name, "") for name in URL_FIELDS},
            body_format=data.get("body_format", ""),
            layout=_layout_arg(environment, data),
            sample_payload=data.get("sample_payload"),
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


def _layout_arg(environment: Any, data: dict[str, Any]) -> EmailLayout | Any | None:
    """``layout`` absent → the default layout; null → none; a key → that layout (422 if unknown)."""
    if "layout" not in data:
        return services.UNSET
    if data["layout"] is None:
        return None
    try:
        return selectors.layout_get(environment=environment, key=data["layout"])
    except NotFound as exc:
        raise Unprocessable(str(exc.detail), code="layout_not_found", details={"layout": data["layout"]}) from exc


def rendered_json(rendered: RenderedContent, *, channel: str, number: int | None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "version": number,
        "locale": rendered.locale,
        "subject": rendered.subject,
        "title": rendered.title,
        "body": rendered.body,
        "action_url": rendered.action_url,
        "fallbacks": rendered.fallbacks,
        "text": rendered.text,
        "preheader": rendered.preheader,
        "actions": rendered.actions,
        "layout": rendered.layout,
        "sms": sms_segments(rendered.body) if channel == "sms" else {},
    }
    return body


def _draft_or_version(template: Template, data: dict[str, Any]) -> TemplateVersion:
    """The unsaved draft described by ``data["content"]``, else stored version ``data["version"]``."""
    if "content" not in data:
        return selectors.template_version_get(template=template, number=data.get("version"))
    urls = {name: data.get(name, "") for name in URL_FIELDS}
    content = services.template_content_validate(channel=template.channel, content=data["content"], urls=urls)
    return services.build_version(
        template=template,
        content=content,
        urls=urls,
        body_format=data.get("body_format", ""),
        layout=_layout_arg(template.environment, data),
    )


class TemplatePreviewView(APIView):
    @extend_schema(
        operation_id="templates_preview",
        request=PreviewSerializer,
        responses={200: PreviewResponseSerializer, 400: _ERROR, 404: _ERROR, 422: _ERROR},
        tags=["templates"],
        description="Render a version (default: the latest, published or not), or an unsaved draft given as "
        "``content``, with sample data. Rendering errors answer 422 with code template_render and the failing "
        'fields in details (``{"fr.body": "line 2: unknown variable …"}``).',
    )
    def post(self, request: Request, key: str) -> Response:
        serializer = PreviewSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        environment = request_environment(request)
        template = selectors.template_get(environment=environment, key=key)
        version = _draft_or_version(template, data)
        if "subscriber_id" in data:
            subscriber = selectors.preview_subscriber_context(
                environment=environment, subscriber_id=data["subscriber_id"]
            )
        else:
            subscriber = data.get("subscriber") or {}
        sample = data["sample"] or "content" in data
        payload = data.get("payload")
        rendered = selectors.template_preview(
            version=version,
            payload=payload if payload is not None or sample else {},
            subscriber=subscriber,
            actor=data.get("actor"),
            locale=data.get("locale") or _str_or_none(subscriber.get("locale")),
            strict=data["strict"],
            sample=sample,
        )
        return Response(rendered_json(rendered, channel=template.channel, number=version.number or None))


class RollbackSerializer(serializers.Serializer):
    version = serializers.IntegerField(min_value=1, help_text="The version to bring back")


class TemplateRollbackView(APIView):
    @extend_schema(
        operation_id="templates_rollback",
        request=RollbackSerializer,
        responses={201: TemplateSaveResponseSerializer, 404: _ERROR, 422: _ERROR},
        tags=["templates"],
        description="Publish a new version equal to an old one (history only grows).",
    )
    def post(self, request: Request, key: str) -> Response:
        serializer = RollbackSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        environment = request_environment(request)
        template = selectors.template_get(environment=environment, key=key)
        version = services.template_rollback(template=template, version_number=serializer.validated_data["version"])
        template = selectors.template_get(environment=environment, key=key)
        body = dict(TemplateDetailSerializer(template).data)
        body["version"] = TemplateVersionSerializer(
            selectors.template_version_get(template=template, number=version.number)
        ).data
        return Response(body, status=status.HTTP_201_CREATED)


class DiffRowSerializer(serializers.Serializer):
    field = serializers.CharField(help_text="e.g. en.body, fr.subject, action_url, layout")
    before = serializers.CharField()
    after = serializers.CharField()
    changed = serializers.BooleanField()
    diff = serializers.CharField(help_text="Unified diff")


class TemplateVersionDiffView(APIView):
    @extend_schema(
        operation_id="templates_versions_diff",
        parameters=[
            OpenApiParameter("a", {"type": "integer", "minimum": 1}, required=True),
            OpenApiParameter("b", {"type": "integer", "minimum": 1}, required=True),
        ],
        responses={
            200: inline_serializer(
                "TemplateVersionDiff",
                {
                    "a": serializers.IntegerField(),
                    "b": serializers.IntegerField(),
                    "fields": DiffRowSerializer(many=True),
                },
            ),
            400: _ERROR,
            404: _ERROR,
        },
        tags=["templates"],
    )
    def get(self, request: Request, key: str) -> Response:
        numbers = {}
        for name in ("a", "b"):
            value = request.query_params.get(name, "")
            if not value.isdigit():
                raise serializers.ValidationError({name: ["A version number is required."]})
            numbers[name] = int(value)
        template = selectors.template_get(environment=request_environment(request), key=key)
        rows = selectors.template_version_diff(template=template, a=numbers["a"], b=numbers["b"])
        return Response({"a": numbers["a"], "b": numbers["b"], "fields": rows})


class VariableSerializer(serializers.Serializer):
    group = serializers.CharField()
    name = serializers.CharField()
    example = serializers.CharField()


class TemplateVariablesView(APIView):
    @extend_schema(
        operation_id="templates_variables",
        responses={200: inline_serializer("TemplateVariables", {"data": VariableSerializer(many=True)}), 404: _ERROR},
        tags=["templates"],
        description="Variables a template can use: sample payload keys, subscriber, actor, digest, footer links.",
    )
    def get(self, request: Request, key: str) -> Response:
        template = selectors.template_get(environment=request_environment(request), key=key)
        return Response({"data": selectors.template_variables(template=template)})


class TestSendSerializer(serializers.Serializer):
    to = serializers.CharField(required=False, allow_blank=True, max_length=2000, help_text="Address to send to")
    subscriber_id = serializers.CharField(required=False, max_length=200, help_text="Render as and send to")
    locale = serializers.CharField(required=False, allow_blank=True, max_length=20)
    version = serializers.IntegerField(required=False, allow_null=True, min_value=1, help_text="Default: latest")
    payload = serializers.DictField(required=False, help_text="Default: the template's sample payload")


class TestSendResponseSerializer(serializers.Serializer):
    message_id = serializers.IntegerField()
    status = serializers.CharField()
    provider = serializers.CharField()
    recipient = serializers.CharField()
    error = serializers.CharField()


class TemplateTestSendView(APIView):
    @extend_schema(
        operation_id="templates_test_send",
        request=TestSendSerializer,
        responses={200: TestSendResponseSerializer, 404: _ERROR, 422: _ERROR},
        tags=["templates"],
        description="Send a version once, now, through the environment's real integrations.",
    )
    def post(self, request: Request, key: str) -> Response:
        serializer = TestSendSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        template = selectors.template_get(environment=request_environment(request), key=key)
        version = selectors.template_version_get(template=template, number=data.get("version"))
        message = services.template_test_send(
            version=version,
            to=data.get("to", ""),
            subscriber_id=data.get("subscriber_id", ""),
            locale=data.get("locale") or None,
            payload=data.get("payload"),
        )
        return Response(test_send_json(message))


def test_send_json(message: Any) -> dict[str, Any]:
    return {
        "message_id": message.pk,
        "status": message.status,
        "provider": message.provider,
        "recipient": message.recipient,
        "error": message.error or "",
    }


# --- layouts --------------------------------------------------------------------------------------


@extend_schema_field(
    {
        "type": "object",
        "properties": {code: {"type": "string"} for code, _ in settings.LANGUAGES},
        "additionalProperties": False,
        "description": "Text by language code",
    }
)
class TranslatedTextField(serializers.DictField):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(child=serializers.CharField(allow_blank=True, trim_whitespace=False), **kwargs)


class LayoutSerializer(serializers.Serializer):
    key = serializers.CharField()
    name = serializers.CharField()
    header = serializers.SerializerMethodField()
    footer = serializers.SerializerMethodField()
    brand_color = serializers.CharField()
    logo_url = serializers.CharField()
    css = serializers.CharField()
    show_unsubscribe = serializers.BooleanField()
    is_default = serializers.BooleanField()
    created_at = serializers.DateTimeField()
    updated_at = serializers.DateTimeField()

    @extend_schema_field({"type": "object", "additionalProperties": {"type": "string"}})
    def get_header(self, layout: EmailLayout) -> dict[str, str]:
        return services.layout_content(layout)["header"]

    @extend_schema_field({"type": "object", "additionalProperties": {"type": "string"}})
    def get_footer(self, layout: EmailLayout) -> dict[str, str]:
        return services.layout_content(layout)["footer"]


class LayoutPutSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=200, required=False)
    header = TranslatedTextField(required=False)
    footer = TranslatedTextField(required=False)
    brand_color = with_schema(serializers.CharField, {"type": "string", "pattern": HEX_COLOR.pattern})(
        required=False, max_length=7
    )
    logo_url = with_schema(serializers.CharField, {"type": "string", "maxLength": 2000, "pattern": "^(https?://.*)?$"})(
        required=False, allow_blank=True, max_length=2000
    )
    css = serializers.CharField(required=False, allow_blank=True, trim_whitespace=False)
    show_unsubscribe = serializers.BooleanField(required=False)
    is_default = serializers.BooleanField(required=False)


class LayoutListView(APIView):
    pagination_class = IdCursorPagination

    @extend_schema(operation_id="layouts_list", responses={200: LayoutSerializer(many=True)}, tags=["templates"])
    def get(self, request: Request) -> Response:
        queryset = selectors.layout_list(environment=request_environment(request))
        paginator = self.pagination_class()
        page = paginator.paginate_queryset(queryset, request, view=self)
        return paginator.get_paginated_response(LayoutSerializer(page, many=True).data)


class LayoutDetailView(APIView):
    @extend_schema(operation_id="layouts_retrieve", responses={200: LayoutSerializer, 404: _ERROR}, tags=["templates"])
    def get(self, request: Request, key: str) -> Response:
        layout = selectors.layout_get(environment=request_environment(request), key=key)
        return Response(LayoutSerializer(layout).data)

    @extend_schema(
        operation_id="layouts_upsert",
        parameters=[key_path_parameter()],
        request=LayoutPutSerializer,
        responses={200: LayoutSerializer, 201: LayoutSerializer, 400: _ERROR, 422: _ERROR},
        tags=["templates"],
    )
    def put(self, request: Request, key: str) -> Response:
        key = _validate_key(key)
        serializer = LayoutPutSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        layout, created = services.layout_upsert(
            environment=request_environment(request), key=key, **serializer.validated_data
        )
        return Response(
            LayoutSerializer(layout).data, status=status.HTTP_201_CREATED if created else status.HTTP_200_OK
        )

    @extend_schema(operation_id="layouts_destroy", responses={204: None, 404: _ERROR, 409: _ERROR}, tags=["templates"])
    def delete(self, request: Request, key: str) -> Response:
        layout = selectors.layout_get(environment=request_environment(request), key=key)
        services.layout_delete(layout=layout)
        return Response(status=status.HTTP_204_NO_CONTENT)


class LayoutPreviewSerializer(serializers.Serializer):
    locale = serializers.CharField(required=False, allow_blank=True, max_length=20)


class LayoutPreviewView(APIView):
    @extend_schema(
        operation_id="layouts_preview",
        request=LayoutPreviewSerializer,
        responses={200: PreviewResponseSerializer, 404: _ERROR, 422: _ERROR},
        tags=["templates"],
        description="A sample email rendered in this layout.",
    )
    def post(self, request: Request, key: str) -> Response:
        serializer = LayoutPreviewSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        layout = selectors.layout_get(environment=request_environment(request), key=key)
        rendered = selectors.layout_preview(layout=layout, locale=serializer.validated_data.get("locale") or None)
        return Response(rendered_json(rendered, channel="email", number=None))
