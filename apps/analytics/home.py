"""The console's home page (``/admin/``): the admin's index with the system at a glance above the
app list. Mounted by ``config/urls.py`` through ``admin.site.admin_view`` (staff login), it hands
the charts to ``admin.site.index`` (templates/admin/index.html draws them)."""

from __future__ import annotations

from django.contrib import admin
from django.http import HttpRequest, HttpResponse
from django.utils import timezone
from django.utils.http import urlencode

from apps.analytics.dashboard import DEFAULT_PERIOD, PERIODS, dashboard
from apps.tenancy.models import Environment


def home_page(request: HttpRequest) -> HttpResponse:
    environments = list(Environment.objects.select_related("project").order_by("pk"))
    chosen = request.GET.get("environment", "")
    environment = next((e for e in environments if str(e.pk) == chosen), None)
    notes: list[str] = []
    if chosen and environment is None:
        notes.append("That environment does not exist; showing the first one.")
    environment = environment or (environments[0] if environments else None)
    period = request.GET.get("period", DEFAULT_PERIOD)
    if period not in PERIODS:
        choices = ", ".join(label for label, _ in PERIODS.values())
        notes.append(f"Choose a period of {choices}; showing {PERIODS[DEFAULT_PERIOD][0]}.")
        period = DEFAULT_PERIOD
    board = None
    if environment is not None:
        board = dashboard(environment=environment, period=period, now=timezone.now())
    env_query = {"environment": str(environment.pk)} if environment is not None and len(environments) > 1 else {}
    context = {
        "dashboard": board,
        "dashboard_environment": environment,
        "dashboard_environments": environments,
        "dashboard_notes": notes,
        "dashboard_periods": [
            {"value": value, "label": label, "url": f"?{urlencode({**env_query, 'period': value})}"}
            for value, (label, _) in PERIODS.items()
        ],
    }
    return admin.site.index(request, extra_context=context)
