"""Analytics routes, mounted under /api/v1/ (secret key)."""

from django.urls import path

from apps.analytics import api

urlpatterns = [
    path("analytics", api.AnalyticsView.as_view(), name="analytics"),
]
