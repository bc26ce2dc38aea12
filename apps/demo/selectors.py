"""The demo's keys, read from ``VAR_DIR/demo.json`` (written by ``manage.py seed_demo``).

The raw API keys exist only in that file, a local development file (mode 0600): the database keeps
their hashes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from django.conf import settings

# What the demo page needs from demo.json.
DEMO_KEYS = ("environment_slug", "secret_key", "publishable_key", "inbox_hmac_secret", "subscriber_id")


def demo_file_path() -> Path:
    return Path(settings.VAR_DIR) / "demo.json"


def demo_file_read() -> dict[str, Any]:
    """The whole of demo.json, or ``{}`` when it is missing or unreadable."""
    try:
        data = json.loads(demo_file_path().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def demo_config() -> tuple[dict[str, str] | None, str]:
    """The demo page's keys from demo.json (or ``None``) and, when they are unusable, why."""
    demo_path = demo_file_path()
    try:
        data = json.loads(demo_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None, f"{demo_path} does not exist yet."
    except (OSError, ValueError) as exc:
        return None, f"{demo_path} could not be read: {exc}"
    if not isinstance(data, dict):
        return None, f"{demo_path} is not a JSON object."
    missing = [k for k in DEMO_KEYS if not isinstance(data.get(k), str) or not data.get(k)]
    if missing:
        return None, f"{demo_path} lacks {', '.join(missing)}."
    return {k: data[k] for k in DEMO_KEYS}, ""
