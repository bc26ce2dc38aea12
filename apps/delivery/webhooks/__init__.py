"""Inbound provider webhooks: verified first, then stored raw and applied to messages.

``anymail`` takes every ESP's tracking webhook through Anymail's own parsing and validation;
``twilio`` takes Twilio's status callbacks and inbound messages (STOP / START keywords).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from django.http import QueryDict


def jsonable(value: Any) -> Any:
    """A provider payload as plain JSON (QueryDicts become dicts of values or lists)."""
    if isinstance(value, QueryDict):
        return {key: (items[0] if len(items) == 1 else items) for key, items in value.lists()}
    try:
        return json.loads(json.dumps(value, default=str))
    except (TypeError, ValueError):
        return {"raw": str(value)}


def payload_digest(payload: Any) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()
