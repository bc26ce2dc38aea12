"""``GET /api/v1/reports/savings`` and its drill-down ``/reports/savings/runs`` (secret key; the key's environment)."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from django.urls import reverse
from django.utils.dateparse import parse_date, parse_datetime
from django.utils.http import urlencode
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from apps.analytics.api import MOMENT_PATTERN
from apps.analytics.savings import (
    decode_cursor,
    drill_down_names,
    encode_cursor,
    savings_report,
    savings_runs,
)
from apps.core.errors import ApiError, Unprocessable
from apps.core.pagination import IdCursorPagination
from apps.core.schema import pagination_parameters
from apps.tenancy.auth import request_environment
from apps.workflows.accounting import LEVERS, OTHER_REASONS

MAX_RANGE = timedelta(days=366)


def period_bound(name: str, raw: str | None, *, end: bool) -> datetime:
    """A date (``2026-11-30``: its UTC midnight; for ``to`` the next one, the day included) or an
    ISO 8601 date-time on a whole hour (UTC when it has no offset): the report counts by UTC hour."""
    if raw is None or not raw.strip():
        raise ApiError(f"'{name}' is required.", code="validation_error", details={name: ["Required."]})
    raw = raw.strip()
    try:
        # A bare date first: parse_datetime takes "2026-11-30" too (as midnight), which for `to`
        # would leave the day out.
        day = parse_date(raw) if len(raw) == 10 else None
        parsed = None if day is not None else parse_datetime(raw)
    except ValueError:
        parsed, day = None, None
    if parsed is None and day is None:
        raise ApiError(
            f"'{name}' is not a date (YYYY-MM-DD) or an ISO 8601 date-time.",
            code="validation_error",
            details={name: [f"Not a date or a date-time: {raw[:100]!r}."]},
        )
    if parsed is not None:
        moment = parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
        try:
            moment = moment.astimezone(UTC)
        except OverflowError:
            raise ApiError(
                f"'{name}' is out of range.", code="validation_error", details={name: ["Out of range."]}
            ) from None
        if (moment.minute, moment.second, moment.microsecond) != (0, 0, 0):
            raise ApiError(
                f"'{name}' must be on a whole hour: the report counts by UTC hour.",
                code="validation_error",
                details={name: ["Not on a whole hour."]},
            )
        return moment
    assert isinstance(day, date)
    try:
        midnight = datetime.combine(day, time.min, tzinfo=UTC)
        return midnight + timedelta(days=1) if end else midnight
    except OverflowError:
        raise ApiError(
            f"'{name}' is out of range.", code="validation_error", details={name: ["Out of range."]}
        ) from None


def period(params: Any) -> tuple[datetime, datetime]:
    start = period_bound("from", params.get("from"), end=False)
    end = period_bound("to", params.get("to"), end=True)
    if start >= end:
        raise Unprocessable("'from' must be before 'to'.", code="invalid_range", details={"from": start, "to": end})
    if end - start > MAX_RANGE:
        raise Unprocessable(
            f"The range is longer than {MAX_RANGE.days} days.", code="range_too_long", details={"max_days": 366}
        )
    return start, end


PERIOD_PARAMETERS = [
    OpenApiParameter(
        "from",
        OpenApiTypes.STR,
        required=True,
        pattern=MOMENT_PATTERN,
        description="Start (inclusive): YYYY-MM-DD (UTC midnight) or an ISO 8601 date-time on a whole hour.",
    ),
    OpenApiParameter(
        "to",
        OpenApiTypes.STR,
        required=True,
        pattern=MOMENT_PATTERN,
        description="End: YYYY-MM-DD (that whole UTC day included) or an ISO 8601 date-time on a whole hour "
        "(exclusive).",
    ),
]


def _line(name: str) -> Any:
    return inline_serializer(
        name,
        {
            "messages": serializers.IntegerField(),
            "cost": serializers.CharField(help_text="Money in the environment's currency, six decimals."),
        },
    )


def _parts(prefix: str) -> dict[str, Any]:
    return {part: _line(f"{prefix}{part.title()}") for part in ("baseline", "actual", "avoided", "other")}


SavingsReportSerializer = inline_serializer(
    "SavingsReport",
    {
        "currency": serializers.CharField(help_text="ISO 4217 code of the environment."),
        "baseline": _line("SavingsBaseline"),
        "actual": _line("SavingsActual"),
        "avoided": inline_serializer(
            "SavingsLever",
            {
                "lever": serializers.ChoiceField(choices=list(LEVERS)),
                "messages": serializers.IntegerField(help_text="Net: counted minus replaced_by_digests."),
                "cost": serializers.CharField(),
                "counted": serializers.IntegerField(help_text="Baseline messages the lever stopped (the drill-down)."),
                "replaced_by_digests": serializers.IntegerField(
                    help_text="Category digests sent in place of messages this lever held."
                ),
                "runs": serializers.CharField(help_text="The drill-down: the messages this lever counted."),
            },
            many=True,
        ),
        "other": inline_serializer(
            "SavingsOther",
            {
                "reason": serializers.ChoiceField(choices=list(OTHER_REASONS)),
                "messages": serializers.IntegerField(),
                "cost": serializers.CharField(),
                "runs": serializers.CharField(help_text="The drill-down: these messages and their runs."),
            },
            many=True,
        ),
        "by_channel": inline_serializer(
            "SavingsByChannel",
            {
                "channel": serializers.CharField(),
                "price": serializers.CharField(help_text="Price of one message (one SMS segment)."),
                **_parts("SavingsChannel"),
            },
            many=True,
        ),
        "by_workflow": inline_serializer(
            "SavingsByWorkflow",
            {
                "workflow": serializers.CharField(allow_null=True, help_text="null: category digests."),
                **_parts("SavingsWorkflow"),
            },
            many=True,
        ),
        "recipients": serializers.IntegerField(help_text="Runs started in the period."),
    },
)

SavingsRunSerializer = inline_serializer(
    "SavingsRun",
    {
        "run_id": serializers.IntegerField(),
        "transaction_id": serializers.CharField(),
        "subscriber_id": serializers.CharField(),
        "workflow": serializers.CharField(),
        "step_id": serializers.CharField(),
        "channel": serializers.CharField(),
        "template": serializers.CharField(allow_null=True),
        "lever": serializers.CharField(help_text="The lever, or other:<reason>."),
        "reason": serializers.CharField(help_text="The engine's reason code."),
        "run_status": serializers.CharField(),
        "completed_at": serializers.DateTimeField(),
    },
    many=True,
)


class SavingsReportView(APIView):
    @extend_schema(
        operation_id="reports_savings_retrieve",
        summary="The savings report: actual sends against the CPaaS-only baseline, per lever, in money",
        parameters=PERIOD_PARAMETERS,
        responses={200: SavingsReportSerializer},
    )
    def get(self, request: Request) -> Response:
        start, end = period(request.query_params)
        report = savings_report(environment=request_environment(request), start=start, end=end)
        # Each lever (and other reason) links to the messages it counted: the drill-down.
        bounds = {"from": start.isoformat().replace("+00:00", "Z"), "to": end.isoformat().replace("+00:00", "Z")}
        runs = reverse("reports-savings-runs")
        for item in report["avoided"]:
            item["runs"] = f"{runs}?{urlencode({'lever': item['lever'], **bounds})}"
        for item in report["other"]:
            lever = f"other:{item['reason']}"
            item["runs"] = f"{runs}?{urlencode({'lever': lever, **bounds})}"
        return Response(report)


class SavingsRunsView(APIView):
    @extend_schema(
        operation_id="reports_savings_runs_list",
        summary="The baseline messages a lever counted, with their runs (newest run first)",
        parameters=[
            *PERIOD_PARAMETERS,
            OpenApiParameter(
                "lever",
                OpenApiTypes.STR,
                required=True,
                enum=drill_down_names(),
                description="A lever of the report, or other:<reason>.",
            ),
            *pagination_parameters(),
        ],
        responses={
            200: inline_serializer(
                "SavingsRunsPage",
                {
                    "data": SavingsRunSerializer,
                    "next_cursor": serializers.CharField(allow_null=True),
                },
            )
        },
    )
    def get(self, request: Request) -> Response:
        params = request.query_params
        start, end = period(params)
        lever = params.get("lever") or ""
        if lever not in drill_down_names():
            raise ApiError(
                "'lever' must be a lever of the report or other:<reason>.",
                code="validation_error",
                details={"lever": [f"One of: {', '.join(drill_down_names())}."]},
            )
        limit = IdCursorPagination().get_page_size(request)
        before = None
        cursor = params.get("cursor")
        if cursor:
            before = decode_cursor(cursor)
            if before is None:
                raise ApiError(
                    "The cursor is not valid: pass the `next_cursor` of a previous page.",
                    code="invalid_cursor",
                    details={"cursor": ["Not a cursor this API issued."]},
                )
        rows, after = savings_runs(
            environment=request_environment(request), start=start, end=end, lever=lever, before=before, limit=limit
        )
        return Response(
            {
                "data": rows,
                "next_cursor": encode_cursor(after) if after is not None else None,
            }
        )
