from django.urls import path

from apps.events import api, broadcast_api

urlpatterns = [
    path("events/trigger", api.TriggerView.as_view(), name="event-trigger"),
    path("events/bulk", api.BulkTriggerView.as_view(), name="event-bulk"),
    path("events/broadcast", broadcast_api.BroadcastView.as_view(), name="event-broadcast"),
    path("events/cancel", api.CancelByKeyView.as_view(), name="event-cancel-by-key"),
    path("events/<str:transaction_id>", api.EventDetailView.as_view(), name="event-detail"),
]
