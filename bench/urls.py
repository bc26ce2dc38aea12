"""Clarion's URLs plus ``POST /bench/bare``, the baseline endpoint of the ingest benchmark."""

from django.urls import path

from bench.views import BareView
from config import urls as clarion_urls

handler404 = clarion_urls.handler404
handler500 = clarion_urls.handler500

urlpatterns = [path("bench/bare", BareView.as_view(), name="bench-bare"), *clarion_urls.urlpatterns]
