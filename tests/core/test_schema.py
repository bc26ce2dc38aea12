"""The OpenAPI schema generates without errors or warnings (enum names, untyped fields…)."""

from __future__ import annotations

from pathlib import Path

import pytest
from django.core.management import call_command


@pytest.mark.django_db
def test_openapi_schema_is_valid_and_warning_free(tmp_path: Path) -> None:
    target = tmp_path / "schema.yml"
    call_command("spectacular", "--validate", "--fail-on-warn", "--file", str(target))
    schema = target.read_text()
    assert "MessageStatusEnum" in schema and "ChannelEnum" in schema
    assert "/api/v1/subscribers/{subscriber_id}/runs" in schema
    assert "/api/v1/digests/flush" in schema
