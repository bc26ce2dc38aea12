"""Clarion's own open and click tracking, for providers that do not report them.

An email is tracked when its template says so (``Template.tracking``: ``on``; ``off`` never;
``inherit`` follows the environment's ``track_opens`` / ``track_clicks``), never for a message of a
critical category unless the environment's ``track_critical`` is on, and never for an email
without a template. The decision is made at send time, for a whole delivery batch at once
(``prefetched_tracking``: at most two queries per batch, none per message).

At send time the HTML part (never ``Message.body``, which stays the clean rendered HTML) gets:

* each ``http(s)`` link of an ``<a>`` or ``<area>`` through the signed redirect
  ``/t/c/<token>`` — except the preference-center and unsubscribe links (``List-Unsubscribe``
  and the footer keep working untouched), links already tracked, and links marked
  ``data-clarion-track="off"``; ``mailto:``, ``tel:`` and ``#anchors`` are not http(s) and stay;
* a 1×1 pixel ``/t/o/<token>`` at the end of ``<body>``.

The plain-text part is left as it was rendered: its links go straight to their targets.

Tokens are ``django.core.signing`` signatures (a salt per purpose, zlib-compressed when that is
shorter): the open token carries the message id, the click token the message id and the target
URL, so the redirect goes only to a URL Clarion itself put in that message (no open redirect),
keeps working after the message row is pruned, and needs no query to find its target. A token
that does not verify is simply unknown (the views answer 404).
"""

from __future__ import annotations

import html
import logging
import re
import zlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from functools import lru_cache
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings
from django.core import signing
from django.urls import reverse

from apps.delivery.models import Message
from apps.delivery.selectors import message_category
from apps.delivery.services.statuses import message_status_apply
from apps.preferences.links import public_url
from apps.preferences.models import Category

logger = logging.getLogger(__name__)

OPEN_SALT = "clarion.tracking.open"
CLICK_SALT = "clarion.tracking.click"
# Longer tokens are refused before any signature work (a click token holds a URL of at most
# MAX_URL_CHARS, which compresses; twice that is far more than any token Clarion makes).
MAX_TOKEN_CHARS = 4096
# Longer links are left as they are rather than made longer still.
MAX_URL_CHARS = 2000
TRACKED_SCHEMES = frozenset({"http", "https"})
_UNSAFE_URL_CHARACTER = re.compile(r"[\x00-\x20\x7f]")
OPT_OUT_ATTRIBUTE = "data-clarion-track"

TRACKING_ON = "on"
TRACKING_OFF = "off"


@dataclass(frozen=True)
class Tracking:
    """What to add to one email: the open pixel, the click redirects."""

    opens: bool = False
    clicks: bool = False

    def __bool__(self) -> bool:
        return self.opens or self.clicks


UNTRACKED = Tracking()


def tracking_decide(
    *, template_tracking: str, track_opens: bool, track_clicks: bool, track_critical: bool, critical: bool
) -> Tracking:
    """The rule: the template's ``off`` wins, its ``on`` tracks both, ``inherit`` follows the
    environment; a critical category is tracked only with ``track_critical``."""
    if template_tracking == TRACKING_OFF or (critical and not track_critical):
        return UNTRACKED
    if template_tracking == TRACKING_ON:
        return Tracking(opens=True, clicks=True)
    return Tracking(opens=track_opens, clicks=track_clicks)


# --- which messages: one batch at a time --------------------------------------------------------


def _candidates(messages: Sequence[Message]) -> list[Message]:
    return [m for m in messages if m.channel == "email" and m.template_version_id is not None and m.pk is not None]


def tracking_for_messages(messages: Sequence[Message]) -> dict[int, Tracking]:
    """``{message id: Tracking}`` for emails with a template (others are untracked): one query for
    the template and environment switches and the run's category key, one more for the categories'
    ``critical`` when any message could be tracked; none when no message has a template."""
    candidates = _candidates(messages)
    if not candidates:
        return {}
    by_pk = {m.pk: m for m in candidates}
    rows = Message.objects.filter(pk__in=list(by_pk)).values_list(
        "pk",
        "environment_id",
        "environment__track_opens",
        "environment__track_clicks",
        "environment__track_critical",
        "template_version__template__tracking",
        "run__workflow_version__category_key",
        "run_id",
    )
    maybe: list[tuple[int, int, str, tuple[bool, bool, bool], str]] = []
    for pk, environment_id, opens, clicks, critical_too, template_tracking, run_category, run_id in rows:
        template_tracking = template_tracking or ""
        if template_tracking == TRACKING_OFF or not (template_tracking == TRACKING_ON or opens or clicks):
            continue
        if run_id is not None:
            category_key = run_category or ""
        else:  # a category digest names its category; a resend copy its workflow (see message_category)
            category = (by_pk[pk].data or {}).get("category")
            category_key = category if isinstance(category, str) else ""
        maybe.append((pk, environment_id, template_tracking, (opens, clicks, critical_too), category_key))
    if not maybe:
        return {}
    keys = {key for _pk, _env, _t, _s, key in maybe if key}
    critical_keys: set[tuple[int, str]] = set()
    if keys:
        critical_keys = set(
            Category.objects.filter(
                environment_id__in={env for _pk, env, _t, _s, _key in maybe}, key__in=keys, critical=True
            ).values_list("environment_id", "key")
        )
    plan: dict[int, Tracking] = {}
    for pk, environment_id, template_tracking, (opens, clicks, critical_too), category_key in maybe:
        message = by_pk[pk]
        if category_key:
            critical = (environment_id, category_key) in critical_keys
        elif message.run_id is None and (message.data or {}).get("workflow"):
            found = message_category(message=message)  # a resend copy (rare): one query
            critical = bool(found and found.critical)
        else:
            critical = False
        plan[pk] = tracking_decide(
            template_tracking=template_tracking,
            track_opens=opens,
            track_clicks=clicks,
            track_critical=critical_too,
            critical=critical,
        )
    return plan


# The decisions of the delivery batch being sent ({message id: Tracking}); see prefetched_tracking.
_prefetched: ContextVar[dict[int, Tracking] | None] = ContextVar("clarion_tracking", default=None)


@contextmanager
def prefetched_tracking(messages: Sequence[Message]) -> Iterator[None]:
    """Decide for every message of a delivery batch at once, for ``message_tracking`` inside the block."""
    candidates = _candidates(messages)
    if not candidates:
        yield
        return
    decided = dict(_prefetched.get() or {})
    found = tracking_for_messages(candidates)
    decided.update({m.pk: found.get(m.pk, UNTRACKED) for m in candidates})
    token = _prefetched.set(decided)
    try:
        yield
    finally:
        _prefetched.reset(token)


def message_tracking(message: Message) -> Tracking:
    """What to add to this email: from the batch's decisions when there are some, else decided now."""
    if not _candidates([message]):
        return UNTRACKED
    decided = (_prefetched.get() or {}).get(message.pk)
    if decided is not None:
        return decided
    return tracking_for_messages([message]).get(message.pk, UNTRACKED)


# --- tokens and URLs ------------------------------------------------------------------------------


def _signer(salt: str) -> signing.Signer:
    return _signer_for(salt, settings.SECRET_KEY, tuple(settings.SECRET_KEY_FALLBACKS))


@lru_cache(maxsize=8)
def _signer_for(salt: str, key: str, fallback_keys: tuple[str, ...]) -> signing.Signer:
    # One signer per key set (not one per link: its set-up reads the settings each time).
    return signing.Signer(key=key, fallback_keys=list(fallback_keys), salt=salt)


def open_token(message_id: int) -> str:
    return _signer(OPEN_SALT).sign(str(message_id))


def click_token(message_id: int, url: str) -> str:
    return _signer(CLICK_SALT).sign_object([message_id, url], compress=True)


def open_token_read(token: str) -> int | None:
    """The message id of a genuine open token, else None (tampered, foreign, malformed)."""
    if not isinstance(token, str) or not token or len(token) > MAX_TOKEN_CHARS:
        return None
    try:
        value = _signer(OPEN_SALT).unsign(token)
    except (signing.BadSignature, ValueError, TypeError):
        return None
    return int(value) if value.isascii() and value.isdigit() else None


def click_token_read(token: str) -> tuple[int, str] | None:
    """``(message id, target URL)`` of a genuine click token whose target is http(s), else None."""
    if not isinstance(token, str) or not token or len(token) > MAX_TOKEN_CHARS:
        return None
    try:
        value: Any = _signer(CLICK_SALT).unsign_object(token)
    except (signing.BadSignature, ValueError, TypeError, UnicodeError, zlib.error):
        return None
    if not (isinstance(value, list) and len(value) == 2):
        return None
    message_id, url = value
    if not isinstance(message_id, int) or isinstance(message_id, bool) or not isinstance(url, str):
        return None
    if not redirectable(url):
        return None
    return message_id, url


def _absolute(path: str) -> str:
    return f"{public_url()}{path}"


@lru_cache(maxsize=8)
def _route_prefix(name: str) -> str:
    """The path of route ``name`` (``<str:token>`` last) before its token: resolved once, not per link."""
    return reverse(name, kwargs={"token": "x"}).rsplit("x", 1)[0]


def open_url(message_id: int) -> str:
    return _absolute(_route_prefix("tracking-open") + open_token(message_id))


def click_url(message_id: int, url: str) -> str:
    return _absolute(_route_prefix("tracking-click") + click_token(message_id, url))


def redirectable(url: str) -> bool:
    """An absolute http(s) URL with a host, of a sane length, without control characters or spaces."""
    if not url or len(url) > MAX_URL_CHARS or _UNSAFE_URL_CHARACTER.search(url):
        return False
    try:
        parts = urlsplit(url)
    except ValueError:
        return False
    return parts.scheme.lower() in TRACKED_SCHEMES and bool(parts.hostname)


def _own_paths() -> tuple[str, ...]:
    """The paths of Clarion's hosted preference and unsubscribe pages and of its own redirects."""
    return tuple(
        _route_prefix(name)
        for name in ("preference-center", "one-click-unsubscribe", "tracking-click", "tracking-open")
    )


def _own_prefixes() -> tuple[str, ...]:
    """Links Clarion must not wrap: its hosted preference and unsubscribe pages, its own redirects."""
    base = public_url()
    return tuple(f"{base}{path}" for path in _own_paths())


def action_click_url(message_id: int | None, url: str) -> str:
    """The tracked form of an in-app action URL ("" when the URL cannot go through the redirect:
    not absolute http(s), or no delivery message to count the click on)."""
    target = (url or "").strip()
    if message_id is None or not redirectable(target):
        return ""
    return click_url(message_id, target)


# --- the HTML rewrite -----------------------------------------------------------------------------


def _is_document(body: str) -> bool:
    start = body.lstrip()[:64].lower()
    return start.startswith("<!doctype") or start.startswith("<html")


def _pixel(message_id: int) -> Any:
    from lxml import html as lxml_html

    return lxml_html.Element(
        "img",
        src=open_url(message_id),
        width="1",
        height="1",
        alt="",
        style="display:block;width:1px;height:1px;border:0;margin:0;padding:0",
    )


def tracked_html(body: str, *, message_id: int, tracking: Tracking) -> str:
    """``body`` with its links through the click redirect and the open pixel before ``</body>``
    (as ``tracking`` says). A body the parser cannot read is sent as it was (logged)."""
    if not tracking or not body.strip():
        return body
    from lxml import etree
    from lxml import html as lxml_html

    document = _is_document(body)
    try:
        root = lxml_html.document_fromstring(body if document else f"<html><body>{body}</body></html>")
    except (etree.ParserError, ValueError) as exc:
        logger.warning("message %s: HTML not tracked, it could not be parsed (%s)", message_id, exc)
        return body
    if tracking.clicks:
        own = _own_prefixes()
        for element in root.iter("a", "area"):
            if element.get(OPT_OUT_ATTRIBUTE) is not None:
                del element.attrib[OPT_OUT_ATTRIBUTE]
                continue
            href = (element.get("href") or "").strip()
            if redirectable(href) and not href.startswith(own):
                element.set("href", click_url(message_id, href))
    body_element = root.find("body")
    container = body_element if body_element is not None else root
    if tracking.opens:
        container.append(_pixel(message_id))
    if document:
        doctype = root.getroottree().docinfo.doctype
        out: str = lxml_html.tostring(root, encoding="unicode", doctype=doctype or None)
        return out
    # A fragment stays a fragment: the body's content only.
    head = html.escape(container.text or "", quote=False)
    return head + "".join(lxml_html.tostring(child, encoding="unicode") for child in container)


def message_html(message: Message) -> str:
    """The HTML part to send for ``message``: its body, tracked when the rules say so. Tracking
    never stops a send: if the rewrite fails, the body goes out as it was (logged)."""
    body = message.body or ""
    tracking = message_tracking(message)
    if not tracking:
        return body
    try:
        return tracked_html(body, message_id=message.pk, tracking=tracking)
    except Exception:
        logger.exception("message %s: tracking the HTML failed; sent untracked", message.pk)
        return body


# --- recording ------------------------------------------------------------------------------------


def tracked_open_record(*, message_id: int) -> bool:
    """The pixel was loaded: the message is opened (the first time; never backwards)."""
    return message_status_apply(message_id=message_id, status=Message.Status.OPENED)


def tracked_click_record(*, message_id: int) -> bool:
    """A tracked link was followed: the message is clicked (clicked ranks above opened, so a
    click also counts as engagement past opened; ``opened_at`` stays what the pixel said)."""
    return message_status_apply(message_id=message_id, status=Message.Status.CLICKED)
