"""Categories and subscriber preferences over the server API."""

from __future__ import annotations

import re
from typing import Any

from django.db.models import QuerySet
from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_field
from rest_framework import generics, serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from apps.core.errors import NotFound
from apps.core.pagination import AscendingIdCursorPagination
from apps.core.schedule import DAY_NAMES
from apps.core.schema import with_schema
from apps.preferences import selectors, services
from apps.preferences.links import email_links
from apps.preferences.models import (
    FREQUENCIES,
    IN_DOUBT_AUTO,
    IN_DOUBT_POLICY_CHOICES,
    SUBSCRIBER_CHANNELS,
    Category,
    PreferenceChange,
    QuietHours,
)
from apps.subscribers.selectors import subscriber_get
from apps.tenancy.auth import request_environment

CHANNELS_HELP = f"Channel -> enabled. Channels: {', '.join(SUBSCRIBER_CHANNELS)}."


def _check_channel_keys(value: dict[str, bool]) -> dict[str, bool]:
    unknown = sorted(set(value) - set(SUBSCRIBER_CHANNELS))
    if unknown:
        raise serializers.ValidationError(
            f"Unknown channel(s): {', '.join(unknown)}. Channels are: {', '.join(SUBSCRIBER_CHANNELS)}."
        )
    return value


@extend_schema_field(
    {
        "type": "object",
        "properties": {channel: {"type": "boolean"} for channel in SUBSCRIBER_CHANNELS},
        "additionalProperties": False,
    }
)
class ChannelsField(serializers.DictField):
    """``{"email": false, "sms": true}``: keys must be known channels, values strict booleans."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("help_text", CHANNELS_HELP)
        super().__init__(child=serializers.BooleanField(), **kwargs)

    def to_internal_value(self, data: Any) -> dict[str, bool]:
        if isinstance(data, dict):
            not_bool = sorted(str(k) for k, v in data.items() if not isinstance(v, bool))
            if not_bool:
                raise serializers.ValidationError(f"Use true or false for: {', '.join(not_bool)}.")
        return _check_channel_keys(super().to_internal_value(data))


class CategoryKeySerializer(serializers.Serializer):
    key = serializers.SlugField(max_length=100)


class CategoryInputSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=200)
    description = serializers.CharField(required=False, allow_blank=True, default="")
    critical = serializers.BooleanField(required=False, default=False, help_text="Critical messages ignore opt-outs.")
    default_channels = ChannelsField(required=False, default=dict)
    order = serializers.IntegerField(required=False, default=0, min_value=0, max_value=2_147_483_647)
    digest_schedule = serializers.CharField(
        required=False,
        default=services.DEFAULT_DIGEST_SCHEDULE,
        max_length=60,
        help_text="When this category's digests go out, in the subscriber's timezone: 'daily 09:00', "
        "'weekdays 18:00', 'weekly monday 08:30'. Daily/weekly frequencies use its time of day.",
    )
    digest_templates = with_schema(
        serializers.DictField,
        {
            "type": "object",
            "properties": {
                channel: {"type": "string", "maxLength": 100, "pattern": r"^[-a-zA-Z0-9_]+$"}
                for channel in SUBSCRIBER_CHANNELS
            },
            "additionalProperties": False,
        },
    )(
        child=serializers.SlugField(max_length=100),
        required=False,
        default=dict,
        help_text='Channel -> template key rendering the digest, e.g. {"email": "comments-digest"}.',
    )
    in_doubt_policy = serializers.ChoiceField(
        choices=IN_DOUBT_POLICY_CHOICES,
        required=False,
        default=IN_DOUBT_AUTO,
        help_text="A send that may or may not have reached the provider: 'auto' resends it (same provider, same "
        "idempotency key) if the category is critical or the provider deduplicates, else holds it; 'resend' "
        "always resends; 'drop' never does.",
    )


class CategorySerializer(serializers.ModelSerializer):
    default_channels = serializers.DictField(child=serializers.BooleanField(), help_text=CHANNELS_HELP)

    class Meta:
        model = Category
        fields = [
            "key",
            "name",
            "description",
            "critical",
            "default_channels",
            "order",
            "digest_schedule",
            "digest_templates",
            "in_doubt_policy",
            "created_at",
        ]
        read_only_fields = fields


class PreferenceCategoryStateSerializer(serializers.Serializer):
    key = serializers.CharField()
    name = serializers.CharField()
    description = serializers.CharField()
    critical = serializers.BooleanField()
    channels = serializers.DictField(child=serializers.BooleanField(), help_text="Effective: may it be sent?")
    frequency = serializers.ChoiceField(
        choices=FREQUENCIES, help_text="instant, or gathered into a daily / weekly digest (critical: always instant)"
    )


class PreferencesStateSerializer(serializers.Serializer):
    """``apps.preferences.selectors.subscriber_preferences`` output."""

    channels = serializers.DictField(child=serializers.BooleanField(), help_text="Global per-channel switches.")
    unsubscribed = serializers.BooleanField(help_text="True: nothing but critical categories is sent, on any channel.")
    categories = PreferenceCategoryStateSerializer(many=True)


class PreferencesUpdateSerializer(serializers.Serializer):
    channels = ChannelsField(required=False, help_text="Global switches: false turns a channel off everywhere.")
    categories = serializers.DictField(
        child=ChannelsField(), required=False, help_text='Category key -> channels, e.g. {"billing": {"email": false}}.'
    )

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if not attrs.get("channels") and not attrs.get("categories"):
            raise serializers.ValidationError("Send 'channels' and/or 'categories'.")
        return attrs


class SubscriberPreferencesUpdateSerializer(PreferencesUpdateSerializer):
    """The server API's PATCH: the inbox widget's fields plus frequencies and "unsubscribe from everything"."""

    frequencies = serializers.DictField(
        child=serializers.ChoiceField(choices=FREQUENCIES),
        required=False,
        help_text='Category key -> instant | daily | weekly, e.g. {"comments": "daily"}.',
    )
    unsubscribed = serializers.BooleanField(
        required=False, help_text="true: stop everything but critical categories; false: undo it."
    )

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if not any(attrs.get(k) for k in ("channels", "categories", "frequencies")) and "unsubscribed" not in attrs:
            raise serializers.ValidationError("Send 'channels', 'categories', 'frequencies' and/or 'unsubscribed'.")
        return attrs


class PreferencesBulkItemSerializer(SubscriberPreferencesUpdateSerializer):
    subscriber_id = serializers.CharField(max_length=200)


class PreferencesBulkSerializer(serializers.Serializer):
    # many=True hands min/max_length to the list serializer; the stubs' Serializer.__init__ does not list them
    items = PreferencesBulkItemSerializer(  # type: ignore[call-arg]
        many=True, allow_empty=False, min_length=1, max_length=services.BULK_LIMIT
    )


class PreferencesBulkResultSerializer(serializers.Serializer):
    subscriber_id = serializers.CharField()
    changes = serializers.IntegerField(help_text="How many settings actually changed")


class PreferencesBulkResponseSerializer(serializers.Serializer):
    # A declared field: DRF's serializer metaclass takes it out of the class (Serializer.data stays).
    data = PreferencesBulkResultSerializer(many=True)  # type: ignore[assignment]


class PreferenceChangeSerializer(serializers.ModelSerializer):
    changes = serializers.ListField(child=serializers.DictField(), help_text="{kind, category, channel, from, to}")

    class Meta:
        model = PreferenceChange
        fields = ["id", "source", "changes", "created_at"]
        read_only_fields = fields


class PreferenceLinksSerializer(serializers.Serializer):
    preferences_url = serializers.URLField()
    unsubscribe_url = serializers.URLField(allow_null=True)
    headers = serializers.DictField(child=serializers.CharField())


class WorkflowPreferenceSerializer(serializers.Serializer):
    default_channels = ChannelsField(
        help_text="Channel -> on by default for this workflow, overriding its category's default "
        "(a subscriber's own choice still wins). {} removes the override."
    )


def _check_key(key: str) -> None:
    serializer = CategoryKeySerializer(data={"key": key})
    serializer.is_valid(raise_exception=True)


class CategoryListView(generics.ListAPIView):
    serializer_class = CategorySerializer
    pagination_class = AscendingIdCursorPagination

    def get_queryset(self) -> QuerySet[Category]:
        return selectors.category_list(environment=request_environment(self.request))

    @extend_schema(operation_id="categories_list", summary="List categories (oldest first)")
    def get(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return super().get(request, *args, **kwargs)


class CategoryDetailView(APIView):
    @extend_schema(operation_id="categories_retrieve", responses={200: CategorySerializer})
    def get(self, request: Request, key: str) -> Response:
        category = selectors.category_get(environment=request_environment(request), key=key)
        return Response(CategorySerializer(category).data)

    @extend_schema(
        operation_id="categories_upsert",
        summary="Create or replace a category",
        description="Fields left out take their defaults (PUT replaces). `default_channels` maps channel -> "
        "on by default; a channel left out is on.",
        request=CategoryInputSerializer,
        responses={200: CategorySerializer, 201: CategorySerializer},
        parameters=[
            OpenApiParameter(
                "key", {"type": "string", "maxLength": 100, "pattern": "^[-a-zA-Z0-9_]+$"}, OpenApiParameter.PATH
            )
        ],
    )
    def put(self, request: Request, key: str) -> Response:
        _check_key(key)
        serializer = CategoryInputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        category, created = services.category_upsert(
            environment=request_environment(request), key=key, **serializer.validated_data
        )
        return Response(
            CategorySerializer(category).data, status=status.HTTP_201_CREATED if created else status.HTTP_200_OK
        )

    @extend_schema(operation_id="categories_destroy", responses={204: None})
    def delete(self, request: Request, key: str) -> Response:
        category = selectors.category_get(environment=request_environment(request), key=key)
        services.category_delete(category=category)
        return Response(status=status.HTTP_204_NO_CONTENT)


class SubscriberPreferencesView(APIView):
    @extend_schema(
        operation_id="subscribers_preferences_retrieve",
        summary="A subscriber's preferences",
        description="Global channel switches and, per category, whether each channel may be sent "
        "(critical categories always may).",
        responses={200: PreferencesStateSerializer},
    )
    def get(self, request: Request, subscriber_id: str) -> Response:
        subscriber = subscriber_get(environment=request_environment(request), subscriber_id=subscriber_id)
        return Response(selectors.subscriber_preferences(subscriber=subscriber))

    @extend_schema(
        operation_id="subscribers_preferences_update",
        summary="Change a subscriber's preferences",
        description="Only what is sent changes; each real change is recorded in the history (source `api`). "
        "Errors: 400 `unknown_channel` / `validation_error`, 422 `unknown_category`, 422 `critical_category` "
        "(a critical category cannot be turned off or digested).",
        request=SubscriberPreferencesUpdateSerializer,
        responses={200: PreferencesStateSerializer},
    )
    def patch(self, request: Request, subscriber_id: str) -> Response:
        subscriber = subscriber_get(environment=request_environment(request), subscriber_id=subscriber_id)
        serializer = SubscriberPreferencesUpdateSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        services.preferences_update(
            subscriber=subscriber,
            channels=serializer.validated_data.get("channels"),
            categories=serializer.validated_data.get("categories"),
            frequencies=serializer.validated_data.get("frequencies"),
            unsubscribed=serializer.validated_data.get("unsubscribed"),
            source=PreferenceChange.Source.API,
        )
        return Response(selectors.subscriber_preferences(subscriber=subscriber))


class PreferencesBulkView(APIView):
    @extend_schema(
        operation_id="preferences_bulk_update",
        summary=f"Change the preferences of up to {services.BULK_LIMIT} subscribers at once",
        description="All or nothing: any unknown subscriber (422 `unknown_subscriber`), category "
        "(422 `unknown_category`) or invalid value writes nothing. Each item is applied like PATCH "
        "/subscribers/{id}/preferences and recorded in that subscriber's history.",
        request=PreferencesBulkSerializer,
        responses={200: PreferencesBulkResponseSerializer},
    )
    def post(self, request: Request) -> Response:
        serializer = PreferencesBulkSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        results = services.preferences_bulk_update(
            environment=request_environment(request),
            items=serializer.validated_data["items"],
            source=PreferenceChange.Source.API,
        )
        return Response({"data": [{"subscriber_id": sid, "changes": len(changes)} for sid, changes in results]})


class SubscriberPreferenceHistoryView(generics.ListAPIView):
    serializer_class = PreferenceChangeSerializer

    def get_queryset(self) -> QuerySet[PreferenceChange]:
        subscriber = subscriber_get(
            environment=request_environment(self.request), subscriber_id=self.kwargs["subscriber_id"]
        )
        return selectors.preference_changes(subscriber=subscriber)

    @extend_schema(
        operation_id="subscribers_preferences_history",
        summary="What changed in a subscriber's preferences, when, and from where (newest first)",
        description="`source`: api, page (hosted preference center), one_click (unsubscribe link), "
        "inbox (widget), sms (STOP/START keyword), admin.",
    )
    def get(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return super().get(request, *args, **kwargs)


class SubscriberPreferenceLinksView(APIView):
    @extend_schema(
        operation_id="subscribers_preference_links",
        summary="Signed preference-center and one-click unsubscribe links, for emails you send yourself",
        description="`category`: the category the unsubscribe link turns email off for; without it the "
        "link unsubscribes from everything non-critical.",
        parameters=[OpenApiParameter("category", str, description="A category key.")],
        responses={200: PreferenceLinksSerializer},
    )
    def get(self, request: Request, subscriber_id: str) -> Response:
        environment = request_environment(request)
        subscriber = subscriber_get(environment=environment, subscriber_id=subscriber_id)
        key = request.query_params.get("category") or None
        critical = False
        if key is not None:
            critical = selectors.category_get(environment=environment, key=key).critical
        return Response(email_links(subscriber=subscriber, category_key=key, critical=critical))


CLOCK_TIME = re.compile(r"^([01]\d|2[0-3]):[0-5]\d(:[0-5]\d)?$")


@extend_schema_field({"type": "string", "pattern": CLOCK_TIME.pattern, "example": "22:00"})
class ClockTimeField(serializers.TimeField):
    """A time of day as ``HH:MM`` (``HH:MM:SS`` accepted), answered as ``HH:MM``."""

    def to_internal_value(self, value: Any) -> Any:
        if not isinstance(value, str) or not CLOCK_TIME.match(value):
            raise serializers.ValidationError("Use a time of day as HH:MM, e.g. 22:00.")
        return super().to_internal_value(value)


class QuietHoursSerializer(serializers.Serializer):
    start = ClockTimeField(format="%H:%M", help_text="Local time the quiet window starts, e.g. 22:00")
    end = ClockTimeField(format="%H:%M", help_text="Local time it ends, e.g. 07:00 (the next day)")
    timezone = serializers.CharField(
        max_length=64, required=False, allow_blank=True, default="", help_text="Empty: the subscriber's timezone"
    )
    days = with_schema(serializers.ListField, {"type": "array", "items": {"type": "string", "enum": DAY_NAMES}})(
        child=serializers.CharField(max_length=3),
        required=False,
        default=list,
        help_text="Days the window starts on (mon…sun); empty: every day",
    )
    channels = with_schema(
        serializers.ListField, {"type": "array", "items": {"type": "string", "enum": SUBSCRIBER_CHANNELS}}
    )(
        child=serializers.CharField(max_length=20),
        required=False,
        default=list,
        help_text="Channels kept quiet; empty: every channel except in-app",
    )


class SubscriberQuietHoursView(APIView):
    @extend_schema(responses={200: QuietHoursSerializer}, summary="A subscriber's quiet hours (404 when none)")
    def get(self, request: Request, subscriber_id: str) -> Response:
        subscriber = subscriber_get(environment=request_environment(request), subscriber_id=subscriber_id)
        quiet = QuietHours.objects.filter(subscriber=subscriber).first()
        if quiet is None:
            raise NotFound(f"Subscriber '{subscriber_id}' has no quiet hours.", code="quiet_hours_not_found")
        return Response(QuietHoursSerializer(quiet).data)

    @extend_schema(
        request=QuietHoursSerializer,
        responses={200: QuietHoursSerializer},
        summary="Set a subscriber's quiet hours: non-critical messages wait until the window ends",
    )
    def put(self, request: Request, subscriber_id: str) -> Response:
        subscriber = subscriber_get(environment=request_environment(request), subscriber_id=subscriber_id)
        serializer = QuietHoursSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        quiet = services.quiet_hours_set(
            subscriber=subscriber, **serializer.validated_data, source=PreferenceChange.Source.API
        )
        return Response(QuietHoursSerializer(quiet).data)

    @extend_schema(responses={204: None}, summary="Remove a subscriber's quiet hours")
    def delete(self, request: Request, subscriber_id: str) -> Response:
        subscriber = subscriber_get(environment=request_environment(request), subscriber_id=subscriber_id)
        services.quiet_hours_clear(subscriber=subscriber, source=PreferenceChange.Source.API)
        return Response(status=status.HTTP_204_NO_CONTENT)
