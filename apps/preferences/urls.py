"""Category and preference routes, mounted under /api/v1/.

``subscribers/<id>/preferences`` is not shadowed by apps.subscribers.urls: its ``<str:...>``
segments never match a '/'.
"""

from django.urls import path

from apps.preferences import api

urlpatterns = [
    path("categories", api.CategoryListView.as_view(), name="category-list"),
    path("categories/<str:key>", api.CategoryDetailView.as_view(), name="category-detail"),
    path(
        "subscribers/<str:subscriber_id>/preferences",
        api.SubscriberPreferencesView.as_view(),
        name="subscriber-preferences",
    ),
    path("preferences/bulk", api.PreferencesBulkView.as_view(), name="preferences-bulk"),
    path(
        "subscribers/<str:subscriber_id>/preferences/history",
        api.SubscriberPreferenceHistoryView.as_view(),
        name="subscriber-preference-history",
    ),
    path(
        "subscribers/<str:subscriber_id>/preference-links",
        api.SubscriberPreferenceLinksView.as_view(),
        name="subscriber-preference-links",
    ),
    path(
        "subscribers/<str:subscriber_id>/quiet-hours",
        api.SubscriberQuietHoursView.as_view(),
        name="subscriber-quiet-hours",
    ),
]
