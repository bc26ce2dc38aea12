"""``POST /api/v1/events/broadcast``: trigger a workflow for every subscriber of the environment."""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from apps.events.api import ActorField, TriggerResponseSerializer, TriggerSerializer
from apps.events.broadcasts import BroadcastRequest, event_broadcast
from apps.events.idempotency import idempotent
from apps.tenancy.auth import request_environment


class BroadcastSerializer(serializers.Serializer):
    rejects_unknown_fields = True  # the OpenAPI schema says so (apps.core.openapi)

    workflow = serializers.SlugField(max_length=100)
    payload = serializers.DictField(required=False, default=dict)
    actor = ActorField(
        required=False, allow_null=True, help_text="Who caused the event; like a topic, never notified itself."
    )
    transaction_id = serializers.CharField(max_length=200, required=False, allow_blank=False)
    cancellation_key = serializers.CharField(
        max_length=200,
        required=False,
        allow_blank=False,
        help_text="Cancel the broadcast later with POST /events/cancel {cancellation_key}.",
    )

    # The same payload size limit and actor rule as a trigger.
    validate_payload = TriggerSerializer.validate_payload
    validate_actor = TriggerSerializer.validate_actor

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        # A broadcast has no "to": a body carrying one (or any unknown field) is a mistake, not a hint.
        unknown = sorted(set(self.initial_data) - set(self.fields)) if isinstance(self.initial_data, dict) else []
        if unknown:
            raise serializers.ValidationError({name: ["Unknown field for a broadcast."] for name in unknown})
        return attrs

    def to_request(self) -> BroadcastRequest:
        data: dict[str, Any] = self.validated_data
        return BroadcastRequest(
            workflow=data["workflow"],
            payload=data.get("payload") or {},
            actor=data.get("actor"),
            transaction_id=data.get("transaction_id"),
            cancellation_key=data.get("cancellation_key", ""),
        )


class BroadcastView(APIView):
    @extend_schema(
        request=BroadcastSerializer,
        responses={
            202: TriggerResponseSerializer,
            409: OpenApiResponse(description="`duplicate_transaction`: this transaction_id was accepted before."),
        },
        parameters=[OpenApiParameter("Idempotency-Key", str, OpenApiParameter.HEADER, required=False)],
        summary="Trigger a workflow for every subscriber of the environment",
        description="Streamed to the environment's subscribers chunk by chunk, like a topic (the actor is not "
        "notified). Cancel it with `DELETE /events/{transaction_id}` or by its `cancellation_key`; its trace is "
        "`GET /events/{transaction_id}`.",
    )
    @idempotent
    def post(self, request: Request) -> Response:
        serializer = BroadcastSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        event = event_broadcast(environment=request_environment(request), request=serializer.to_request())
        return Response({"transaction_id": event.transaction_id, "status": "accepted"}, status=status.HTTP_202_ACCEPTED)
