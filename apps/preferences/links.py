"""The links every email carries: the subscriber's preference center and one-click unsubscribe.

The engine puts ``preferences_url`` / ``unsubscribe_url`` into the render context of every
email (layouts show them in the footer) and ``headers`` into ``Message.data["headers"]``, which
the email builder applies: ``List-Unsubscribe`` with the one-click URL (and an optional
``mailto:``) and ``List-Unsubscribe-Post: List-Unsubscribe=One-Click`` (RFC 8058).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from django.conf import settings
from django.urls import get_script_prefix, get_urlconf, reverse

from apps.preferences.tokens import preference_token, unsubscribe_token
from apps.subscribers.models import Subscriber


def public_url() -> str:
    return str(getattr(settings, "PUBLIC_URL", "") or "http://127.0.0.1:8000").rstrip("/")


# Signed tokens are URL-safe base64 with ':' and '.' separators, which ``reverse`` leaves as they are.
_TOKEN_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_:.")
_PLACEHOLDER = "TOKEN"


@lru_cache(maxsize=64)
def _path_around_token(name: str, urlconf: str | None, script_prefix: str) -> tuple[str, str]:
    path = reverse(name, urlconf=urlconf, kwargs={"token": _PLACEHOLDER})
    before, _, after = path.partition(_PLACEHOLDER)
    return before, after


def _token_path(name: str, token: str) -> str:
    """``reverse(name, kwargs={"token": token})``, resolved once per process and URL conf: every
    email carries two of these links, and ``reverse`` was a tenth of a delivery worker's time."""
    if not _TOKEN_CHARS.issuperset(token):
        return reverse(name, kwargs={"token": token})
    before, after = _path_around_token(name, get_urlconf(), get_script_prefix())
    return f"{before}{token}{after}"


def preferences_url(*, subscriber: Subscriber, base_url: str | None = None) -> str:
    path = _token_path("preference-center", preference_token(subscriber=subscriber))
    return f"{(base_url or public_url()).rstrip('/')}{path}"


def unsubscribe_url(
    *, subscriber: Subscriber, category_key: str | None, channel: str | None = "email", base_url: str | None = None
) -> str:
    token = unsubscribe_token(subscriber=subscriber, category_key=category_key, channel=channel)
    path = _token_path("one-click-unsubscribe", token)
    return f"{(base_url or public_url()).rstrip('/')}{path}"


def email_links(
    *,
    subscriber: Subscriber,
    category_key: str | None,
    base_url: str | None = None,
    mailto: str | None = None,
    critical: bool = False,
) -> dict[str, Any]:
    """``preferences_url``, ``unsubscribe_url`` (one-click; the email channel of the message's
    category, or everything non-critical without a category) and the ``headers`` to add.

    ``base_url`` defaults to ``CLARION_PUBLIC_URL``; ``mailto`` (an address) adds a
    ``<mailto:…>`` alternative to ``List-Unsubscribe``. ``critical`` (the category cannot be
    turned off): no unsubscribe link and no ``List-Unsubscribe`` headers, only the preference center.
    """
    base = (base_url or public_url()).rstrip("/")
    if critical:
        return {
            "preferences_url": preferences_url(subscriber=subscriber, base_url=base),
            "unsubscribe_url": None,
            "headers": {},
        }
    one_click = unsubscribe_url(subscriber=subscriber, category_key=category_key, channel="email", base_url=base)
    targets = [f"<{one_click}>"]
    if mailto:
        targets.append(f"<mailto:{mailto}?subject=unsubscribe>")
    return {
        "preferences_url": preferences_url(subscriber=subscriber, base_url=base),
        "unsubscribe_url": one_click,
        "headers": {
            "List-Unsubscribe": ", ".join(targets),
            "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
        },
    }
