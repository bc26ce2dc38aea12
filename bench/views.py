"""The ingest baseline: what any authenticated DRF JSON endpoint costs on this server."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework import status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from apps.tenancy.auth import HasEnvironment, SecretKeyAuthentication


class BareView(APIView):
    """Authenticates the secret key (one indexed query), parses the JSON body, answers 202.

    Same middleware, authentication, permission, parser and renderer as the trigger API; no
    validation, no event, no enqueue. The trigger's cost above this is Clarion's own work."""

    authentication_classes = [SecretKeyAuthentication]
    permission_classes = [HasEnvironment]

    @extend_schema(exclude=True)
    def post(self, request: Request) -> Response:
        body = request.data  # parse the JSON body, as the trigger does
        return Response({"ok": isinstance(body, dict)}, status=status.HTTP_202_ACCEPTED)
