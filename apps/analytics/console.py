"""The savings report in the console (the Django admin; staff only): a chart, tables, the runs behind
each lever, and a CSV export. Mounted by ``config/urls.py`` under ``/admin/analytics/`` through
``admin.site.admin_view`` (staff login, the admin's own pages around it)."""

from __future__ import annotations

import csv
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from django.contrib import admin
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils import timezone
from django.utils.http import urlencode

from apps.analytics.report_api import period
from apps.analytics.savings import (
    decode_cursor,
    drill_down_names,
    encode_cursor,
    money,
    savings_report,
    savings_runs,
)
from apps.core.errors import ApiError
from apps.tenancy.models import Environment

CHART_WIDTH = 520  # px of the longest bar (the baseline)
ROW_HEIGHT = 26
LABEL_WIDTH = 170


def _environment(request: HttpRequest) -> tuple[Environment | None, list[Environment]]:
    environments = list(Environment.objects.select_related("project").order_by("pk"))
    raw = request.GET.get("environment", "")
    chosen = next((e for e in environments if str(e.pk) == raw), None)
    return chosen or (environments[0] if environments else None), environments


def _period(request: HttpRequest) -> tuple[dict[str, str], tuple[datetime, datetime] | None, str]:
    today = timezone.now().astimezone(UTC).date()
    values = {
        "from": request.GET.get("from") or (today - timedelta(days=6)).isoformat(),
        "to": request.GET.get("to") or today.isoformat(),
    }
    try:
        return values, period(values), ""
    except ApiError as exc:
        return values, None, str(exc.detail)


def _chart(report: dict[str, Any]) -> dict[str, Any]:
    """Bars for baseline, actual, each lever and other, scaled to the longest: plain SVG numbers."""
    other = sum(item["messages"] for item in report["other"])
    other_cost = sum((Decimal(item["cost"]) for item in report["other"]), Decimal(0))
    bars = [
        ("baseline", "Baseline (CPaaS only)", report["baseline"]["messages"], report["baseline"]["cost"]),
        ("actual", "Actual sends", report["actual"]["messages"], report["actual"]["cost"]),
        *(
            ("avoided", f"Avoided: {item['lever']}", item["messages"], item["cost"])
            for item in report["avoided"]
            if item["counted"] or item["messages"]
        ),
        ("other", "Other (cancelled, failed)", other, money(other_cost)),
    ]
    longest = max([abs(messages) for _, _, messages, _ in bars] + [1])
    rows = []
    for index, (kind, label, messages, cost) in enumerate(bars):
        rows.append(
            {
                "kind": kind,
                "label": label,
                "messages": messages,
                "cost": cost,
                "y": index * ROW_HEIGHT,
                "text_y": round(index * ROW_HEIGHT + ROW_HEIGHT * 0.65, 1),
                "width": round(CHART_WIDTH * abs(messages) / longest, 1),
                "value_x": LABEL_WIDTH + round(CHART_WIDTH * abs(messages) / longest, 1) + 6,
            }
        )
    return {
        "rows": rows,
        "height": len(rows) * ROW_HEIGHT,
        "width": LABEL_WIDTH + CHART_WIDTH + 180,
        "label_width": LABEL_WIDTH,
    }


def savings_page(request: HttpRequest) -> HttpResponse:
    environment, environments = _environment(request)
    values, bounds, error = _period(request)
    report = None
    if environment is not None and bounds is not None:
        report = savings_report(environment=environment, start=bounds[0], end=bounds[1])
        if request.GET.get("format") == "csv":
            return _csv(report, environment, values)
    query = {"environment": str(environment.pk) if environment else "", **values}
    context = {
        **admin.site.each_context(request),
        "title": "Savings report",
        "environments": environments,
        "environment": environment,
        "values": values,
        "error": error,
        "report": report,
        "chart": _chart(report) if report else None,
        "avoided_total": sum(item["messages"] for item in report["avoided"]) if report else 0,
        "other_total": sum(item["messages"] for item in report["other"]) if report else 0,
        "csv_url": f"?{urlencode({**query, 'format': 'csv'})}",
        "runs_url": reverse("analytics-savings-runs"),
        "query": urlencode(query),
    }
    return TemplateResponse(request, "analytics/savings.html", context)


def _csv(report: dict[str, Any], environment: Environment, values: dict[str, str]) -> HttpResponse:
    response = HttpResponse(content_type="text/csv; charset=utf-8")
    filename = f"savings-{environment.slug}-{values['from']}-{values['to']}.csv".replace("/", "-")
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    writer = csv.writer(response)
    writer.writerow(["section", "name", "part", "messages", "cost", "currency"])
    currency = report["currency"]
    writer.writerow(["total", "baseline", "", report["baseline"]["messages"], report["baseline"]["cost"], currency])
    writer.writerow(["total", "actual", "", report["actual"]["messages"], report["actual"]["cost"], currency])
    for item in report["avoided"]:
        writer.writerow(["avoided", item["lever"], "", item["messages"], item["cost"], currency])
    for item in report["other"]:
        writer.writerow(["other", item["reason"], "", item["messages"], item["cost"], currency])
    for section, key in (("channel", "by_channel"), ("workflow", "by_workflow")):
        for row in report[key]:
            name = row["channel"] if section == "channel" else (row["workflow"] or "(category digests)")
            for part in ("baseline", "actual", "avoided", "other"):
                writer.writerow([section, _safe(name), part, row[part]["messages"], row[part]["cost"], currency])
    return response


def _safe(value: str) -> str:
    """A cell a spreadsheet will not run as a formula."""
    return f"'{value}" if value[:1] in ("=", "+", "-", "@", "\t", "\r") else value


def savings_runs_page(request: HttpRequest) -> HttpResponse:
    environment, environments = _environment(request)
    values, bounds, error = _period(request)
    lever = request.GET.get("lever", "")
    if lever not in drill_down_names():
        error = error or "Choose a lever of the report."
    before = None
    if request.GET.get("cursor"):
        before = decode_cursor(request.GET["cursor"])
        if before is None:
            error = error or "The cursor is not valid."
    rows: list[dict[str, Any]] = []
    next_url = ""
    if environment is not None and bounds is not None and not error:
        rows, after = savings_runs(
            environment=environment, start=bounds[0], end=bounds[1], lever=lever, before=before, limit=100
        )
        if after is not None:
            query = {"environment": str(environment.pk), **values, "lever": lever, "cursor": encode_cursor(after)}
            next_url = f"?{urlencode(query)}"
    context = {
        **admin.site.each_context(request),
        "title": f"Savings report: {lever or 'runs'}",
        "environment": environment,
        "environments": environments,
        "values": values,
        "lever": lever,
        "levers": drill_down_names(),
        "error": error,
        "rows": rows,
        "next_url": next_url,
        "report_url": reverse("analytics-savings"),
        "query": urlencode({"environment": str(environment.pk) if environment else "", **values}),
    }
    return TemplateResponse(request, "analytics/savings_runs.html", context)
