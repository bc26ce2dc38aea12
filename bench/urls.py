"""Clarion's URLs plus the ingest benchmark's baselines (bench.views): ``POST /bench/trigger-baseline``
and ``POST /bench/bulk-baseline``."""

from django.urls import path

from bench.views import BaselineView, BulkBaselineView
from config import urls as clarion_urls

handler404 = clarion_urls.handler404
handler500 = clarion_urls.handler500

urlpatterns = [
    path("bench/trigger-baseline", BaselineView.as_view(), name="bench-trigger-baseline"),
    path("bench/bulk-baseline", BulkBaselineView.as_view(), name="bench-bulk-baseline"),
    *clarion_urls.urlpatterns,
]
