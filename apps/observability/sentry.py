"""Sentry, only when ``SENTRY_DSN`` is set (imported from settings then, never otherwise)."""

from __future__ import annotations


def sentry_init(*, dsn: str, environment: str, traces_sample_rate: float) -> None:
    import sentry_sdk
    from sentry_sdk.integrations.django import DjangoIntegration

    sentry_sdk.init(
        dsn=dsn,
        environment=environment,
        traces_sample_rate=traces_sample_rate,
        # Message bodies, addresses and payloads are customers' data: never sent along.
        send_default_pii=False,
        # Error log lines (logger.error / logger.exception) become events too: the SDK's default.
        integrations=[DjangoIntegration()],
    )
