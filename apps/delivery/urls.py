"""Delivery routes, mounted under /api/v1/: integrations and messages (secret key), provider webhooks (verified)."""

from django.urls import path

from apps.delivery import api
from apps.delivery.webhooks import anymail, twilio

urlpatterns = [
    path("integrations", api.IntegrationListView.as_view(), name="integration-list"),
    path("integrations/<int:integration_id>", api.IntegrationDetailView.as_view(), name="integration-detail"),
    path("messages", api.MessageListView.as_view(), name="message-list"),
    path("messages/<int:message_id>", api.MessageDetailView.as_view(), name="message-detail"),
    path("webhooks/email/<str:key>/tracking", anymail.email_tracking, name="delivery-webhook-email-tracking"),
    path("webhooks/twilio/<str:key>/status", twilio.status_callback, name="delivery-webhook-twilio-status"),
    path("webhooks/twilio/<str:key>/inbound", twilio.inbound, name="delivery-webhook-twilio-inbound"),
]
