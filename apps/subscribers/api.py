"""Subscribers and topics over the server API. Serializers validate; services write; selectors read.

``SubscriberInputSerializer`` is the one validator for a subscriber object and is reused by the
trigger API for inline recipients (``{"subscriber_id": "u2", "email": "a@example.com"}``).
"""

from __future__ import annotations

import json
import re
from functools import cache
from typing import Any
from zoneinfo import available_timezones

from django.db.models import QuerySet
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema, inline_serializer
from rest_framework import generics, serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.settings import api_settings
from rest_framework.views import APIView

from apps.core.pagination import AscendingIdCursorPagination
from apps.core.schema import blank_or, with_schema
from apps.subscribers import selectors, services
from apps.subscribers.models import Device, Subscriber, Topic
from apps.tenancy.auth import request_environment

MAX_BULK_ITEMS = 1000
MAX_DATA_BYTES = 64 * 1024

# Ids and keys travel in URL paths: anything but whitespace and '/' ('@', '.', ':' are fine).
# No whitespace (in Python's sense and JavaScript's, which the schema's pattern follows) and no "/".
IDENTIFIER_RE = re.compile(r"^[^\s/\x1c-\x1f\x85\ufeff]+$")
IDENTIFIER_MESSAGE = "Use 1-200 characters without spaces or '/'."
# BCP 47-ish: a 2-3 letter language, then subtags (region, script, variant): en, en-US, zh-Hant-TW.
LOCALE_RE = re.compile(r"^[A-Za-z]{2,3}(?:[-_][A-Za-z0-9]{1,8})*$")
PHONE_RE = re.compile(r"^\+?[0-9][0-9 ()\-.]{1,30}$")


@cache
def _timezones() -> frozenset[str]:
    return frozenset(available_timezones())


def identifier_field(**kwargs: Any) -> serializers.RegexField:
    return serializers.RegexField(
        IDENTIFIER_RE,
        max_length=200,
        trim_whitespace=False,
        error_messages={"invalid": IDENTIFIER_MESSAGE},
        **kwargs,
    )


class IndexedListSerializer(serializers.ListSerializer):
    """A list serializer whose item errors are keyed by index: ``{"3": {"email": [...]}}``."""

    max_length: int | None  # set by ListSerializer.__init__ (not declared in the DRF stubs)

    def to_internal_value(self, data: Any) -> list[Any]:
        non_field = api_settings.NON_FIELD_ERRORS_KEY
        if not isinstance(data, list):
            message = self.error_messages["not_a_list"].format(input_type=type(data).__name__)
            raise serializers.ValidationError({non_field: [message]}, code="not_a_list")
        if not self.allow_empty and not data:
            raise serializers.ValidationError({non_field: [self.error_messages["empty"]]}, code="empty")
        if self.max_length is not None and len(data) > self.max_length:
            message = f"At most {self.max_length} items per request (got {len(data)})."
            raise serializers.ValidationError({non_field: [message]}, code="max_length")
        validated: list[Any] = []
        errors: dict[str, Any] = {}
        for index, item in enumerate(data):
            try:
                validated.append(self.run_child_validation(item))
            except serializers.ValidationError as exc:
                errors[str(index)] = exc.detail
        if errors:
            raise serializers.ValidationError(errors)
        return validated


# Unset text is "" in responses (and may be sent as ""), which no format matches.
EMAIL_SCHEMA = {**blank_or({"type": "string", "format": "email"}), "maxLength": 320}
AVATAR_SCHEMA = {**blank_or({"type": "string", "format": "uri"}), "maxLength": 1000}


class SubscriberInputSerializer(serializers.Serializer):
    """A subscriber object as callers send it. Only the keys present are validated and returned;
    ``null`` clears a field. Unknown keys are rejected (read-only keys from a GET are ignored)."""

    IGNORED_KEYS = frozenset({"created_at", "updated_at"})
    rejects_unknown_fields = True  # the OpenAPI schema says so (apps.core.openapi)

    subscriber_id = identifier_field(help_text="Your own id for this person, e.g. 'user-42' or 'ada@example.com'.")
    email = with_schema(serializers.EmailField, {**EMAIL_SCHEMA, "nullable": True})(
        max_length=320, required=False, allow_blank=True, allow_null=True
    )
    phone = serializers.RegexField(
        PHONE_RE,
        max_length=32,
        required=False,
        allow_blank=True,
        allow_null=True,
        error_messages={"invalid": "Enter a phone number, preferably in E.164 form (+15551234567)."},
    )
    first_name = serializers.CharField(max_length=200, required=False, allow_blank=True, allow_null=True)
    last_name = serializers.CharField(max_length=200, required=False, allow_blank=True, allow_null=True)
    avatar = with_schema(serializers.URLField, {**AVATAR_SCHEMA, "nullable": True})(
        max_length=1000, required=False, allow_blank=True, allow_null=True
    )
    locale = with_schema(
        serializers.CharField,
        {"type": "string", "maxLength": 20, "nullable": True, "pattern": f"({LOCALE_RE.pattern})|^$"},
    )(max_length=20, required=False, allow_blank=True, allow_null=True, help_text="BCP 47 tag, e.g. 'en' or 'fr-CA'.")
    timezone = serializers.CharField(
        max_length=64, required=False, allow_blank=True, allow_null=True, help_text="IANA name, e.g. 'Europe/Paris'."
    )
    # A declared field: DRF's serializer metaclass takes it out of the class (Serializer.data stays).
    data = serializers.DictField(  # type: ignore[assignment]
        required=False, allow_null=True, help_text="Free-form JSON object; replaced whole."
    )

    class Meta:
        list_serializer_class = IndexedListSerializer

    def to_internal_value(self, data: Any) -> dict[str, Any]:
        if isinstance(data, dict):
            unknown = sorted(set(data) - set(self.fields) - self.IGNORED_KEYS)
            if unknown:
                raise serializers.ValidationError({key: ["Unknown field."] for key in unknown})
        return super().to_internal_value(data)

    def validate_locale(self, value: str | None) -> str | None:
        if not value:
            return value
        if not LOCALE_RE.match(value):
            raise serializers.ValidationError("Use a BCP 47 language tag such as 'en', 'en-US' or 'zh-Hant-TW'.")
        return value.replace("_", "-")

    def validate_timezone(self, value: str | None) -> str | None:
        if value and value not in _timezones():
            raise serializers.ValidationError(f"'{value}' is not an IANA time zone (e.g. 'Europe/Paris', 'UTC').")
        return value

    def validate_data(self, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is not None and len(json.dumps(value, default=str)) > MAX_DATA_BYTES:
            raise serializers.ValidationError(f"data must be at most {MAX_DATA_BYTES // 1024} KB of JSON.")
        return value


class SubscriberUpsertSerializer(SubscriberInputSerializer):
    """The body of ``PUT /subscribers/{subscriber_id}``: the id comes from the path."""

    subscriber_id = identifier_field(required=False, help_text="Optional; must equal the id in the path.")


class SubscriberSerializer(serializers.ModelSerializer):
    """A subscriber as the API returns it."""

    email = with_schema(serializers.CharField, EMAIL_SCHEMA)(read_only=True)
    avatar = with_schema(serializers.CharField, AVATAR_SCHEMA)(read_only=True)

    class Meta:
        model = Subscriber
        fields = ["subscriber_id", *services.SUBSCRIBER_FIELDS, "created_at", "updated_at"]
        read_only_fields = fields


class SubscriberBulkSerializer(serializers.Serializer):
    # many=True hands max_length to the list serializer; the stubs' Serializer.__init__ does not list it
    subscribers = SubscriberInputSerializer(many=True, allow_empty=False, max_length=MAX_BULK_ITEMS)  # type: ignore[call-arg]


class SubscriberIdsSerializer(serializers.Serializer):
    subscribers = serializers.ListField(
        child=identifier_field(), allow_empty=False, max_length=MAX_BULK_ITEMS, help_text="Subscriber ids."
    )


class TopicInputSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=200, required=False, allow_blank=True)


class TopicSerializer(serializers.ModelSerializer):
    class Meta:
        model = Topic
        fields = ["key", "name", "created_at"]
        read_only_fields = fields


def _subscriber_input(request: Request, subscriber_id: str) -> dict[str, Any]:
    body = request.data
    if not isinstance(body, dict):
        raise serializers.ValidationError({api_settings.NON_FIELD_ERRORS_KEY: ["Send a JSON object."]})
    if "subscriber_id" in body and body["subscriber_id"] != subscriber_id:
        raise serializers.ValidationError({"subscriber_id": ["Does not match the subscriber id in the URL."]})
    serializer = SubscriberInputSerializer(data={**body, "subscriber_id": subscriber_id})
    serializer.is_valid(raise_exception=True)
    fields = dict(serializer.validated_data)
    fields.pop("subscriber_id")
    return fields


class SubscriberListView(generics.ListAPIView):
    serializer_class = SubscriberSerializer

    def get_queryset(self) -> QuerySet[Subscriber]:
        return selectors.subscriber_list(
            environment=request_environment(self.request), filters={"email": self.request.query_params.get("email")}
        )

    @extend_schema(
        operation_id="subscribers_list",
        summary="List subscribers (newest first)",
        parameters=[OpenApiParameter("email", str, description="Only subscribers with this email (any case).")],
    )
    def get(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return super().get(request, *args, **kwargs)


class SubscriberDetailView(APIView):
    @extend_schema(operation_id="subscribers_retrieve", responses={200: SubscriberSerializer})
    def get(self, request: Request, subscriber_id: str) -> Response:
        subscriber = selectors.subscriber_get(environment=request_environment(request), subscriber_id=subscriber_id)
        return Response(SubscriberSerializer(subscriber).data)

    @extend_schema(
        operation_id="subscribers_upsert",
        parameters=[
            OpenApiParameter(
                "subscriber_id",
                {"type": "string", "maxLength": 200, "pattern": IDENTIFIER_RE.pattern},
                OpenApiParameter.PATH,
            )
        ],
        summary="Create or update a subscriber",
        description="Creates the subscriber (201) or changes only the fields sent (200). `data` is replaced "
        "whole; `null` clears a field.",
        request=SubscriberUpsertSerializer,
        responses={200: SubscriberSerializer, 201: SubscriberSerializer},
    )
    def put(self, request: Request, subscriber_id: str) -> Response:
        fields = _subscriber_input(request, subscriber_id)
        subscriber, created = services.subscriber_upsert(
            environment=request_environment(request), subscriber_id=subscriber_id, **fields
        )
        return Response(
            SubscriberSerializer(subscriber).data, status=status.HTTP_201_CREATED if created else status.HTTP_200_OK
        )

    @extend_schema(operation_id="subscribers_destroy", responses={204: None})
    def delete(self, request: Request, subscriber_id: str) -> Response:
        subscriber = selectors.subscriber_get(environment=request_environment(request), subscriber_id=subscriber_id)
        services.subscriber_delete(subscriber=subscriber)
        return Response(status=status.HTTP_204_NO_CONTENT)


class SubscriberBulkView(APIView):
    @extend_schema(
        operation_id="subscribers_bulk_upsert",
        summary="Create or update up to 1,000 subscribers",
        description="Each item is upserted like `PUT /subscribers/{subscriber_id}`. Invalid items are "
        "reported by index in `error.details.subscribers` and nothing is written.",
        request=SubscriberBulkSerializer,
        responses={200: inline_serializer("SubscriberBulkResponse", {"data": SubscriberSerializer(many=True)})},
    )
    def post(self, request: Request) -> Response:
        serializer = SubscriberBulkSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        subscribers = services.subscriber_bulk_upsert(
            environment=request_environment(request), items=serializer.validated_data["subscribers"]
        )
        return Response({"data": SubscriberSerializer(subscribers, many=True).data})


class TopicListView(generics.ListAPIView):
    serializer_class = TopicSerializer

    def get_queryset(self) -> QuerySet[Topic]:
        return selectors.topic_list(environment=request_environment(self.request))

    @extend_schema(operation_id="topics_list", summary="List topics (newest first)")
    def get(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return super().get(request, *args, **kwargs)


class TopicDetailView(APIView):
    @extend_schema(operation_id="topics_retrieve", responses={200: TopicSerializer})
    def get(self, request: Request, key: str) -> Response:
        topic = selectors.topic_get(environment=request_environment(request), key=key)
        return Response(TopicSerializer(topic).data)

    @extend_schema(
        operation_id="topics_upsert",
        summary="Create or rename a topic",
        parameters=[
            OpenApiParameter(
                "key", {"type": "string", "maxLength": 200, "pattern": IDENTIFIER_RE.pattern}, OpenApiParameter.PATH
            )
        ],
        request=TopicInputSerializer,
        responses={200: TopicSerializer, 201: TopicSerializer},
    )
    def put(self, request: Request, key: str) -> Response:
        if len(key) > 200 or not IDENTIFIER_RE.match(key):
            raise serializers.ValidationError({"key": [IDENTIFIER_MESSAGE]})
        serializer = TopicInputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        topic, created = services.topic_upsert(
            environment=request_environment(request), key=key, name=serializer.validated_data.get("name")
        )
        return Response(TopicSerializer(topic).data, status=status.HTTP_201_CREATED if created else status.HTTP_200_OK)

    @extend_schema(operation_id="topics_destroy", summary="Delete a topic (subscribers stay)", responses={204: None})
    def delete(self, request: Request, key: str) -> Response:
        topic = selectors.topic_get(environment=request_environment(request), key=key)
        services.topic_delete(topic=topic)
        return Response(status=status.HTTP_204_NO_CONTENT)


class TopicSubscribersView(generics.GenericAPIView):
    """Members of a topic: ``GET`` lists them, ``POST`` adds ids. Removal is
    ``POST /topics/{key}/subscribers/remove`` (a POST, because DELETE bodies are dropped by some
    proxies and HTTP clients)."""

    serializer_class = SubscriberSerializer
    pagination_class = AscendingIdCursorPagination

    @extend_schema(
        operation_id="topics_subscribers_list",
        summary="List a topic's subscribers",
        responses={200: SubscriberSerializer(many=True)},
    )
    def get(self, request: Request, key: str) -> Response:
        topic = selectors.topic_get(environment=request_environment(request), key=key)
        page = self.paginate_queryset(selectors.topic_subscribers(topic=topic))
        return self.get_paginated_response(SubscriberSerializer(page, many=True).data)

    @extend_schema(
        operation_id="topics_subscribers_add",
        summary="Add subscribers to a topic (up to 1,000 ids; unknown ids are created)",
        request=SubscriberIdsSerializer,
        responses={
            200: inline_serializer(
                "TopicSubscribersAdded",
                {
                    "topic": serializers.CharField(),
                    "added": serializers.ListField(child=serializers.CharField()),
                    "already_subscribed": serializers.ListField(child=serializers.CharField()),
                },
            )
        },
    )
    def post(self, request: Request, key: str) -> Response:
        topic = selectors.topic_get(environment=request_environment(request), key=key)
        serializer = SubscriberIdsSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        ids = list(dict.fromkeys(serializer.validated_data["subscribers"]))
        added = services.topic_subscribers_add(topic=topic, subscriber_ids=ids)
        added_set = set(added)
        return Response(
            {"topic": topic.key, "added": added, "already_subscribed": [i for i in ids if i not in added_set]}
        )


class TopicSubscribersRemoveView(APIView):
    @extend_schema(
        operation_id="topics_subscribers_remove",
        summary="Remove subscribers from a topic (up to 1,000 ids; non-members are ignored)",
        request=SubscriberIdsSerializer,
        responses={
            200: inline_serializer(
                "TopicSubscribersRemoved", {"topic": serializers.CharField(), "removed": serializers.IntegerField()}
            ),
            404: OpenApiResponse(description="No such topic in this environment."),
        },
    )
    def post(self, request: Request, key: str) -> Response:
        topic = selectors.topic_get(environment=request_environment(request), key=key)
        serializer = SubscriberIdsSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        ids = serializer.validated_data["subscribers"]
        removed = services.topic_subscribers_remove(topic=topic, subscriber_ids=ids)
        return Response({"topic": topic.key, "removed": removed})


# --- Devices: push tokens and chat webhooks -------------------------------------------------


class DeviceInputSerializer(serializers.Serializer):
    provider = serializers.ChoiceField(
        choices=[p for p, _label in Device.PROVIDER_CHOICES],
        help_text="fcm or webpush (push channel); slack, discord or msteams (chat channel).",
    )
    token = serializers.CharField(
        max_length=2000,
        help_text="FCM registration token; Web Push subscription endpoint URL; chat incoming webhook URL.",
    )
    keys = serializers.DictField(
        child=serializers.CharField(max_length=200),
        required=False,
        help_text="Web Push only: the subscription's p256dh and auth keys.",
    )
    name = serializers.CharField(max_length=200, required=False, allow_blank=True)

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        provider, token = attrs["provider"], attrs["token"]
        if provider != "fcm":
            url = serializers.URLField()
            try:
                url.run_validation(token)
            except serializers.ValidationError as exc:
                raise serializers.ValidationError({"token": [f"A {provider} token is a URL."]}) from exc
            if not token.startswith("https://"):
                # Clarion POSTs to it: only to TLS endpoints on the internet, never plain HTTP.
                raise serializers.ValidationError({"token": [f"A {provider} token is an https:// URL."]})
        if provider == "webpush":
            keys = attrs.get("keys") or {}
            missing = [k for k in ("p256dh", "auth") if not keys.get(k)]
            if missing:
                raise serializers.ValidationError({"keys": [f"Web Push needs keys.{', keys.'.join(missing)}."]})
            attrs["keys"] = {"p256dh": keys["p256dh"], "auth": keys["auth"]}
        else:
            attrs["keys"] = {}
        return attrs


class DeviceSerializer(serializers.ModelSerializer):
    """A device as the API returns it. Web Push keys are not echoed back."""

    channel = serializers.CharField(read_only=True)

    class Meta:
        model = Device
        fields = ["id", "provider", "channel", "token", "name", "created_at", "updated_at"]
        read_only_fields = fields


class DeviceListView(generics.GenericAPIView):
    serializer_class = DeviceSerializer
    pagination_class = AscendingIdCursorPagination

    @extend_schema(
        operation_id="subscribers_devices_list",
        summary="List a subscriber's devices",
        responses={200: DeviceSerializer(many=True)},
    )
    def get(self, request: Request, subscriber_id: str) -> Response:
        subscriber = selectors.subscriber_get(environment=request_environment(request), subscriber_id=subscriber_id)
        page = self.paginate_queryset(selectors.device_list(subscriber=subscriber))
        return self.get_paginated_response(DeviceSerializer(page, many=True).data)

    @extend_schema(
        operation_id="subscribers_devices_register",
        summary="Register a push token or chat webhook",
        description="Idempotent per token: registering the same token again updates it (200). A token held "
        "by another subscriber of the environment moves to this one.",
        request=DeviceInputSerializer,
        responses={200: DeviceSerializer, 201: DeviceSerializer},
    )
    def post(self, request: Request, subscriber_id: str) -> Response:
        subscriber = selectors.subscriber_get(environment=request_environment(request), subscriber_id=subscriber_id)
        serializer = DeviceInputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        device, created = services.device_register(subscriber=subscriber, **serializer.validated_data)
        code = status.HTTP_201_CREATED if created else status.HTTP_200_OK
        return Response(DeviceSerializer(device).data, status=code)


class DeviceDetailView(APIView):
    @extend_schema(operation_id="subscribers_devices_destroy", summary="Remove a device", responses={204: None})
    def delete(self, request: Request, subscriber_id: str, device_id: int) -> Response:
        subscriber = selectors.subscriber_get(environment=request_environment(request), subscriber_id=subscriber_id)
        services.device_delete(device=selectors.device_get(subscriber=subscriber, device_id=device_id))
        return Response(status=status.HTTP_204_NO_CONTENT)
