"""System checks: the send heartbeat must outlast every provider call and every wait of a live send."""

from __future__ import annotations

from typing import Any

from django.core.checks import CheckMessage, Error, Warning, register

from apps.delivery.providers.base import DEFAULT_TIMEOUT, max_call_seconds, send_heartbeat_seconds


@register()
def send_heartbeat_check(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """A send with no heartbeat for ``SEND_HEARTBEAT_SECONDS`` is presumed dead (and put in doubt).

    Provider timeouts and inline waits are capped at a third of it (``max_call_seconds``); this
    says so at startup when the cap would cut the default timeout, and refuses a heartbeat too
    short to hold any real provider call.
    """
    from apps.delivery.services import delivery_config

    heartbeat = send_heartbeat_seconds()
    limit = max_call_seconds()
    if heartbeat < 3:
        return [
            Error(
                f"CLARION_SEND_HEARTBEAT_SECONDS is {heartbeat:g}: live sends would be presumed dead.",
                hint="Use at least 3 times the longest provider timeout (default 30).",
                id="delivery.E001",
            )
        ]
    messages: list[CheckMessage] = []
    if limit < DEFAULT_TIMEOUT:
        messages.append(
            Warning(
                f"Provider calls are capped at {limit:g} s (a third of CLARION_SEND_HEARTBEAT_SECONDS="
                f"{heartbeat:g}), below the default timeout of {DEFAULT_TIMEOUT:g} s.",
                hint="Raise CLARION_SEND_HEARTBEAT_SECONDS to at least 3 times the provider timeout.",
                id="delivery.W001",
            )
        )
    try:
        cfg = delivery_config()
    except TypeError as exc:
        return [*messages, Error(f"CLARION_DELIVERY has an unknown key: {exc}", id="delivery.E002")]
    for name in ("inline_wait_max", "rate_wait_max"):
        if getattr(cfg, name) > limit:
            messages.append(
                Warning(
                    f"CLARION_DELIVERY {name.upper()}={getattr(cfg, name):g} is capped at {limit:g} s "
                    "(a third of CLARION_SEND_HEARTBEAT_SECONDS).",
                    id="delivery.W002",
                )
            )
    return messages
