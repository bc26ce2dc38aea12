"""Report routes, mounted under /api/v1/ (secret key)."""

from django.urls import path

from apps.analytics import report_api

urlpatterns = [
    path("reports/savings", report_api.SavingsReportView.as_view(), name="reports-savings"),
    path("reports/savings/runs", report_api.SavingsRunsView.as_view(), name="reports-savings-runs"),
]
