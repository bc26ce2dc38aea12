from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerSplitView

from apps.analytics import console, home

api_v1 = [
    path("", include("apps.events.urls")),
    path("", include("apps.subscribers.urls")),
    path("", include("apps.workflows.urls")),
    path("", include("apps.templates.urls")),
    path("", include("apps.preferences.urls")),
    path("", include("apps.delivery.urls")),
    path("inbox/", include("apps.inbox.urls")),
    path("", include("apps.analytics.urls")),
    path("", include("apps.analytics.report_urls")),
]

urlpatterns = [
    # /healthz, /readyz, /metrics (answered by apps.observability.middleware before host checks).
    path("", include("apps.observability.urls")),
    # The savings report's console pages (staff only, inside the admin): apps.analytics.console
    path("admin/analytics/savings/", admin.site.admin_view(console.savings_page), name="analytics-savings"),
    path(
        "admin/analytics/savings/runs/", admin.site.admin_view(console.savings_runs_page), name="analytics-savings-runs"
    ),
    # The console's home: the admin's index with the system at a glance (apps.analytics.home)
    path("admin/", admin.site.admin_view(home.home_page), name="console-home"),
    path("admin/", admin.site.urls),
    path("api/v1/", include(api_v1)),
    path("api/schema/", SpectacularAPIView.as_view(authentication_classes=[], permission_classes=[]), name="schema"),
    path(
        "api/docs/",
        # The split view serves Swagger UI's start-up script from this URL (?script): no inline script.
        SpectacularSwaggerSplitView.as_view(url_name="schema", authentication_classes=[], permission_classes=[]),
        name="api-docs",
    ),
    path("", include("apps.core.pages")),
    path("", include("apps.demo.pages")),
    path("", include("apps.preferences.pages")),
    # The email open pixel and click redirect (/t/o/<token>, /t/c/<token>): public, signed tokens.
    path("", include("apps.delivery.tracking_views")),
    path("", include("apps.core.urls")),
]

handler404 = "apps.core.errors.handler404"
handler500 = "apps.core.errors.handler500"
