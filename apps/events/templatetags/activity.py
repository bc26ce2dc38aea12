"""Template helpers of the console's Activity pages (apps/events/admin.py)."""

from __future__ import annotations

import calendar
import datetime
import json
from typing import Any

from django import template
from django.contrib.admin.views.main import ChangeList
from django.db.models import Max, Min
from django.utils import formats, timezone
from django.utils.html import format_html
from django.utils.safestring import SafeString
from django.utils.text import capfirst

register = template.Library()

JSON_EXCERPT_CHARS = 2000


@register.filter
def json_excerpt(value: Any) -> SafeString:
    """Indented JSON in a <pre>, cut after ``JSON_EXCERPT_CHARS`` characters, every character escaped."""
    text = json.dumps(value, indent=2, ensure_ascii=False, sort_keys=True, default=str)
    if len(text) > JSON_EXCERPT_CHARS:
        text = text[:JSON_EXCERPT_CHARS] + " …"
    return format_html('<pre class="clarion-json">{}</pre>', text)


@register.inclusion_tag("admin/date_hierarchy.html")
def activity_date_hierarchy(cl: ChangeList) -> dict[str, Any]:
    """The admin's date drill-down without its ``SELECT DISTINCT`` of dates over the list: years
    between the table's first and last row (MIN and MAX read from the created_at index), then every
    month of the year, every day of the month. A period may have no event; choosing it lists none."""
    field = cl.date_hierarchy
    year, month, day = (cl.params.get(f"{field}__{part}") for part in ("year", "month", "day"))

    def link(filters: dict[str, Any]) -> str:
        return str(cl.get_query_string(filters, [f"{field}__"]))

    try:
        y, m, d = (int(v) if v else None for v in (year, month, day))
    except ValueError:
        return {"show": False}
    if y and m and d:
        chosen = datetime.date(y, m, d)
        return {
            "show": True,
            "back": {
                "link": link({f"{field}__year": y, f"{field}__month": m}),
                "title": capfirst(formats.date_format(chosen, "YEAR_MONTH_FORMAT")),
            },
            "choices": [{"title": capfirst(formats.date_format(chosen, "MONTH_DAY_FORMAT"))}],
        }
    if y and m:
        days = calendar.monthrange(y, m)[1]
        return {
            "show": True,
            "back": {"link": link({f"{field}__year": y}), "title": str(y)},
            "choices": [
                {
                    "link": link({f"{field}__year": y, f"{field}__month": m, f"{field}__day": n}),
                    "title": capfirst(formats.date_format(datetime.date(y, m, n), "MONTH_DAY_FORMAT")),
                }
                for n in range(1, days + 1)
            ],
        }
    if y:
        return {
            "show": True,
            "back": {"link": link({}), "title": "All dates"},
            "choices": [
                {
                    "link": link({f"{field}__year": y, f"{field}__month": n}),
                    "title": capfirst(formats.date_format(datetime.date(y, n, 1), "YEAR_MONTH_FORMAT")),
                }
                for n in range(1, 13)
            ],
        }
    bounds = cl.model._default_manager.aggregate(first=Min(field), last=Max(field))
    if not bounds["first"]:
        return {"show": False}
    first, last = (timezone.localtime(bounds[key]) for key in ("first", "last"))
    return {
        "show": True,
        "choices": [{"link": link({f"{field}__year": n}), "title": str(n)} for n in range(first.year, last.year + 1)],
    }
