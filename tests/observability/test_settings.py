"""Settings read by the observability app: Sentry only with a DSN, LOG_FORMAT checked."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _python(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {key: value for key, value in os.environ.items() if not key.startswith(("SENTRY_", "LOG_"))}
    environment.update({"DJANGO_SETTINGS_MODULE": "config.settings", **env})
    return subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=environment, capture_output=True, text=True, timeout=60
    )


def test_sentry_is_not_even_imported_without_a_dsn() -> None:
    result = _python("import django, sys; django.setup(); print('sentry_sdk' in sys.modules)")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"


def test_sentry_is_initialised_with_a_dsn() -> None:
    result = _python(
        "import django; django.setup(); import sentry_sdk; "
        "client = sentry_sdk.get_client(); "
        "print(client.is_active(), client.options['environment'], client.options['send_default_pii'])",
        SENTRY_DSN="http://public@127.0.0.1:8799/1",
        SENTRY_ENVIRONMENT="staging",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["True", "staging", "False"]


def test_an_unknown_log_format_is_refused_at_start() -> None:
    result = _python("import django; django.setup()", LOG_FORMAT="yaml")
    assert result.returncode != 0
    assert "LOG_FORMAT='yaml'" in result.stderr


def test_json_logs_from_a_real_process() -> None:
    result = _python(
        "import django, logging; django.setup(); "
        "from apps.observability.logs import bind_log_context; "
        "bind_log_context(transaction_id='order-1234', environment=3); "
        "logging.getLogger('apps.events').info('accepted')",
        LOG_FORMAT="json",
    )
    assert result.returncode == 0, result.stderr
    [line] = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    assert line["message"] == "accepted"
    assert line["transaction_id"] == "order-1234"
    assert line["environment"] == 3
