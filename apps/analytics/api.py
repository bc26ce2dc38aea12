"""``GET /api/v1/analytics``: engagement per period and dimension (secret key; the key's environment)."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from django.utils.dateparse import parse_date, parse_datetime
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from apps.analytics.selectors import (
    COUNT_FIELDS,
    GROUP_COLUMNS,
    INTERVALS,
    MAX_HOURLY_RANGE,
    MAX_RANGE,
    analytics_query,
)
from apps.core.errors import ApiError, Unprocessable
from apps.tenancy.auth import request_environment


def _rate_field(what: str) -> serializers.FloatField:
    return serializers.FloatField(allow_null=True, help_text=f"{what}; null when the denominator is 0")


_ROW_FIELDS: dict[str, serializers.Field] = {
    "bucket": serializers.DateTimeField(
        allow_null=True, help_text="Start of the UTC hour or day; null without an interval."
    ),
    **{
        name: serializers.CharField(required=False, help_text=f"The {name} key (only when grouped by {name}).")
        for name in GROUP_COLUMNS
    },
    **{name: serializers.IntegerField() for name in COUNT_FIELDS},
    "skipped": serializers.DictField(child=serializers.IntegerField(), help_text="Runs' skipped steps by reason."),
    "delivery_rate": _rate_field("delivered / sent"),
    "open_rate": _rate_field("opened / delivered"),
    "click_rate": _rate_field("clicked / delivered"),
    "read_rate": _rate_field("read / delivered"),
    "median_open_seconds": serializers.FloatField(allow_null=True, help_text="From a histogram: see docs."),
    "median_read_seconds": serializers.FloatField(allow_null=True, help_text="From a histogram: see docs."),
}


def _moment(name: str, raw: str | None, *, end: bool) -> datetime:
    """A date (``2026-11-30``: its UTC midnight; for ``to``, the next midnight: the day is included)
    or an ISO 8601 date-time (UTC when it has no offset)."""
    if raw is None or not raw.strip():
        raise ApiError(f"'{name}' is required.", code="validation_error", details={name: "required"})
    raw = raw.strip()
    try:
        day = parse_date(raw)
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
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    assert isinstance(day, date)
    try:
        moment = datetime.combine(day, time.min, tzinfo=UTC)
        return moment + timedelta(days=1) if end else moment
    except OverflowError:
        raise ApiError(
            f"'{name}' is out of range.", code="validation_error", details={name: ["Out of range."]}
        ) from None


# What the schema says of `from` and `to`: a date, or a date-time with an optional offset.
MOMENT_PATTERN = r"^\d{4}-\d{2}-\d{2}([T ]\d{2}:\d{2}(:\d{2}(\.\d{1,6})?)?(Z|[+-]\d{2}:?\d{2})?)?$"


class AnalyticsView(APIView):
    @extend_schema(
        operation_id="analytics_retrieve",
        summary="Engagement analytics: counts, rates and medians per period and dimension",
        parameters=[
            OpenApiParameter(
                "from",
                OpenApiTypes.STR,
                required=True,
                pattern=MOMENT_PATTERN,
                description="Start (inclusive): YYYY-MM-DD (UTC midnight) or an ISO 8601 date-time.",
            ),
            OpenApiParameter(
                "to",
                OpenApiTypes.STR,
                required=True,
                pattern=MOMENT_PATTERN,
                description="End: YYYY-MM-DD (that whole UTC day included) or an ISO 8601 date-time (exclusive).",
            ),
            OpenApiParameter(
                "group_by",
                OpenApiTypes.STR,
                description=f"Comma-separated dimensions: {', '.join(GROUP_COLUMNS)}.",
            ),
            OpenApiParameter(
                "interval", OpenApiTypes.STR, enum=list(INTERVALS), description="UTC hour or day buckets."
            ),
        ],
        responses={
            200: inline_serializer(
                "AnalyticsResponse", {"data": inline_serializer("AnalyticsRow", _ROW_FIELDS, many=True)}
            )
        },
    )
    def get(self, request: Request) -> Response:
        params = request.query_params
        start = _moment("from", params.get("from"), end=False)
        end = _moment("to", params.get("to"), end=True)
        group_by = [name.strip() for name in (params.get("group_by") or "").split(",") if name.strip()]
        unknown = [name for name in group_by if name not in GROUP_COLUMNS]
        if unknown:
            raise ApiError(
                f"Unknown group_by: {', '.join(unknown)}. Allowed: {', '.join(GROUP_COLUMNS)}.",
                code="validation_error",
                details={"group_by": unknown, "allowed": list(GROUP_COLUMNS)},
            )
        interval_raw = params.get("interval") or None
        if interval_raw is not None and interval_raw not in INTERVALS:
            raise ApiError(
                f"Unknown interval '{interval_raw[:20]}'. Allowed: {', '.join(INTERVALS)}.",
                code="validation_error",
                details={"interval": interval_raw[:20], "allowed": list(INTERVALS)},
            )
        interval: Any = interval_raw
        if start >= end:
            raise Unprocessable("'from' must be before 'to'.", code="invalid_range", details={"from": start, "to": end})
        limit = MAX_HOURLY_RANGE if interval == "hour" else MAX_RANGE
        if end - start > limit:
            raise Unprocessable(
                f"The range is longer than {limit.days} days{' for hourly buckets' if interval == 'hour' else ''}.",
                code="range_too_long",
                details={"max_days": limit.days},
            )
        rows = analytics_query(
            environment=request_environment(request), start=start, end=end, group_by=group_by, interval=interval
        )
        return Response({"data": rows})
