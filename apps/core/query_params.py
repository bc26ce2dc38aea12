"""Query parameters an operation does not declare are a 400, never silently ignored.

A client sending ``GET /api/v1/messages?subscriberId=x`` (a typo of ``subscriber_id``) would
otherwise get every subscriber's messages. The OpenAPI schema is the list of what each operation
takes (its filters, pagination and documented parameters), so the check reads it
(``apps.core.schema.declared_query_parameters``): a name it does not declare, or a second value of
a parameter that is not an array, is a 400 ``unknown_query_parameter`` / ``repeated_query_parameter``
naming them.

It runs as DRF's content negotiation (``DEFAULT_CONTENT_NEGOTIATION_CLASS``) because that is the
first step of every DRF view's ``initial()``, whatever its authentication, permissions or
throttles: the error then goes through the exception handler (the envelope) and the view's
``finalize_response`` (CORS headers on the inbox API) like any other.
"""

from __future__ import annotations

from typing import Any

from rest_framework.negotiation import DefaultContentNegotiation
from rest_framework.request import Request

from apps.core.schema import declared_query_parameters

CHECKED_PREFIX = "/api/v1/"


def query_parameters_check(request: Request) -> None:
    """Raise a 400 when the request's query string holds what its operation does not declare."""
    # Imported late: DRF's settings import this module while apps.core.errors imports DRF.
    from apps.core.errors import ApiError

    if not request.path.startswith(CHECKED_PREFIX) or not request.query_params:
        return
    match = getattr(request, "resolver_match", None)
    if match is None or request.method == "OPTIONS":
        return
    declared = declared_query_parameters(route=match.route, method=request.method or "GET")
    if declared is None:
        return
    accepted = sorted(declared)
    unknown = [name for name in request.query_params if name not in declared]
    if unknown:
        listed = ", ".join(unknown)
        takes = ", ".join(accepted) if accepted else "none"
        raise ApiError(
            f"Unknown query parameter{'s' if len(unknown) > 1 else ''}: {listed}. This operation takes: {takes}.",
            code="unknown_query_parameter",
            details={"unknown": unknown, "accepted": accepted},
        )
    repeated = [
        name for name, values in request.query_params.lists() if len(values) > 1 and not declared[name].repeatable
    ]
    if repeated:
        raise ApiError(
            f"Query parameter{'s' if len(repeated) > 1 else ''} given more than once: {', '.join(repeated)}.",
            code="repeated_query_parameter",
            details={"repeated": repeated},
        )


class StrictQueryContentNegotiation(DefaultContentNegotiation):
    def select_renderer(self, request: Request, renderers: Any, format_suffix: str | None = None) -> Any:
        query_parameters_check(request)
        return super().select_renderer(request, renderers, format_suffix)
