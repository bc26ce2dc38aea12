"""``Idempotency-Key`` support: the first response to a key is stored and replayed on retries.

The record is written in the same transaction as the work it describes, so a retry can never
see the work without its response or the reverse. A key reused with a different request body
is refused (422), like Stripe.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from functools import wraps
from typing import Any

from django.db import IntegrityError, transaction
from rest_framework.request import Request
from rest_framework.response import Response

from apps.core.errors import ApiError, Unprocessable
from apps.events.models import IdempotencyRecord
from apps.tenancy.auth import request_environment

HEADER = "Idempotency-Key"
MAX_KEY_LENGTH = 255


def _fingerprint(request: Request) -> str:
    body = json.dumps(request.data, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(f"{request.method} {request.path}\n{body}".encode()).hexdigest()


def _replay(record: IdempotencyRecord, fingerprint: str) -> Response:
    if record.request_fingerprint != fingerprint:
        raise Unprocessable(
            "This Idempotency-Key was already used with a different request.",
            code="idempotency_key_reused",
        )
    response = Response(record.response_body, status=record.response_status)
    response["Idempotent-Replayed"] = "true"
    return response


def idempotent(view_method: Callable[..., Response]) -> Callable[..., Response]:
    @wraps(view_method)
    def wrapper(self: Any, request: Request, *args: Any, **kwargs: Any) -> Response:
        key = request.headers.get(HEADER)
        if not key:
            return view_method(self, request, *args, **kwargs)
        if len(key) > MAX_KEY_LENGTH:
            raise ApiError(f"{HEADER} is longer than {MAX_KEY_LENGTH} characters.", code="invalid_idempotency_key")
        environment = request_environment(request)
        fingerprint = _fingerprint(request)
        existing = IdempotencyRecord.objects.filter(environment=environment, key=key).first()
        if existing is not None:
            return _replay(existing, fingerprint)
        try:
            with transaction.atomic():
                response = view_method(self, request, *args, **kwargs)
                if response.status_code < 500:
                    IdempotencyRecord.objects.create(
                        environment=environment,
                        key=key,
                        request_fingerprint=fingerprint,
                        method=request.method or "",
                        path=request.path[:500],
                        response_status=response.status_code,
                        response_body=response.data,
                    )
        except IntegrityError:
            # A concurrent request with the same key committed first: answer as it did.
            existing = IdempotencyRecord.objects.filter(environment=environment, key=key).first()
            if existing is None:
                raise
            return _replay(existing, fingerprint)
        return response

    return wrapper
