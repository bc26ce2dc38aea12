"""A database that is briefly away (restart, failover, lock timeout) is a 503 to retry, never a 500."""

from __future__ import annotations

from typing import Any

import pytest
from django.db import InterfaceError, OperationalError

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize(
    "error",
    [
        OperationalError("server closed the connection unexpectedly"),
        InterfaceError("connection already closed"),
        OperationalError("database is locked"),
    ],
)
def test_a_trigger_while_the_database_is_away_is_a_503_with_retry_after(
    tenant: Any, monkeypatch: pytest.MonkeyPatch, error: Exception
) -> None:
    def unavailable(**kwargs: Any) -> None:
        raise error

    monkeypatch.setattr("apps.events.services.event_trigger", unavailable)
    response = tenant.client.post("/api/v1/events/trigger", {"workflow": "w", "to": ["u1"]}, format="json")

    assert response.status_code == 503
    assert response["Retry-After"] == "2"
    assert response.json()["error"]["code"] == "service_unavailable"
