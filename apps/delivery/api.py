"""Integrations over the server API. Credentials go in and never come out."""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import generics, serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from apps.core.channels import CHANNEL_CHOICES, CHANNELS
from apps.core.errors import Unprocessable
from apps.core.schema import with_schema
from apps.delivery import selectors, services
from apps.delivery.models import DeliveryAttempt, Integration, Message, MessageEvent
from apps.delivery.providers.base import (
    destination_errors,
    get_provider,
    integration_settings_errors,
    providers_by_channel,
)
from apps.delivery.webhooks.urls import webhook_urls
from apps.tenancy.auth import request_environment

DELIVERY_CHANNELS = [c for c in CHANNELS if c != "in_app"]


class IntegrationInputSerializer(serializers.Serializer):
    channel = with_schema(serializers.ChoiceField, {"type": "string", "enum": DELIVERY_CHANNELS})(
        choices=CHANNEL_CHOICES, help_text="Any channel but in_app."
    )
    provider = serializers.CharField(max_length=50, help_text="See docs/providers.md for each channel's providers.")
    name = serializers.CharField(max_length=200, required=False, allow_blank=True)
    credentials = serializers.DictField(
        required=False,
        help_text="Write-only. On update, keys given replace those stored; a key set to null is removed.",
    )
    settings = serializers.DictField(
        required=False,
        help_text="Sender settings, e.g. from_email, from_number; timeout (seconds per provider call); "
        "deduplicates (http SMS and webhook: the receiver drops a repeated Idempotency-Key).",
    )
    priority = serializers.IntegerField(min_value=0, max_value=10_000, required=False)
    active = serializers.BooleanField(required=False)
    retries = serializers.IntegerField(min_value=0, max_value=10, required=False)
    rate_limit = serializers.FloatField(min_value=0.001, max_value=100_000, required=False, allow_null=True)

    def validate_channel(self, value: str) -> str:
        if value not in DELIVERY_CHANNELS:
            raise serializers.ValidationError("In-app messages need no integration.")
        return value

    def validate_settings(self, value: dict[str, Any]) -> dict[str, Any]:
        errors = integration_settings_errors(value)
        if errors:
            raise serializers.ValidationError(errors)
        return value

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        instance: Integration | None = self.context.get("instance")
        channel = attrs.get("channel", instance.channel if instance else None)
        provider_name = attrs.get("provider", instance.provider if instance else None)
        provider = get_provider(channel, provider_name) if channel and provider_name else None
        if provider is None:
            known = providers_by_channel().get(channel or "", [])
            raise serializers.ValidationError(
                {"provider": [f"Unknown {channel} provider '{provider_name}'. Known: {', '.join(known)}."]}
            )
        credentials = dict(instance.credentials) if instance else {}
        for key, value in (attrs.get("credentials") or {}).items():
            if value is None:
                credentials.pop(key, None)
            else:
                credentials[key] = value
        missing = [key for key in provider.required_credentials if not credentials.get(key)]
        if missing:
            raise serializers.ValidationError({"credentials": [f"Missing: {', '.join(missing)}."]})
        if "credentials" in attrs or instance is None:
            refused = destination_errors(provider, credentials)
            if refused:
                raise Unprocessable(
                    " ".join(f"credentials.{key}: {why}." for key, why in refused.items()),
                    code="internal_destination",
                    details={"credentials": {key: [why] for key, why in refused.items()}},
                )
            attrs["credentials"] = credentials
        return attrs


class IntegrationSerializer(serializers.ModelSerializer):
    """An integration as the API returns it: credential names only, never their values."""

    credentials_set = serializers.SerializerMethodField(help_text="Names of the credentials stored.")
    webhook_urls = serializers.SerializerMethodField(help_text="Status webhook URLs to register with the provider.")
    circuit = serializers.SerializerMethodField()

    class Meta:
        model = Integration
        fields = [
            "id",
            "channel",
            "provider",
            "name",
            "settings",
            "priority",
            "active",
            "retries",
            "rate_limit",
            "credentials_set",
            "webhook_urls",
            "circuit",
            "created_at",
            "updated_at",
        ]
        read_only_fields = fields

    def get_credentials_set(self, obj: Integration) -> list[str]:
        return sorted(obj.credentials)

    def get_webhook_urls(self, obj: Integration) -> dict[str, str]:
        return webhook_urls(obj)

    def get_circuit(self, obj: Integration) -> dict[str, Any]:
        return {"failures": obj.circuit_failures, "open_until": obj.circuit_open_until}


class IntegrationListView(generics.ListAPIView):
    serializer_class = IntegrationSerializer

    def get_queryset(self) -> Any:
        return selectors.integration_list(
            environment=request_environment(self.request), channel=self.request.query_params.get("channel")
        )

    @extend_schema(
        operation_id="integrations_list",
        summary="List integrations (newest first)",
        parameters=[OpenApiParameter("channel", str, description="Only this channel's integrations.")],
    )
    def get(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return super().get(request, *args, **kwargs)

    @extend_schema(
        operation_id="integrations_create",
        summary="Add an integration",
        description="Several per channel; lower `priority` is tried first and the next one takes over when it fails.",
        request=IntegrationInputSerializer,
        responses={201: IntegrationSerializer},
    )
    def post(self, request: Request) -> Response:
        serializer = IntegrationInputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        integration = services.integration_create(environment=request_environment(request), **serializer.validated_data)
        return Response(IntegrationSerializer(integration).data, status=status.HTTP_201_CREATED)


class IntegrationDetailView(APIView):
    @extend_schema(operation_id="integrations_retrieve", responses={200: IntegrationSerializer})
    def get(self, request: Request, integration_id: int) -> Response:
        integration = selectors.integration_get(environment=request_environment(request), integration_id=integration_id)
        return Response(IntegrationSerializer(integration).data)

    @extend_schema(
        operation_id="integrations_update",
        summary="Change an integration (only the fields sent)",
        request=IntegrationInputSerializer,
        responses={200: IntegrationSerializer},
    )
    def patch(self, request: Request, integration_id: int) -> Response:
        integration = selectors.integration_get(environment=request_environment(request), integration_id=integration_id)
        serializer = IntegrationInputSerializer(data=request.data, partial=True, context={"instance": integration})
        serializer.is_valid(raise_exception=True)
        integration = services.integration_update(integration=integration, **serializer.validated_data)
        return Response(IntegrationSerializer(integration).data)

    @extend_schema(operation_id="integrations_destroy", responses={204: None})
    def delete(self, request: Request, integration_id: int) -> Response:
        integration = selectors.integration_get(environment=request_environment(request), integration_id=integration_id)
        services.integration_delete(integration=integration)
        return Response(status=status.HTTP_204_NO_CONTENT)


# --- messages -----------------------------------------------------------------------------------


class DeliveryAttemptSerializer(serializers.ModelSerializer):
    class Meta:
        model = DeliveryAttempt
        fields = [
            "provider",
            "status",
            "response_code",
            "error_kind",
            "retryable",
            "error",
            "duration_ms",
            "created_at",
        ]
        read_only_fields = fields


class MessageEventSerializer(serializers.ModelSerializer):
    class Meta:
        model = MessageEvent
        fields = ["provider", "event_type", "status", "applied", "description", "payload", "occurred_at", "received_at"]
        read_only_fields = fields


class MessageSerializer(serializers.ModelSerializer):
    subscriber_id = serializers.SerializerMethodField()
    workflow = serializers.SerializerMethodField()
    transaction_id = serializers.SerializerMethodField()
    step = serializers.CharField(source="step_id", read_only=True)

    class Meta:
        model = Message
        fields = [
            "id",
            "channel",
            "status",
            "recipient",
            "subscriber_id",
            "workflow",
            "transaction_id",
            "step",
            "subject",
            "provider",
            "provider_message_id",
            "error",
            "attempts",
            "in_doubt_count",
            "next_attempt_at",
            "created_at",
            "sent_at",
            "delivered_at",
            "opened_at",
            "clicked_at",
        ]
        read_only_fields = fields

    def get_subscriber_id(self, obj: Message) -> str | None:
        return obj.subscriber.subscriber_id if obj.subscriber is not None else None

    def get_workflow(self, obj: Message) -> str | None:
        return (obj.data or {}).get("workflow")

    def get_transaction_id(self, obj: Message) -> str | None:
        return (obj.data or {}).get("transaction_id")


class MessageDetailSerializer(MessageSerializer):
    """A message with every delivery attempt and every provider callback (raw payload included)."""

    attempts_log = DeliveryAttemptSerializer(many=True, read_only=True)
    events = MessageEventSerializer(many=True, read_only=True)

    class Meta(MessageSerializer.Meta):
        fields = [*MessageSerializer.Meta.fields, "body", "attempts_log", "events"]
        read_only_fields = fields


MESSAGE_FILTERS = ("status", "channel", "provider", "subscriber_id", "transaction_id", "workflow")


class MessageListView(generics.ListAPIView):
    serializer_class = MessageSerializer

    def get_queryset(self) -> Any:
        params = self.request.query_params
        return selectors.message_list(
            environment=request_environment(self.request), filters={name: params.get(name) for name in MESSAGE_FILTERS}
        )

    @extend_schema(
        operation_id="messages_list",
        summary="List outbound messages (newest first)",
        parameters=[
            OpenApiParameter(name, str, description=f"Only messages with this {name}.") for name in MESSAGE_FILTERS
        ],
    )
    def get(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return super().get(request, *args, **kwargs)


class MessageDetailView(APIView):
    @extend_schema(operation_id="messages_retrieve", responses={200: MessageDetailSerializer})
    def get(self, request: Request, message_id: int) -> Response:
        message = selectors.message_get(environment=request_environment(request), message_id=message_id)
        return Response(MessageDetailSerializer(message).data)
