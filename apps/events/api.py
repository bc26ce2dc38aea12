from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from typing import Any

from django.conf import settings
from drf_spectacular.utils import (
    OpenApiParameter,
    OpenApiResponse,
    extend_schema,
    extend_schema_field,
    inline_serializer,
)
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from apps.core.errors import Unprocessable
from apps.core.parsers import MAX_DEPTH, json_problem
from apps.core.schema import with_schema
from apps.events import selectors, services
from apps.events.idempotency import idempotent
from apps.subscribers.api import SubscriberInputSerializer
from apps.tenancy.auth import request_environment

MAX_RECIPIENTS = 1000
MAX_BULK_EVENTS = 1000


@extend_schema_field(
    {
        "description": "A subscriber id, a subscriber object (upserted) or a topic.",
        "anyOf": [
            {"type": "string", "minLength": 1, "maxLength": 200},
            {
                "type": "object",
                "required": ["topic"],
                "properties": {"topic": {"type": "string", "minLength": 1}},
                "additionalProperties": False,
            },
            {"$ref": "#/components/schemas/SubscriberInputRequest"},
        ],
    }
)
class RecipientField(serializers.JSONField):
    """A subscriber id, an inline subscriber object, or ``{"topic": key}``."""

    def to_internal_value(self, data: Any) -> Any:
        if isinstance(data, str):
            if not data or len(data) > 200:
                raise serializers.ValidationError("a subscriber id must be 1 to 200 characters")
            return data
        if isinstance(data, dict):
            if "topic" in data:
                if set(data) != {"topic"} or not isinstance(data["topic"], str) or not data["topic"]:
                    raise serializers.ValidationError('a topic recipient is exactly {"topic": "<key>"}')
                return {"topic": data["topic"]}
            inline = SubscriberInputSerializer(data=data)
            if not inline.is_valid():
                raise serializers.ValidationError(inline.errors)
            return {k: v for k, v in inline.validated_data.items() if v is not None}
        raise serializers.ValidationError("expected a subscriber id, a subscriber object or {'topic': key}")


@extend_schema_field(
    {
        "description": "Who caused the event: a subscriber id or a subscriber object (upserted); never notified "
        "through a topic.",
        "anyOf": [
            {"type": "string", "minLength": 1, "maxLength": 200},
            {"$ref": "#/components/schemas/SubscriberInputRequest"},
        ],
        "nullable": True,
    }
)
class ActorField(RecipientField):
    pass


class TriggerSerializer(serializers.Serializer):
    workflow = serializers.SlugField(max_length=100)
    to = serializers.ListField(child=RecipientField(), min_length=1, max_length=MAX_RECIPIENTS)
    payload = serializers.DictField(required=False, default=dict)
    actor = ActorField(required=False, allow_null=True)
    transaction_id = serializers.CharField(max_length=200, required=False, allow_blank=False)
    cancellation_key = serializers.CharField(
        max_length=200,
        required=False,
        allow_blank=False,
        help_text="Cancel this event's waiting runs later with POST /events/cancel {cancellation_key}.",
    )

    def validate_payload(self, value: dict[str, Any]) -> dict[str, Any]:
        size = len(json.dumps(value, separators=(",", ":"), default=str).encode())
        limit = settings.CLARION["MAX_PAYLOAD_BYTES"]
        if size > limit:
            raise Unprocessable(
                f"The payload is {size} bytes; the limit is {limit} bytes (512 KB).",
                code="payload_too_large",
                details={"size": size, "limit": limit},
            )
        return value

    def validate_actor(self, value: Any) -> Any:
        if isinstance(value, dict) and "topic" in value:
            raise serializers.ValidationError("the actor is a subscriber, not a topic")
        return value

    def to_request(self) -> services.TriggerRequest:
        return _trigger_request(self.validated_data)


def _trigger_request(data: Any) -> services.TriggerRequest:
    return services.TriggerRequest(
        workflow=data["workflow"],
        to=data["to"],
        payload=data.get("payload") or {},
        actor=data.get("actor"),
        transaction_id=data.get("transaction_id"),
        cancellation_key=data.get("cancellation_key", ""),
    )


_validators = threading.local()


def validate_trigger(data: Any) -> services.TriggerRequest:
    """``TriggerSerializer`` validation of one trigger body, raising ``ValidationError`` with the
    same details as ``is_valid(raise_exception=True)`` (or ``Unprocessable`` for a payload too large).

    One serializer instance per thread runs every validation: DRF builds a serializer's fields
    (a deep copy of the declared ones) once per instance, which cost more than the validation
    itself, 1,000 times over for a bulk request. Validation keeps no state on the instance."""
    serializer = getattr(_validators, "trigger", None)
    if serializer is None:
        serializer = _validators.trigger = TriggerSerializer()
    return _trigger_request(serializer.run_validation(data))


class TriggerResponseSerializer(serializers.Serializer):
    transaction_id = serializers.CharField()
    status = serializers.CharField()


class BulkTriggerSerializer(serializers.Serializer):
    events = with_schema(
        serializers.ListField,
        {
            "type": "array",
            "items": {"$ref": "#/components/schemas/TriggerRequest"},
            "minItems": 1,
            "maxItems": MAX_BULK_EVENTS,
        },
    )(child=serializers.DictField(), min_length=1, max_length=MAX_BULK_EVENTS)

    def validate_events(self, value: list[dict[str, Any]]) -> list[services.TriggerRequest | services.BulkItemResult]:
        """Trigger requests in order; an item holding text no database can store (or nested too
        deep) becomes its error result here, and the others are still accepted."""
        requests: list[services.TriggerRequest | services.BulkItemResult] = []
        errors: dict[str, Any] = {}
        for index, item in enumerate(value):
            # Levels 1 and 2 are the body and the events list (StrictJSONParser left the items to us).
            problem = json_problem(item, path=f"events[{index}]", max_depth=MAX_DEPTH - 2)
            if problem:
                violations = _schema_violations(item)
                if violations is not None:  # refused with the request, as it would be without its NUL
                    errors[str(index)] = violations
                else:
                    requests.append(services.BulkItemResult(None, "error", problem.as_dict()))
                continue
            try:
                requests.append(validate_trigger(item))
            except Unprocessable as exc:
                errors[str(index)] = {"payload": [str(exc.detail)]}
            except serializers.ValidationError as exc:
                errors[str(index)] = exc.detail
        if errors:
            raise serializers.ValidationError(errors)
        return requests


# What DRF says of text no database can store: not a schema violation (the item's own error says it).
_UNSTORABLE_TEXT_CODES = {"null_characters_not_allowed", "surrogate_characters_not_allowed"}


def _codes(detail: Any) -> Iterator[str]:
    if isinstance(detail, dict):
        for value in detail.values():
            yield from _codes(value)
    elif isinstance(detail, list):
        for value in detail:
            yield from _codes(value)
    else:
        yield str(getattr(detail, "code", ""))


def _schema_violations(item: dict[str, Any]) -> Any | None:
    """The validation errors of a bulk item that holds unstorable text, if it also breaks the schema
    otherwise (a bad workflow key, a missing `to`); None when its text is its only problem."""
    if json_problem(item, max_depth=MAX_DEPTH - 2, strings=False):
        return None  # nested too deep: not walked again
    try:
        validate_trigger(item)
    except serializers.ValidationError as exc:
        if any(code not in _UNSTORABLE_TEXT_CODES for code in _codes(exc.detail)):
            return exc.detail
    except Unprocessable:
        pass
    return None


class BulkItemSerializer(serializers.Serializer):
    transaction_id = serializers.CharField(allow_null=True)
    status = serializers.ChoiceField(choices=["accepted", "duplicate", "error"])
    error = serializers.DictField(allow_null=True)


class TriggerView(APIView):
    @extend_schema(
        request=TriggerSerializer,
        responses={
            202: TriggerResponseSerializer,
            409: OpenApiResponse(description="`duplicate_transaction`: this transaction_id was accepted before."),
        },
        parameters=[OpenApiParameter("Idempotency-Key", str, OpenApiParameter.HEADER, required=False)],
        summary="Trigger a workflow for recipients",
    )
    @idempotent
    def post(self, request: Request) -> Response:
        trigger = validate_trigger(request.data)
        event = services.event_trigger(environment=request_environment(request), request=trigger)
        return Response({"transaction_id": event.transaction_id, "status": "accepted"}, status=status.HTTP_202_ACCEPTED)


class BulkTriggerView(APIView):
    json_items_key = "events"  # BulkTriggerSerializer checks each item: a bad one alone is an error

    @extend_schema(
        request=BulkTriggerSerializer,
        responses={202: inline_serializer("BulkTriggerResponse", {"data": BulkItemSerializer(many=True)})},
        parameters=[OpenApiParameter("Idempotency-Key", str, OpenApiParameter.HEADER, required=False)],
        summary="Trigger up to 1,000 events at once",
    )
    @idempotent
    def post(self, request: Request) -> Response:
        serializer = BulkTriggerSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        items = serializer.validated_data["events"]
        accepted = iter(
            services.event_trigger_bulk(
                environment=request_environment(request),
                requests=[item for item in items if isinstance(item, services.TriggerRequest)],
            )
        )
        results = [item if isinstance(item, services.BulkItemResult) else next(accepted) for item in items]
        data = [{"transaction_id": r.transaction_id, "status": r.status, "error": r.error} for r in results]
        return Response({"data": data}, status=status.HTTP_202_ACCEPTED)


class EventDetailView(APIView):
    @extend_schema(
        responses={200: dict},
        parameters=[OpenApiParameter("subscriber_id", str, description="Only this recipient's run")],
        summary="The trace of an event: runs, step decisions with reasons, messages",
    )
    def get(self, request: Request, transaction_id: str) -> Response:
        event = selectors.event_get(environment=request_environment(request), transaction_id=transaction_id)
        return Response(selectors.event_trace(event=event, subscriber_id=request.query_params.get("subscriber_id")))

    @extend_schema(request=None, responses={200: dict}, summary="Cancel runs of the event that are still waiting")
    def delete(self, request: Request, transaction_id: str) -> Response:
        event = selectors.event_get(environment=request_environment(request), transaction_id=transaction_id)
        cancelled = services.event_cancel(event=event)
        return Response({"transaction_id": transaction_id, "cancelled_runs": cancelled})


class CancelByKeySerializer(serializers.Serializer):
    cancellation_key = serializers.CharField(max_length=200)
    workflow = serializers.SlugField(max_length=100, required=False, help_text="Only events of this workflow")


class CancelByKeyView(APIView):
    @extend_schema(
        request=CancelByKeySerializer,
        responses={200: dict},
        summary="Cancel the waiting runs of every event triggered with a cancellation key",
    )
    def post(self, request: Request) -> Response:
        serializer = CancelByKeySerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        events, runs = services.events_cancel_by_key(
            environment=request_environment(request),
            cancellation_key=serializer.validated_data["cancellation_key"],
            workflow_key=serializer.validated_data.get("workflow"),
        )
        return Response(
            {
                "cancellation_key": serializer.validated_data["cancellation_key"],
                "events": events,
                "cancelled_runs": runs,
            }
        )
