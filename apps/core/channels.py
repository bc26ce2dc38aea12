"""The channels Clarion sends on: one list every app reads (model choices, API enums, step types).

The OpenAPI enums ``ChannelEnum`` and ``TemplateChannelEnum`` are named after these two values
(``SPECTACULAR_SETTINGS["ENUM_NAME_OVERRIDES"]`` in config/settings.py).
"""

from __future__ import annotations

CHANNELS: list[str] = ["in_app", "email", "sms", "push", "chat", "webhook"]
CHANNEL_CHOICES: list[tuple[str, str]] = [(c, c.replace("_", "-")) for c in CHANNELS]
