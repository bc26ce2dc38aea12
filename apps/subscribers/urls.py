"""Subscriber and topic routes, mounted under /api/v1/. Ids may hold '@', '.', ':' (not '/')."""

from django.urls import path

from apps.subscribers import api

urlpatterns = [
    path("subscribers", api.SubscriberListView.as_view(), name="subscriber-list"),
    # Before the detail route: a subscriber whose id is literally "bulk" is not addressable by path.
    path("subscribers/bulk", api.SubscriberBulkView.as_view(), name="subscriber-bulk"),
    path("subscribers/<str:subscriber_id>", api.SubscriberDetailView.as_view(), name="subscriber-detail"),
    path("subscribers/<str:subscriber_id>/devices", api.DeviceListView.as_view(), name="subscriber-devices"),
    path(
        "subscribers/<str:subscriber_id>/devices/<int:device_id>",
        api.DeviceDetailView.as_view(),
        name="subscriber-device-detail",
    ),
    path("topics", api.TopicListView.as_view(), name="topic-list"),
    path("topics/<str:key>", api.TopicDetailView.as_view(), name="topic-detail"),
    path("topics/<str:key>/subscribers", api.TopicSubscribersView.as_view(), name="topic-subscribers"),
    path(
        "topics/<str:key>/subscribers/remove",
        api.TopicSubscribersRemoveView.as_view(),
        name="topic-subscribers-remove",
    ),
]
