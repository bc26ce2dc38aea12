"""Inbox REST API (``/api/v1/inbox/...``): a session endpoint and subscriber-token endpoints.

Auth is set explicitly on every view: the session endpoint is public (it checks a ``pk_`` key
and an HMAC proof itself), the rest take only inbox session tokens, never ``sk_`` keys.
"""

from __future__ import annotations

from typing import Any

from django.db.models import QuerySet
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import generics, permissions, serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from apps.inbox.auth import InboxTokenAuthentication, IsInboxSubscriber, request_inbox_principal
from apps.inbox.models import InboxMessage
from apps.inbox.selectors import inbox_counts, inbox_message_data, inbox_messages_for
from apps.inbox.services import (
    InboxAction,
    inbox_mark_all_read,
    inbox_mark_all_seen,
    inbox_message_mark,
    inbox_session_open,
)

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
    websocket_url = serializers.CharField(help_text="Path of the live websocket, token included.")


class InboxMessageSerializer(serializers.Serializer):
    """Documents the one inbox message shape; the data itself comes from ``inbox_message_data``."""

    id = serializers.IntegerField()
    title = serializers.CharField()
    body = serializers.CharField()
    action_url = serializers.CharField()
    avatar = serializers.CharField()
    workflow = serializers.CharField()
    category = serializers.CharField()
    data = serializers.JSONField()
    created_at = serializers.DateTimeField()
    seen_at = serializers.DateTimeField(allow_null=True)
    read_at = serializers.DateTimeField(allow_null=True)
    archived_at = serializers.DateTimeField(allow_null=True)
    is_read = serializers.BooleanField()
    is_seen = serializers.BooleanField()
    is_archived = serializers.BooleanField()

    def to_representation(self, instance: InboxMessage) -> dict[str, Any]:
        return inbox_message_data(instance)


class InboxMessageFilterSerializer(serializers.Serializer):
    read = serializers.BooleanField(required=False, allow_null=True, default=None, help_text="Only read / unread.")
    archived = serializers.BooleanField(
        required=False, default=False, help_text="Archived messages instead of the inbox."
    )
    category = serializers.CharField(required=False, max_length=100, help_text="Only this category key.")


class InboxCountsSerializer(serializers.Serializer):
    unread = serializers.IntegerField()
    unseen = serializers.IntegerField()
    total = serializers.IntegerField(help_text="Messages not archived.")


class InboxBulkResultSerializer(serializers.Serializer):
    updated = serializers.IntegerField()


_UNAUTHORIZED = OpenApiResponse(description="Missing, invalid or expired inbox session token (error envelope).")
_NOT_FOUND = OpenApiResponse(description="No such message for this subscriber (error envelope).")


# --- Views --------------------------------------------------------------------------------------


class InboxSessionView(APIView):
    authentication_classes: list = []
    permission_classes = [permissions.AllowAny]

    @extend_schema(
        tags=["inbox"],
        summary="Open an inbox session for a subscriber",
        auth=[],
        request=InboxSessionOpenSerializer,
        responses={
            201: InboxSessionSerializer,
            400: OpenApiResponse(description="Missing or malformed fields (error envelope)."),
            401: OpenApiResponse(description="Invalid publishable key or subscriber hash (error envelope)."),
        },
    )
    def post(self, request: Request) -> Response:
        body = InboxSessionOpenSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        session = inbox_session_open(**body.validated_data)
        data = {
            "token": session.token,
            "expires_at": session.expires_at,
            "subscriber_id": session.subscriber.subscriber_id,
            "websocket_url": session.websocket_url,
        }
        return Response(InboxSessionSerializer(data).data, status=status.HTTP_201_CREATED)


class InboxView(APIView):
    authentication_classes = [InboxTokenAuthentication]
    permission_classes = [IsInboxSubscriber]


class InboxMessageListView(generics.ListAPIView):
    authentication_classes = [InboxTokenAuthentication]
    permission_classes = [IsInboxSubscriber]
    serializer_class = InboxMessageSerializer

    def get_queryset(self) -> QuerySet[InboxMessage]:
        principal = request_inbox_principal(self.request)
        filters = InboxMessageFilterSerializer(data=self.request.query_params)
        filters.is_valid(raise_exception=True)
        return inbox_messages_for(subscriber=principal, **filters.validated_data)

    @extend_schema(
        tags=["inbox"],
        summary="List the subscriber's messages, newest first",
        parameters=[InboxMessageFilterSerializer],
        responses={200: InboxMessageSerializer(many=True), 401: _UNAUTHORIZED},
    )
    def get(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return super().get(request, *args, **kwargs)


class InboxCountsView(InboxView):
    @extend_schema(
        tags=["inbox"],
        summary="Unread, unseen and total counts",
        responses={200: InboxCountsSerializer, 401: _UNAUTHORIZED},
    )
    def get(self, request: Request) -> Response:
        principal = request_inbox_principal(request)
        return Response(inbox_counts(subscriber_ids=[principal.subscriber_pk])[principal.subscriber_pk])


class InboxMessageMarkView(InboxView):
    mark_action: str = ""

    @extend_schema(
        tags=["inbox"],
        summary="Mark one message (read, unread, seen, archive, unarchive)",
        request=None,
        responses={200: InboxMessageSerializer, 401: _UNAUTHORIZED, 404: _NOT_FOUND},
    )
    def post(self, request: Request, message_id: int) -> Response:
        message = inbox_message_mark(
            subscriber=request_inbox_principal(request), message_id=message_id, action=InboxAction(self.mark_action)
        )
        return Response(inbox_message_data(message))


class InboxMarkAllView(InboxView):
    mark_all = staticmethod(inbox_mark_all_read)

    @extend_schema(
        tags=["inbox"],
        summary="Mark all of the subscriber's messages",
        request=None,
        responses={200: InboxBulkResultSerializer, 401: _UNAUTHORIZED},
    )
    def post(self, request: Request) -> Response:
        return Response({"updated": self.mark_all(subscriber=request_inbox_principal(request))})


class InboxReadAllView(InboxMarkAllView):
    mark_all = staticmethod(inbox_mark_all_read)


class InboxSeenAllView(InboxMarkAllView):
    mark_all = staticmethod(inbox_mark_all_seen)
