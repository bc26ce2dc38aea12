"""Inbox REST API (``/api/v1/inbox/...``): sessions, server-minted tokens and subscriber-token endpoints.

Auth is set explicitly on every view: the session endpoint is public (it checks a ``pk_`` key
and an HMAC proof itself), the token endpoint takes the secret key (server to server), the rest
take only inbox session tokens, never ``sk_`` keys.

CORS: the inbox endpoints are called from customers' pages, so they answer preflights for any
origin (a preflight carries no credentials, so it cannot name an environment) and check the
real request's ``Origin`` against its environment's allowed origins (``apps.inbox.origins``):
refused with 403 ``origin_not_allowed`` before anything is read or written. No cookies are
involved (bearer tokens), so credentials are never allowed.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.db.models import QuerySet
from django.http import HttpResponse
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema, extend_schema_field
from rest_framework import generics, permissions, serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from apps.core.errors import ApiError
from apps.core.throttling import InboxSessionIpThrottle, InboxSessionSubscriberThrottle
from apps.inbox.auth import InboxTokenAuthentication, IsInboxSubscriber, request_inbox_principal
from apps.inbox.models import InboxMessage
from apps.inbox.origins import origin_allowed
from apps.inbox.selectors import (
    MAX_COUNT_FILTERS,
    InboxChanges,
    InboxFilter,
    inbox_changes_after,
    inbox_counts,
    inbox_counts_for_filters,
    inbox_message_data,
    inbox_messages_for,
    inbox_subscriber,
)
from apps.inbox.sequence import SYNC_OVERLAP_US, inbox_seq_next
from apps.inbox.services import (
    InboxAction,
    InboxSession,
    inbox_archive_all,
    inbox_mark_all_read,
    inbox_mark_all_seen,
    inbox_message_action_complete,
    inbox_message_delete,
    inbox_message_mark,
    inbox_message_snooze,
    inbox_session_open,
    inbox_token_mint,
)
from apps.preferences.api import PreferencesStateSerializer, PreferencesUpdateSerializer
from apps.preferences.models import PreferenceChange
from apps.preferences.selectors import subscriber_preferences
from apps.preferences.services import preferences_update
from apps.tenancy.auth import request_environment

CORS_METHODS = "GET, POST, PATCH, DELETE, OPTIONS"
CORS_HEADERS = "Authorization, Content-Type"
CORS_MAX_AGE = "600"

# --- CORS ---------------------------------------------------------------------------------------


def _origin(request: Any) -> str | None:
    return request.headers.get("Origin") or None


class InboxCorsMixin:
    """Per-environment CORS for the inbox views (see the module docstring)."""

    def dispatch(self, request: Any, *args: Any, **kwargs: Any) -> Any:
        # A preflight carries no credentials: answer it before DRF authenticates anything.
        origin = _origin(request)
        if request.method == "OPTIONS" and origin and "Access-Control-Request-Method" in request.headers:
            return self._preflight(origin)
        return super().dispatch(request, *args, **kwargs)  # type: ignore[misc]

    @staticmethod
    def _preflight(origin: str) -> HttpResponse:
        response = HttpResponse(status=204)
        response["Access-Control-Allow-Origin"] = origin
        response["Access-Control-Allow-Methods"] = CORS_METHODS
        response["Access-Control-Allow-Headers"] = CORS_HEADERS
        response["Access-Control-Max-Age"] = CORS_MAX_AGE
        response["Vary"] = "Origin"
        return response

    def check_origin(self, request: Request, environment_id: int) -> None:
        """Raise 403 ``origin_not_allowed`` when the browser's origin is not allowed for the environment."""
        origin = _origin(request)
        if not origin_allowed(environment_id=environment_id, origin=origin, host=request.get_host()):
            raise ApiError(
                "This origin is not in the environment's allowed origins.",
                code="origin_not_allowed",
                status_code=403,
                details={"origin": origin},
            )

    def finalize_response(self, request: Request, response: Any, *args: Any, **kwargs: Any) -> Any:
        response = super().finalize_response(request, response, *args, **kwargs)  # type: ignore[misc]
        origin = _origin(request)
        # A refusal carries the header too: its body holds no inbox data, and the widget can then
        # tell the developer "origin not allowed" instead of seeing an opaque network error.
        if origin and request.method != "OPTIONS":
            response["Access-Control-Allow-Origin"] = origin
            response["Access-Control-Expose-Headers"] = "Retry-After"
            vary = response.get("Vary")
            response["Vary"] = f"{vary}, Origin" if vary else "Origin"
        return response


# --- Serializers --------------------------------------------------------------------------------


class InboxSessionOpenSerializer(serializers.Serializer):
    publishable_key = serializers.CharField(max_length=200, trim_whitespace=True)
    subscriber_id = serializers.CharField(max_length=200, trim_whitespace=False)
    subscriber_hash = serializers.CharField(
        max_length=128, help_text="hex HMAC-SHA256(inbox_hmac_secret, subscriber_id)"
    )


class InboxSessionSerializer(serializers.Serializer):
    token = serializers.CharField()
    expires_at = serializers.DateTimeField()
    subscriber_id = serializers.CharField()
    locale = serializers.CharField(help_text="The subscriber's locale ('' when unknown); the widget's default.")
    websocket_url = serializers.CharField(help_text="Path of the live websocket, token included.")


class InboxTokenMintSerializer(serializers.Serializer):
    subscriber_id = serializers.CharField(max_length=200, trim_whitespace=False)
    ttl_seconds = serializers.IntegerField(
        required=False,
        default=3600,
        min_value=60,
        max_value=settings.CLARION["INBOX_TOKEN_MAX_AGE"],
        help_text="How long the token lives (60 s to the inbox session maximum).",
    )


def _session_data(session: InboxSession) -> dict[str, Any]:
    return {
        "token": session.token,
        "expires_at": session.expires_at,
        "subscriber_id": session.subscriber.subscriber_id,
        "locale": session.subscriber.locale,
        "websocket_url": session.websocket_url,
    }


class InboxActionSerializer(serializers.Serializer):
    id = serializers.CharField()
    # DRF's serializer metaclass takes declared fields out of the class, so these names (the API's)
    # do not shadow Field.label / Serializer.data as the stubs believe.
    label = serializers.CharField()  # type: ignore[assignment]
    url = serializers.CharField(allow_blank=True)
    tracking_url = serializers.CharField(
        required=False,
        help_text="``url`` through Clarion's click redirect (counts the click); absent when it cannot be counted.",
    )
    kind = serializers.ChoiceField(choices=["primary", "secondary"])
    completed_at = serializers.DateTimeField(allow_null=True)


class InboxMessageSerializer(serializers.Serializer):
    """Documents the one inbox message shape; the data itself comes from ``inbox_message_data``."""

    id = serializers.IntegerField()
    seq = serializers.IntegerField(help_text="Change cursor of this version of the message.")
    title = serializers.CharField()
    body = serializers.CharField()
    action_url = serializers.CharField()
    action_tracking_url = serializers.CharField(
        allow_blank=True,
        help_text='``action_url`` through Clarion\'s click redirect (counts the click); "" when not http(s).',
    )
    avatar = serializers.CharField()
    workflow = serializers.CharField()
    category = serializers.CharField()
    tags = serializers.ListField(child=serializers.CharField())
    actions = InboxActionSerializer(many=True)
    data = serializers.JSONField()  # type: ignore[assignment]  # a declared field, see InboxActionSerializer
    created_at = serializers.DateTimeField()
    seen_at = serializers.DateTimeField(allow_null=True)
    read_at = serializers.DateTimeField(allow_null=True)
    archived_at = serializers.DateTimeField(allow_null=True)
    snoozed_until = serializers.DateTimeField(allow_null=True)
    deleted_at = serializers.DateTimeField(allow_null=True)
    is_read = serializers.BooleanField()
    is_seen = serializers.BooleanField()
    is_archived = serializers.BooleanField()
    is_snoozed = serializers.BooleanField()
    is_deleted = serializers.BooleanField()

    def to_representation(self, instance: InboxMessage) -> dict[str, Any]:
        return inbox_message_data(instance)


@extend_schema_field(
    {
        "oneOf": [
            {"type": "array", "items": {"type": "string", "maxLength": 100}, "maxItems": 20},
            {"type": "string", "description": "Comma-separated keys."},
        ]
    }
)
class _KeyList(serializers.ListField):
    """A list of keys that also accepts one comma-separated string (``?category=a,b``)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(child=serializers.CharField(max_length=100), max_length=20, **kwargs)

    def to_internal_value(self, data: Any) -> list[str]:
        if isinstance(data, str):
            data = [part for part in data.split(",") if part]
        elif isinstance(data, list) and all(isinstance(x, str) for x in data):
            data = [part for item in data for part in item.split(",") if part]
        return super().to_internal_value(data)


class _ThreeState(serializers.ChoiceField):
    """``true`` / ``false`` / ``all`` (no filter)."""

    MAP = {"true": True, "false": False, "all": None, True: True, False: False, None: None}

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(choices=["true", "false", "all"], **kwargs)

    # The stubs fix ChoiceField's internal value to str; this one maps the choices to booleans.
    def to_internal_value(self, data: Any) -> bool | None:  # type: ignore[override]
        if isinstance(data, bool) or data is None:
            return data
        if isinstance(data, str) and data.lower() in self.MAP:
            return self.MAP[data.lower()]
        self.fail("invalid_choice", input=data)
        return None


class InboxFilterSerializer(serializers.Serializer):
    # Absent: both. A present value must be a boolean ("read=" or "read=null" is a 400, as the schema says).
    read = serializers.BooleanField(required=False, default=None, help_text="Only read / unread.")
    seen = serializers.BooleanField(required=False, default=None, help_text="Only seen / unseen.")
    archived = _ThreeState(
        required=False, default=False, help_text="false: the inbox (default); true: the archive; all: both."
    )
    snoozed = _ThreeState(
        required=False, default=False, help_text="false: hide snoozed (default); true: only snoozed; all: both."
    )
    category = _KeyList(required=False, default=list, help_text="Category key(s), any of (a,b or repeated).")
    tags = _KeyList(required=False, default=list, help_text="Tag(s), any of (a,b or repeated).")

    def to_filter(self) -> InboxFilter:
        data = self.validated_data
        return InboxFilter(
            read=data["read"],
            seen=data["seen"],
            archived=data["archived"],
            snoozed=data["snoozed"],
            categories=tuple(dict.fromkeys(data["category"])),
            tags=tuple(dict.fromkeys(data["tags"])),
        )


def _query_filter(request: Request) -> InboxFilter:
    params: dict[str, Any] = {k: v for k, v in request.query_params.items() if k not in ("category", "tags")}
    for key in ("category", "tags"):
        values = request.query_params.getlist(key)
        if values:
            params[key] = values
    serializer = InboxFilterSerializer(data=params)
    serializer.is_valid(raise_exception=True)
    return serializer.to_filter()


class InboxCountsSerializer(serializers.Serializer):
    unread = serializers.IntegerField()
    unseen = serializers.IntegerField()
    total = serializers.IntegerField(help_text="Messages in the inbox (not archived, snoozed or deleted).")


class InboxCountsRequestSerializer(serializers.Serializer):
    filters = serializers.ListField(
        child=serializers.DictField(),
        min_length=1,
        max_length=MAX_COUNT_FILTERS,
        help_text="Filters with the list's fields (read, seen, archived, snoozed, category, tags).",
    )


class InboxFilterCountSerializer(serializers.Serializer):
    filter = serializers.DictField(help_text="The filter as understood (only what narrows).")
    count = serializers.IntegerField()


class InboxCountsResultSerializer(serializers.Serializer):
    counts = InboxFilterCountSerializer(many=True)


class InboxChangesSerializer(serializers.Serializer):
    data = InboxMessageSerializer(many=True)  # type: ignore[assignment]  # a declared field, see InboxActionSerializer
    cursor = serializers.IntegerField(help_text="Pass as `after` to continue.")
    has_more = serializers.BooleanField()
    overlap = serializers.IntegerField(help_text="Subtract from your cursor when resuming after a gap.")
    counts = InboxCountsSerializer()


class InboxBulkRequestSerializer(serializers.Serializer):
    category = _KeyList(required=False, default=list, help_text="Only messages of these categories.")
    tags = _KeyList(required=False, default=list, help_text="Only messages with one of these tags.")
    read = serializers.BooleanField(
        required=False, allow_null=True, default=None, help_text="archive-all: only read (true) / unread (false)."
    )

    def to_filter(self) -> InboxFilter:
        data = self.validated_data
        return InboxFilter(
            read=data["read"],
            categories=tuple(dict.fromkeys(data["category"])),
            tags=tuple(dict.fromkeys(data["tags"])),
        )


class InboxBulkResultSerializer(serializers.Serializer):
    updated = serializers.IntegerField()


class InboxSnoozeSerializer(serializers.Serializer):
    until = serializers.DateTimeField(help_text="ISO 8601 time, in the future (at most a year ahead).")


_UNAUTHORIZED = OpenApiResponse(description="Missing, invalid or expired inbox session token (error envelope).")
_NOT_FOUND = OpenApiResponse(description="No such message for this subscriber (error envelope).")
_FORBIDDEN = OpenApiResponse(description="Origin not in the environment's allowed origins (error envelope).")


# --- Views --------------------------------------------------------------------------------------


class InboxSessionView(InboxCorsMixin, APIView):
    authentication_classes: list = []
    permission_classes = [permissions.AllowAny]
    throttle_classes = [InboxSessionIpThrottle, InboxSessionSubscriberThrottle]

    @extend_schema(
        tags=["inbox"],
        summary="Open an inbox session for a subscriber",
        auth=[],
        request=InboxSessionOpenSerializer,
        responses={
            201: InboxSessionSerializer,
            400: OpenApiResponse(description="Missing or malformed fields (error envelope)."),
            401: OpenApiResponse(description="Invalid publishable key or subscriber hash (error envelope)."),
            403: _FORBIDDEN,
        },
    )
    def post(self, request: Request) -> Response:
        body = InboxSessionOpenSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        session = inbox_session_open(**body.validated_data, origin=_origin(request), host=request.get_host())
        return Response(InboxSessionSerializer(_session_data(session)).data, status=status.HTTP_201_CREATED)


class InboxTokenView(APIView):
    """Server API (secret key): mint a short-lived inbox token for one subscriber."""

    @extend_schema(
        tags=["inbox"],
        summary="Mint a short-lived inbox token (server side, secret key)",
        request=InboxTokenMintSerializer,
        responses={201: InboxSessionSerializer},
    )
    def post(self, request: Request) -> Response:
        body = InboxTokenMintSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        session = inbox_token_mint(environment=request_environment(request), **body.validated_data)
        return Response(InboxSessionSerializer(_session_data(session)).data, status=status.HTTP_201_CREATED)


class InboxView(InboxCorsMixin, APIView):
    authentication_classes = [InboxTokenAuthentication]
    permission_classes = [IsInboxSubscriber]

    def initial(self, request: Request, *args: Any, **kwargs: Any) -> None:
        super().initial(request, *args, **kwargs)
        self.check_origin(request, request_inbox_principal(request).environment_id)


class InboxMessageListView(InboxCorsMixin, generics.ListAPIView):
    authentication_classes = [InboxTokenAuthentication]
    permission_classes = [IsInboxSubscriber]
    serializer_class = InboxMessageSerializer

    def initial(self, request: Request, *args: Any, **kwargs: Any) -> None:
        super().initial(request, *args, **kwargs)
        self.check_origin(request, request_inbox_principal(request).environment_id)

    def get_queryset(self) -> QuerySet[InboxMessage]:
        return inbox_messages_for(subscriber=request_inbox_principal(self.request), filter=_query_filter(self.request))

    @extend_schema(
        tags=["inbox"],
        summary="List the subscriber's messages, newest first (cursor pagination)",
        parameters=[InboxFilterSerializer],
        responses={200: InboxMessageSerializer(many=True), 400: OpenApiResponse(), 401: _UNAUTHORIZED},
    )
    def get(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return super().get(request, *args, **kwargs)


class InboxCountsView(InboxView):
    @extend_schema(
        tags=["inbox"],
        summary="Unread, unseen and total counts of the inbox",
        responses={200: InboxCountsSerializer, 401: _UNAUTHORIZED},
    )
    def get(self, request: Request) -> Response:
        principal = request_inbox_principal(request)
        return Response(inbox_counts(subscriber_ids=[principal.subscriber_pk])[principal.subscriber_pk])

    @extend_schema(
        tags=["inbox"],
        summary="Counts for several filters in one call (one query)",
        request=InboxCountsRequestSerializer,
        responses={200: InboxCountsResultSerializer, 400: OpenApiResponse(), 401: _UNAUTHORIZED},
    )
    def post(self, request: Request) -> Response:
        body = InboxCountsRequestSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        filters = []
        for item in body.validated_data["filters"]:
            one = InboxFilterSerializer(data=item)
            one.is_valid(raise_exception=True)
            filters.append(one.to_filter())
        counts = inbox_counts_for_filters(subscriber=request_inbox_principal(request), filters=filters)
        return Response(
            {"counts": [{"filter": f.describe(), "count": c} for f, c in zip(filters, counts, strict=True)]}
        )


class InboxChangesView(InboxView):
    @extend_schema(
        tags=["inbox"],
        summary="Every message created or changed after a cursor (oldest change first)",
        parameters=[
            OpenApiParameter(
                "after",
                {"type": "integer", "minimum": 0},
                description="A cursor (`seq`) from a frame or a message; omit it to get the current cursor.",
            ),
            OpenApiParameter(
                "limit",
                {"type": "integer", "minimum": 1, "maximum": 500},
                description="Page size, 1-500 (default 100).",
            ),
        ],
        responses={200: InboxChangesSerializer, 400: OpenApiResponse(), 401: _UNAUTHORIZED},
    )
    def get(self, request: Request) -> Response:
        try:
            raw_after = request.query_params.get("after")
            after = None if raw_after is None else int(raw_after)
            limit = int(request.query_params.get("limit", "100"))
        except ValueError:
            raise ApiError("`after` and `limit` must be integers.", code="validation_error") from None
        if (after is not None and after < 0) or not 1 <= limit <= 500:
            raise ApiError("`after` must be >= 0 and `limit` 1-500.", code="validation_error")
        principal = request_inbox_principal(request)
        if after is None:  # where to start: the current cursor, nothing to replay
            changes = InboxChanges(messages=[], cursor=inbox_seq_next(), has_more=False)
        else:
            changes = inbox_changes_after(subscriber=principal, after=after, limit=limit)
        return Response(
            {
                "data": [inbox_message_data(m) for m in changes.messages],
                "cursor": changes.cursor,
                "has_more": changes.has_more,
                "overlap": SYNC_OVERLAP_US,
                "counts": inbox_counts(subscriber_ids=[principal.subscriber_pk])[principal.subscriber_pk],
            }
        )


class InboxMessageMarkView(InboxView):
    mark_action: str = ""

    @extend_schema(
        tags=["inbox"],
        summary="Mark one message (read, unread, seen, archive, unarchive, unsnooze)",
        request=None,
        responses={200: InboxMessageSerializer, 401: _UNAUTHORIZED, 404: _NOT_FOUND},
    )
    def post(self, request: Request, message_id: int) -> Response:
        message = inbox_message_mark(
            subscriber=request_inbox_principal(request), message_id=message_id, action=InboxAction(self.mark_action)
        )
        return Response(inbox_message_data(message))


class InboxMessageSnoozeView(InboxView):
    @extend_schema(
        tags=["inbox"],
        summary="Snooze a message until a time",
        request=InboxSnoozeSerializer,
        responses={200: InboxMessageSerializer, 401: _UNAUTHORIZED, 404: _NOT_FOUND, 422: OpenApiResponse()},
    )
    def post(self, request: Request, message_id: int) -> Response:
        body = InboxSnoozeSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        message = inbox_message_snooze(
            subscriber=request_inbox_principal(request), message_id=message_id, until=body.validated_data["until"]
        )
        return Response(inbox_message_data(message))


class InboxMessageActionCompleteView(InboxView):
    @extend_schema(
        tags=["inbox"],
        summary="Mark an action button completed (the message becomes read)",
        request=None,
        responses={200: InboxMessageSerializer, 401: _UNAUTHORIZED, 404: _NOT_FOUND},
    )
    def post(self, request: Request, message_id: int, action_id: str) -> Response:
        message = inbox_message_action_complete(
            subscriber=request_inbox_principal(request), message_id=message_id, action_id=action_id
        )
        return Response(inbox_message_data(message))


class InboxMessageDetailView(InboxView):
    @extend_schema(
        tags=["inbox"],
        summary="Delete a message (its content is erased)",
        request=None,
        responses={204: None, 401: _UNAUTHORIZED, 404: _NOT_FOUND},
    )
    def delete(self, request: Request, message_id: int) -> Response:
        inbox_message_delete(subscriber=request_inbox_principal(request), message_id=message_id)
        return Response(status=status.HTTP_204_NO_CONTENT)


class InboxMarkAllView(InboxView):
    mark_all = staticmethod(inbox_mark_all_read)

    @extend_schema(
        tags=["inbox"],
        summary="Mark all of the subscriber's messages (optionally of some categories / tags)",
        request=InboxBulkRequestSerializer,
        responses={200: InboxBulkResultSerializer, 401: _UNAUTHORIZED},
    )
    def post(self, request: Request) -> Response:
        body = InboxBulkRequestSerializer(data=request.data or {})
        body.is_valid(raise_exception=True)
        return Response(
            {"updated": self.mark_all(subscriber=request_inbox_principal(request), filter=body.to_filter())}
        )


class InboxReadAllView(InboxMarkAllView):
    mark_all = staticmethod(inbox_mark_all_read)


class InboxSeenAllView(InboxMarkAllView):
    mark_all = staticmethod(inbox_mark_all_seen)


class InboxArchiveAllView(InboxMarkAllView):
    mark_all = staticmethod(inbox_archive_all)


class InboxPreferencesView(InboxView):
    @extend_schema(
        tags=["inbox"],
        summary="The subscriber's notification preferences (for the widget's preferences view)",
        responses={200: PreferencesStateSerializer, 401: _UNAUTHORIZED},
    )
    def get(self, request: Request) -> Response:
        subscriber = inbox_subscriber(principal=request_inbox_principal(request))
        return Response(subscriber_preferences(subscriber=subscriber))

    @extend_schema(
        tags=["inbox"],
        summary="Change the subscriber's preferences",
        request=PreferencesUpdateSerializer,
        responses={200: PreferencesStateSerializer, 400: OpenApiResponse(), 401: _UNAUTHORIZED, 422: OpenApiResponse()},
    )
    def patch(self, request: Request) -> Response:
        body = PreferencesUpdateSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        subscriber = inbox_subscriber(principal=request_inbox_principal(request))
        preferences_update(
            subscriber=subscriber,
            channels=body.validated_data.get("channels"),
            categories=body.validated_data.get("categories"),
            source=PreferenceChange.Source.INBOX,  # the history says the widget did it
        )
        return Response(subscriber_preferences(subscriber=subscriber))
