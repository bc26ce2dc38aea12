"""Sending: the one Message constructor, and delivery with retries, failover and the in-doubt rule.

The database is the source of truth. A message is claimed ``queued → sending`` by one conditional
UPDATE, so a task that runs twice finds nothing to claim and a provider never gets it twice from
that. A retry that must wait longer than a moment goes back to ``queued`` with
``next_attempt_at``; ``messages_redrive`` (every second) hands it out when due. The circuit breaker
and the rate limiter (``circuit``) are consulted before every provider call.

In doubt. Before each provider call the message records which integration it is calling
(``send_started_at``, ``integration``) and refreshes its heartbeat (``updated_at``). A send whose
outcome is unknown — a timeout or a broken connection after the request was written, or a worker
that died mid-call (found ``sending`` with a stale heartbeat) — is never failed over: the first
provider may still deliver it. Its category's ``in_doubt_policy`` decides: resend through the same
integration with the same idempotency key (critical categories, or a provider that deduplicates
on that key), or hold it ``in_doubt`` until a provider callback settles it. A refused connection
or a DNS failure sent nothing and is retried and failed over as before.
"""

from __future__ import annotations

import logging
import random
import sqlite3
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.db import connection, transaction
from django.db.models import F, Q
from django.utils import timezone

from apps.analytics import counters
from apps.analytics.counters import Tally, counted_rows_sql, update_counted
from apps.delivery.addresses import SUPPRESSIBLE_CHANNELS, address_normalize, subscriber_recipient
from apps.delivery.counting import dims_of
from apps.delivery.models import DeliveryAttempt, Integration, Message, MessageEvent, Suppression
from apps.delivery.providers.base import (
    ErrorKind,
    Provider,
    ProviderError,
    SendResult,
    get_provider,
    heartbeat_during,
    send_heartbeat_seconds,
)
from apps.delivery.selectors import message_category
from apps.delivery.services.circuit import (
    _circuit_allows,
    _circuit_failure,
    _circuit_success,
    _max_wait,
    _rate_limit_wait,
)
from apps.delivery.services.config import DeliveryConfig, delivery_config
from apps.delivery.services.statuses import _apply_early_events
from apps.delivery.services.suppressions import _suppression_of, address_suppress
from apps.observability.logs import bind_message_log_context
from apps.observability.metrics import delivery_observed, delivery_observed_many, messages_settled
from apps.preferences.models import IN_DOUBT_DROP, IN_DOUBT_RESEND

if TYPE_CHECKING:
    from apps.subscribers.models import Subscriber
    from apps.templates.models import TemplateVersion
    from apps.workflows.models import Run

logger = logging.getLogger(__name__)

DELIVER_TASK = "apps.delivery.tasks.deliver_messages"
# Errors that say "this integration cannot send this message" rather than anything about the
# message: try the next integration at once.
FAILOVER_KINDS = frozenset({ErrorKind.CONFIGURATION, ErrorKind.NO_DESTINATION})
# Errors that count against the integration's circuit breaker.
CIRCUIT_KINDS = ErrorKind.RETRYABLE | {ErrorKind.AUTH, ErrorKind.TIMEOUT, ErrorKind.CONNECTION_LOST}


# --- creating messages ----------------------------------------------------------------------------


def message_build(
    *,
    environment_id: int,
    channel: str,
    subscriber: Subscriber | None = None,
    subscriber_id: int | None = None,
    recipient: str | None = None,
    run: Run | None = None,
    step_id: str = "",
    template_version: TemplateVersion | None = None,
    template_version_id: int | None = None,
    locale: str = "",
    subject: str = "",
    body: str = "",
    data: dict[str, Any] | None = None,
) -> Message:
    """A new Message, not saved yet (save many with ``messages_create_bulk``).

    ``recipient`` defaults to the subscriber's address on the channel (``subscriber_recipient``).
    An in-app message is delivered by writing its inbox row: it starts ``sent`` through ``inbox``;
    every other channel starts ``queued`` for ``message_deliver``.
    """
    if recipient is None:
        recipient = subscriber_recipient(subscriber=subscriber, channel=channel) if subscriber is not None else ""
    fields: dict[str, Any] = {}
    if subscriber is not None:
        fields["subscriber"] = subscriber
    elif subscriber_id is not None:
        fields["subscriber_id"] = subscriber_id
    if template_version is not None:
        fields["template_version"] = template_version
    elif template_version_id is not None:
        fields["template_version_id"] = template_version_id
    if run is not None:
        fields["run"] = run
    if channel == "in_app":
        fields.update(status=Message.Status.SENT, provider="inbox", sent_at=timezone.now())
    return Message(
        environment_id=environment_id,
        channel=channel,
        step_id=step_id,
        locale=locale,
        recipient=recipient,
        subject=subject,
        body=body,
        data=data if data is not None else {},
        **fields,
    )


def messages_create_bulk(*, messages: Sequence[Message]) -> list[Message]:
    """Insert messages built by ``message_build``: one INSERT per 500, primary keys set on them."""
    return Message.objects.bulk_create(messages, batch_size=500)


def integrations_for(*, environment_id: int, channel: str) -> list[Integration]:
    """Active integrations of the channel in failover order."""
    return list(
        Integration.objects.filter(environment_id=environment_id, channel=channel, active=True).order_by(
            "priority", "id"
        )
    )


# --- claiming and finishing -------------------------------------------------------------------


def _claim(message_id: int, now: datetime) -> bool:
    """queued → sending, once, and only when a deferred retry is due."""
    return bool(
        Message.objects.filter(pk=message_id, status=Message.Status.QUEUED)
        .filter(Q(next_attempt_at__isnull=True) | Q(next_attempt_at__lte=now))
        .update(status=Message.Status.SENDING, next_attempt_at=None, updated_at=now)
    )


def _finish_failed(message: Message, error: str) -> None:
    now = timezone.now()
    update_counted(  # counted for analytics in the same statement (transaction) when it moves
        Message.objects.filter(pk=message.pk, status=Message.Status.SENDING),
        {
            "status": Message.Status.FAILED,
            "error": error[:5000],
            "next_attempt_at": None,
            "send_started_at": None,
            "updated_at": now,
        },
        dims=dims_of(message),
        metric=counters.FAILED,
        at=now,
    )
    message.status, message.error = Message.Status.FAILED, error[:5000]


def _defer(message: Message, *, until: datetime, error: str) -> None:
    """Back to queued until ``until``: ``messages_redrive`` (or the next task) sends it then."""
    Message.objects.filter(pk=message.pk, status=Message.Status.SENDING).update(
        status=Message.Status.QUEUED,
        next_attempt_at=until,
        error=error[:5000],
        send_started_at=None,
        updated_at=timezone.now(),
    )
    message.status, message.next_attempt_at = Message.Status.QUEUED, until
    logger.info("message %s deferred until %s: %s", message.pk, until.isoformat(), error[:200])


# A success may be recorded while the message is in doubt (its worker was presumed dead but was only
# slow), or queued for a resend of an in-doubt send: the provider's answer settles it.
_SETTLEABLE_BY_SUCCESS = Q(status__in=[Message.Status.SENDING, Message.Status.IN_DOUBT]) | Q(
    status=Message.Status.QUEUED, in_doubt_count__gt=0
)


def _finish_sent(message: Message, integration: Integration | None, provider: str, result: SendResult) -> None:
    now = timezone.now()
    provider_id = result.provider_message_id[:255]
    moved = update_counted(  # counted for analytics in the same statement (transaction) when it moves
        Message.objects.filter(_SETTLEABLE_BY_SUCCESS, pk=message.pk),
        {
            "status": Message.Status.SENT,
            "attempts": F("attempts") + 1,
            "provider": provider,
            "integration": integration,
            "provider_message_id": provider_id,
            "sent_at": now,
            "error": "",
            "next_attempt_at": None,
            "send_started_at": None,
            "updated_at": now,
        },
        dims=dims_of(message),
        metric=counters.SENT,
        at=now,
    )
    if not moved and provider_id:
        # A callback got there first (delivered, opened…): keep the provider's id for the next ones.
        Message.objects.filter(pk=message.pk, provider_message_id="").update(
            provider_message_id=provider_id, provider=provider, integration=integration, sent_at=now
        )
    message.status, message.provider, message.provider_message_id = Message.Status.SENT, provider, provider_id
    message.integration, message.sent_at, message.error, message.send_started_at = integration, now, "", None


def _record_attempt(
    message: Message,
    integration: Integration | None,
    provider: str,
    *,
    started: float,
    result: SendResult | None = None,
    error: ProviderError | None = None,
) -> None:
    if error is None:
        status = DeliveryAttempt.Status.SUCCESS
    else:
        status = DeliveryAttempt.Status.IN_DOUBT if error.in_doubt else DeliveryAttempt.Status.FAILED
    DeliveryAttempt.objects.create(
        message=message,
        integration=integration,
        provider=provider,
        status=status,
        response_code=(result.status_code if result else error.status_code if error else None),
        error_kind=error.kind if error else "",
        retryable=bool(error and error.retryable),
        response=(result.response if result else error.response if error else {}),
        error=str(error)[:5000] if error else "",
        duration_ms=int((time.monotonic() - started) * 1000),
    )
    delivery_observed(provider, time.monotonic() - started)
    message.attempts += 1
    if error is not None:
        # The call is over (a heartbeat too). A success is counted by the UPDATE that marks it sent.
        Message.objects.filter(pk=message.pk).update(
            attempts=F("attempts") + 1, send_started_at=None, updated_at=timezone.now()
        )
        message.send_started_at = None


def _still_ours(message: Message) -> bool:
    """After a wait: refresh the heartbeat, and make sure the message was not presumed dead meanwhile."""
    return bool(Message.objects.filter(pk=message.pk, status=Message.Status.SENDING).update(updated_at=timezone.now()))


def _begin_call(message: Message, integration: Integration | None, provider_name: str) -> bool:
    """Write ahead of a provider call: the heartbeat, and which integration is about to get the message.

    If the worker dies during the call, ``messages_redrive`` finds this and puts the message in
    doubt (rather than sending it again elsewhere). False: the message is no longer ours.
    """
    now = timezone.now()
    ours = Message.objects.filter(pk=message.pk, status=Message.Status.SENDING).update(
        send_started_at=now, integration=integration, provider=provider_name, updated_at=now
    )
    if ours:
        message.send_started_at, message.integration, message.provider = now, integration, provider_name
    return bool(ours)


# --- in doubt -----------------------------------------------------------------------------------


def _in_doubt_decision(
    message: Message,
    *,
    provider: Provider | None,
    provider_name: str,
    integration: Integration | None,
    rounds: int,
    elapsed: float,
    cfg: DeliveryConfig,
) -> tuple[bool, str]:
    """(resend?, why) for a message whose ``rounds``-th send ended in doubt.

    The category's ``in_doubt_policy``: ``drop`` never resends, ``resend`` always does, ``auto``
    (the default) resends when the category is critical (at least once) or when the provider
    drops a second request with the same idempotency key (within its window), else holds it (at
    most once). Never more than ``IN_DOUBT_RESENDS`` resends.
    """
    category = message_category(message=message)
    named = f"category '{category.key}'" if category else "no category"
    policy = category.in_doubt_policy if category else ""
    if rounds > cfg.in_doubt_resends:
        return False, f"resent {rounds - 1} time(s) already, the most allowed (IN_DOUBT_RESENDS)"
    if policy == IN_DOUBT_DROP:
        return False, f"{named} never resends (in_doubt_policy drop: at most once)"
    if policy == IN_DOUBT_RESEND:
        return True, f"{named} resends (in_doubt_policy resend: at least once)"
    dedupes = provider is not None and provider.deduplicates_for(integration)
    window = provider.dedupe_window if provider is not None else None
    # A resend comes at most BACKOFF_MAX later: it must still fall within the provider's memory.
    if dedupes and (window is None or elapsed + cfg.backoff_max < window):
        return True, f"{provider_name} drops a second request with the same idempotency key"
    if category is not None and category.critical:
        return True, f"{named} is critical (at least once)"
    return False, f"{named} is not critical and {provider_name} does not deduplicate (at most once)"


def _settle_in_doubt(
    message: Message,
    *,
    integration: Integration | None,
    provider_name: str,
    evidence: str,
    started_at: datetime | None,
    now: datetime | None = None,
    guard: Q | None = None,
    extra: dict[str, Any] | None = None,
) -> bool:
    """A send of this message may have reached ``integration``: resend it there later, or hold it.

    One conditional UPDATE from ``sending`` (plus ``guard``), so two processes settling the same
    message cannot both win. Returns whether this call settled it. The message's ``error`` says
    what happened and why it is (not) resent: the trace shows it.
    """
    cfg = delivery_config()
    now = now or timezone.now()
    rounds = message.in_doubt_count + 1
    elapsed = (now - started_at).total_seconds() if started_at else 0.0
    resend, why = _in_doubt_decision(
        message,
        provider=get_provider(message.channel, integration.provider if integration else "smtp"),
        provider_name=provider_name,
        integration=integration,
        rounds=rounds,
        elapsed=elapsed,
        cfg=cfg,
    )
    updates: dict[str, Any] = {
        "in_doubt_count": F("in_doubt_count") + 1,
        "send_started_at": None,
        "integration": integration,
        "provider": provider_name,
        "updated_at": now,
        **(extra or {}),
    }
    if resend:
        at = now + timedelta(seconds=_backoff(rounds, None, cfg))
        updates.update(status=Message.Status.QUEUED, next_attempt_at=at)
        error = f"in doubt: {evidence}; resending through {provider_name} with the same idempotency key: {why}"
    else:
        updates.update(status=Message.Status.IN_DOUBT, next_attempt_at=None)
        error = f"in doubt: {evidence}; not resent: {why}"
    updates["error"] = error[:5000]
    queryset = Message.objects.filter(pk=message.pk, status=Message.Status.SENDING)
    if guard is not None:
        queryset = queryset.filter(guard)
    if not queryset.update(**updates):
        return False
    message.status = updates["status"]
    message.in_doubt_count, message.error, message.send_started_at = rounds, updates["error"], None
    message.next_attempt_at, message.integration, message.provider = (
        updates["next_attempt_at"],
        integration,
        provider_name,
    )
    logger.warning("message %s in doubt (%s): %s", message.pk, "resend" if resend else "held", error[:300])
    return True


def _hold_in_doubt(message: Message, reason: str) -> None:
    """A message already in doubt that cannot be resent now: it stays in doubt, saying why."""
    error = f"in doubt: {reason}"[:5000]
    Message.objects.filter(pk=message.pk, status=Message.Status.SENDING).update(
        status=Message.Status.IN_DOUBT,
        next_attempt_at=None,
        send_started_at=None,
        error=error,
        updated_at=timezone.now(),
    )
    message.status, message.error = Message.Status.IN_DOUBT, error


# --- delivery -----------------------------------------------------------------------------------


def _backoff(failures: int, retry_after: float | None, cfg: DeliveryConfig) -> float:
    """Exponential backoff with jitter (half fixed, half random), never sooner than ``Retry-After``."""
    ceiling = min(cfg.backoff_max, cfg.backoff_base * (2 ** max(0, failures - 1)))
    delay = ceiling / 2 + random.uniform(0, ceiling / 2)
    return max(delay, retry_after or 0.0)


def _remove_dead_devices(device_ids: Sequence[int]) -> None:
    if device_ids:
        from apps.subscribers.services import devices_remove

        removed = devices_remove(device_ids=device_ids)
        logger.info("removed %d dead device(s)", removed)


@dataclass
class _Outcome:
    last_error: ProviderError | None = None
    reopen_at: datetime | None = None  # the earliest time a paused integration (open circuit, Retry-After) may be tried
    failures: Counter[int | None] = field(default_factory=Counter)
    # The message is in doubt at this integration: only it may send it again, never another.
    pinned: bool = False


def message_deliver(*, message_id: int, only_integration: Integration | None = None) -> Message | None:
    """Send one queued message through the environment's integrations, in priority order.

    Returns ``None`` when the message was not claimable (already taken, done, or not yet due).
    With no integration for email, Django's configured backend sends (the file backend on the
    embedded default). Every try writes a DeliveryAttempt. ``only_integration`` restricts the
    send to one integration (the admin's test send).
    """
    if not _claim(message_id, timezone.now()):
        return None
    message = Message.objects.select_related("subscriber", "integration").get(pk=message_id)
    _deliver_guarded(message, only_integration=only_integration)
    messages_settled([message])
    return message


def _deliver_guarded(
    message: Message, *, only_integration: Integration | None = None, made: _Made | None = None
) -> None:
    """Deliver a message this worker claimed; a crash settles it (in doubt if a call was under way)."""
    bind_message_log_context(message)  # its warnings carry the message, run and transaction ids
    try:
        _deliver_claimed(message, only_integration=only_integration, made=made)
    except Exception as exc:  # a bug must not leave the message in sending until it is presumed dead
        logger.exception("message %s: delivery crashed", message.pk)
        what = f"{type(exc).__name__}: {exc}"
        if message.send_started_at is not None:
            # Crashed during or right after a provider call, before its answer was recorded.
            _settle_in_doubt(
                message,
                integration=message.integration,
                provider_name=message.provider or "default",
                evidence=f"delivery crashed during the {message.provider or 'default'} call ({what})",
                started_at=message.send_started_at,
            )
        else:
            _defer(message, until=timezone.now() + timedelta(seconds=60), error=what)


def _deliver_claimed(message: Message, *, only_integration: Integration | None, made: _Made | None = None) -> None:
    cfg = delivery_config()
    pinned = message.in_doubt_count > 0 and only_integration is None
    if made is not None:  # a batch checked the message (fresh, not suppressed) and made its first call
        _continue_made(message, made, cfg)
        return
    age = (timezone.now() - message.created_at).total_seconds()
    if age > cfg.message_ttl and only_integration is None:
        expired = f"expired: not delivered within {cfg.message_ttl:.0f} s ({message.error})".strip()
        if pinned:
            _hold_in_doubt(message, f"{expired}; an earlier send may still have reached {message.provider}")
        else:
            _finish_failed(message, expired)
        return
    suppression = _suppression_of(message)
    if suppression is not None:
        _finish_failed(message, f"address inactive ({suppression.reason}): {message.recipient}")
        return
    if only_integration is not None:
        candidates: list[Integration | None] = [only_integration]
    elif pinned:
        # An earlier send may have reached this integration: only it may send the message again
        # (with the same idempotency key), never the next one in the failover order.
        integration = message.integration
        if integration is None and message.provider != "default":
            _hold_in_doubt(message, f"the integration that may have it ({message.provider}) was deleted; not resent")
            return
        if integration is not None and not integration.active:
            _hold_in_doubt(
                message,
                f"{integration.provider} (integration {integration.pk}), which may have it, is inactive; not resent",
            )
            return
        candidates = [integration]
    else:
        candidates = list(integrations_for(environment_id=message.environment_id, channel=message.channel))
        if not candidates and message.channel == "email":
            candidates = [None]  # Django's default email backend
    if not candidates:
        _finish_failed(message, f"no active {message.channel} integration")
        return
    _deliver_to(message, candidates, _Outcome(pinned=pinned), cfg)


def _continue_made(message: Message, made: _Made, cfg: DeliveryConfig) -> None:
    outcome = _Outcome(reopen_at=made.reopen_at)
    if _try_integration(message, made.candidates[0], outcome, cfg, made=made):
        return
    _deliver_to(message, made.candidates[1:], outcome, cfg, resume=False)


def _deliver_to(
    message: Message,
    candidates: list[Integration | None],
    outcome: _Outcome,
    cfg: DeliveryConfig,
    *,
    resume: bool = True,
) -> None:
    """Through ``candidates`` in order until one settles the message; then defer, hold or fail it.

    ``resume``: count the failures of earlier attempts (False: ``outcome`` already holds them).
    """
    pinned = outcome.pinned
    if message.attempts and resume:  # a re-driven message resumes where it left off
        for integration_id, status in (
            DeliveryAttempt.objects.filter(message=message)
            .exclude(status=DeliveryAttempt.Status.SUCCESS)
            .order_by("id")
            .values_list("integration_id", "status")
        ):
            if status == DeliveryAttempt.Status.IN_DOUBT:
                outcome.failures.clear()  # a resend gets its integration's retries afresh
            else:
                outcome.failures[integration_id] += 1
    for integration in candidates:
        done = _try_integration(message, integration, outcome, cfg)
        if done:
            return
    if outcome.reopen_at is not None and (outcome.reopen_at - message.created_at).total_seconds() <= cfg.message_ttl:
        # Some integration is paused (open circuit, long Retry-After) rather than done: wait for it.
        reason = str(outcome.last_error) if outcome.last_error else "every remaining provider's circuit is open"
        _defer(message, until=outcome.reopen_at, error=reason)
        return
    error = str(outcome.last_error) if outcome.last_error else "no provider could send"
    if pinned:
        integration = candidates[0]
        name = integration.provider if integration else "default"
        if outcome.last_error is not None and outcome.last_error.retryable:
            # This round surely sent nothing, but an earlier one may have: the policy decides again.
            _settle_in_doubt(
                message,
                integration=integration,
                provider_name=name,
                evidence=f"the resend through {name} did not get through ({error}); an earlier send may have",
                started_at=None,
            )
        else:
            _hold_in_doubt(
                message, f"the resend through {name} was refused ({error}); an earlier send may have reached it"
            )
        return
    _finish_failed(message, error)


@dataclass
class _Made:
    """A call a delivery batch already made for a fresh message, which failed: handled from here on
    as if ``_try_integration`` had made it (retries, failover, in doubt)."""

    error: ProviderError
    started: float  # time.monotonic() when the call started
    started_at: datetime | None  # the message's send_started_at for that call
    candidates: list[Integration | None]  # the called integration first, then the rest in failover order
    reopen_at: datetime | None  # the earliest reopening of an integration skipped for its open circuit


def _try_integration(
    message: Message,
    integration: Integration | None,
    outcome: _Outcome,
    cfg: DeliveryConfig,
    made: _Made | None = None,
) -> bool:
    """Try one integration with its retries. True when the message is settled (sent, failed or deferred).

    ``made``: the first call was already made (by a batch) and failed; continue from its error.
    """
    key = integration.pk if integration else None
    allowed = 1 + (integration.retries if integration else cfg.default_retries)
    provider_name = integration.provider if integration else "default"
    provider = get_provider(message.channel, integration.provider if integration else "smtp")
    if provider is None:
        outcome.last_error = ProviderError(
            f"unknown {message.channel} provider '{provider_name}'", kind=ErrorKind.CONFIGURATION
        )
        return False
    first_try = True
    first_ok = outcome.failures[key] == 0  # no failure of this integration in this delivery so far
    while outcome.failures[key] < allowed:
        result: SendResult | None = None
        error: ProviderError | None = None
        if made is not None:
            call_started_at, started, error = made.started_at, made.started, made.error
            made = None
            first_try = False
        else:
            now = timezone.now()
            if integration is not None:
                may_send, reopen_at = _circuit_allows(integration, now, cfg, just_loaded=first_try)
                first_try = False
                if not may_send:
                    if reopen_at and (outcome.reopen_at is None or reopen_at < outcome.reopen_at):
                        outcome.reopen_at = reopen_at
                    return False
                slot, _slept = _rate_limit_wait(integration, cfg)
                if slot is not None:
                    _defer(message, until=slot, error=f"rate limit of {integration.rate_limit}/s on {provider_name}")
                    return True
            if not _begin_call(message, integration, provider_name):
                return True  # presumed dead during a wait and taken over: whoever holds it now sends it
            call_started_at = message.send_started_at
            started = time.monotonic()
            try:
                result = _send(provider, message, integration)
            except ProviderError as failed:
                error = failed
        if error is not None:
            exc = error
            _record_attempt(message, integration, provider_name, started=started, error=exc)
            outcome.last_error = exc
            _remove_dead_devices(exc.dead_devices)
            if integration is not None and exc.kind in CIRCUIT_KINDS:
                _circuit_failure(integration, cfg)
            logger.warning("message %s: %s failed (%s): %s", message.pk, provider_name, exc.kind, exc)
            if exc.in_doubt:
                # The provider may have it: no retry elsewhere, no failover; the policy decides.
                _settle_in_doubt(
                    message,
                    integration=integration,
                    provider_name=provider_name,
                    evidence=f"{provider_name}: {exc}",
                    started_at=call_started_at,
                )
                return True
            outcome.failures[key] += 1
            first_ok = False
            if exc.kind in FAILOVER_KINDS:
                return False
            if not exc.retryable:
                if exc.kind == ErrorKind.INVALID_ADDRESS:
                    address_suppress(
                        environment_id=message.environment_id,
                        channel=message.channel,
                        address=message.recipient,
                        reason=ErrorKind.INVALID_ADDRESS,
                        detail=str(exc),
                        message=message,
                    )
                elif outcome.pinned:
                    return False  # refused, but an earlier send may have gone through: held
                _finish_failed(message, f"{provider_name}: {exc}")
                return True
            if outcome.failures[key] >= allowed:
                return False  # retries used up: fail over
            if exc.retry_after is not None and exc.retry_after > cfg.retry_after_max:
                # The provider wants a long pause: fail over rather than wait, and come back to it
                # then if no other integration could send.
                wait_until = timezone.now() + timedelta(seconds=exc.retry_after)
                if outcome.reopen_at is None or wait_until < outcome.reopen_at:
                    outcome.reopen_at = wait_until
                return False
            delay = _backoff(outcome.failures[key], exc.retry_after, cfg)
            if delay <= _max_wait(cfg.inline_wait_max):
                time.sleep(delay)
                if not _still_ours(message):
                    return True  # presumed dead meanwhile and taken over: whoever holds it now sends it
                continue
            _defer(message, until=timezone.now() + timedelta(seconds=delay), error=f"{provider_name}: {exc}")
            return True
        assert result is not None
        _record_attempt(message, integration, provider_name, started=started, result=result)
        if integration is not None and (integration.circuit_failures or integration.circuit_open_until or not first_ok):
            _circuit_success(integration)
        _remove_dead_devices(result.dead_devices)
        _finish_sent(message, integration, provider_name, result)
        if result.provider_message_id:
            _apply_early_events(message)
        return True
    return False


def _send(provider: Provider, message: Message, integration: Integration | None) -> SendResult:
    try:
        with heartbeat_during(lambda: _still_ours(message)):
            return provider.send(message, integration)
    except ProviderError:
        raise
    except Exception as exc:  # a provider library raising something unexpected: keep it on the attempt
        logger.exception("message %s: provider %s raised", message.pk, provider.name)
        # Unknown when it failed, so possibly after the request went out: in doubt.
        raise ProviderError(f"{type(exc).__name__}: {exc}", kind=ErrorKind.UNKNOWN) from exc


def message_send_now(
    *,
    environment_id: int,
    channel: str,
    recipient: str,
    subject: str = "",
    body: str = "",
    data: dict[str, Any] | None = None,
    subscriber_id: int | None = None,
    template_version_id: int | None = None,
    locale: str = "",
) -> Message:
    """Send one message outside any workflow run (an admin test send), synchronously.

    The message and its attempts are recorded like any other; the returned message carries the
    final status and error (``queued`` with ``next_attempt_at`` if a retry had to be deferred).
    """
    message = message_build(
        environment_id=environment_id,
        channel=channel,
        recipient=recipient,
        subject=subject,
        body=body,
        data=data or {},
        subscriber_id=subscriber_id,
        template_version_id=template_version_id,
        locale=locale,
    )
    messages_create_bulk(messages=[message])
    message_deliver(message_id=message.pk)
    message.refresh_from_db()
    return message


def message_resend(*, message: Message) -> Message:
    """Send a message again as a new message (same content and recipient), queued and woken now.

    A new row keeps the original's history intact; ``data.resend_of`` links the two.
    """
    from apps.core.tasks import enqueue_on_commit

    with transaction.atomic():
        copy = message_build(
            environment_id=message.environment_id,
            step_id=message.step_id,
            channel=message.channel,
            subscriber_id=message.subscriber_id,
            template_version_id=message.template_version_id,
            locale=message.locale,
            recipient=message.recipient,
            subject=message.subject,
            body=message.body,
            data={**(message.data or {}), "resend_of": message.pk},
        )
        messages_create_bulk(messages=[copy])
        enqueue_on_commit(DELIVER_TASK, [copy.pk])
    return copy


def messages_deliver(*, message_ids: Sequence[int]) -> None:
    """Deliver queued messages as one batch; past the task budget, hand the rest to a fresh task.

    The batch claims its messages in one statement, checks suppressions and loads integrations once,
    and sends fresh messages (first try, nothing in doubt) of one environment and channel through
    one integration on one open connection (``Provider.connection``), ``SEND_WINDOW`` messages at a
    time: one UPDATE records ahead that the window's calls may start (the in-doubt write-ahead), and
    after the calls one transaction records their attempts and statuses and writes ahead the next
    window. Whatever is not plain — a failed call, a retry, a resend in doubt, an integration
    whose circuit is half-open or that has a rate limit — goes message by message through the
    same code as ``message_deliver``.
    """
    _Batch(list(dict.fromkeys(message_ids))).run()


CLAIM_CHUNK = 500  # messages claimed per statement (and held in memory) by a batch


class _HandOff(Exception):
    """The task budget is spent: what is left goes to a fresh task."""


class _Batch:
    def __init__(self, ids: list[int]) -> None:
        self.cfg = delivery_config()
        self.ids = ids
        self.deadline = time.monotonic() + self.cfg.task_budget
        self.window_size = max(1, int(self.cfg.send_window))
        self.started = 0  # messages this task began to deliver (at least one before any hand-off)
        self.begun: list[Message] = []  # those messages (their final state is counted at the end)
        # Claimed by this task and not begun yet: released on a hand-off, kept alive by heartbeats.
        self.held: dict[int, Message] = {}
        self.beat_every = send_heartbeat_seconds() / 4
        self.last_beat = time.monotonic()

    # --- the loop ---------------------------------------------------------------------------------

    def run(self) -> None:
        try:
            self._run()
        finally:
            messages_settled(self.begun)

    def _run(self) -> None:
        for start in range(0, len(self.ids), CLAIM_CHUNK):
            if self.started and time.monotonic() > self.deadline:
                self._hand_off(self.ids[start:])
                return
            try:
                self._deliver_chunk(self.ids[start : start + CLAIM_CHUNK])
            except _HandOff:
                self._hand_off(self.ids[start + CLAIM_CHUNK :])
                return

    def _check_budget(self) -> None:
        if self.started and time.monotonic() > self.deadline:
            raise _HandOff

    def _begin(self, message: Message) -> bool:
        """Take a held message to deliver it now; False if it is no longer this task's."""
        self._check_budget()
        if self.held.pop(message.pk, None) is None:
            return False
        self.started += 1
        self.begun.append(message)
        return True

    def _hand_off(self, unclaimed: list[int]) -> None:
        """Release what this task claimed but did not begin (nothing was sent for it) and enqueue it
        with the ids it never claimed, in their original order."""
        from apps.core.tasks import enqueue

        released = list(self.held)
        if released:
            Message.objects.filter(pk__in=released, status=Message.Status.SENDING).update(
                status=Message.Status.QUEUED, send_started_at=None, next_attempt_at=None, updated_at=timezone.now()
            )
            self.held.clear()
        order = {pk: index for index, pk in enumerate(self.ids)}
        rest = sorted({*released, *unclaimed}, key=order.__getitem__)
        if rest:
            enqueue(DELIVER_TASK, rest)

    def _beat_if_due(self) -> None:
        """Refresh the heartbeat of every held message (so none is presumed dead while it waits its
        turn); forget those no longer this task's."""
        if not self.held or time.monotonic() - self.last_beat < self.beat_every:
            return
        ours = _update_returning(list(self.held), {"updated_at": timezone.now()}, status=Message.Status.SENDING)
        for pk in [pk for pk in self.held if pk not in ours]:
            del self.held[pk]
        self.last_beat = time.monotonic()

    def _deliver_chunk(self, chunk: list[int]) -> None:
        now = timezone.now()
        claimed = _update_returning(
            chunk,
            {"status": Message.Status.SENDING.value, "next_attempt_at": None, "updated_at": now},
            status=Message.Status.QUEUED,
            due_by=now,
        )
        if not claimed:
            return
        loaded = Message.objects.select_related("subscriber", "integration").in_bulk(list(claimed))
        messages = [loaded[pk] for pk in chunk if pk in loaded]
        self.held.update((m.pk, m) for m in messages)
        self.last_beat = time.monotonic()
        fresh: list[Message] = []
        other: list[Message] = []
        for message in messages:
            age = (now - message.created_at).total_seconds()
            plain = message.attempts == 0 and message.in_doubt_count == 0 and age <= self.cfg.message_ttl
            (fresh if plain else other).append(message)
        suppressed = _suppressions_of(fresh)
        groups: dict[tuple[int, str], list[Message]] = {}
        for message in fresh:
            suppression = suppressed.get(message.pk)
            if suppression is not None:
                if self._begin(message):
                    _finish_failed(message, f"address inactive ({suppression.reason}): {message.recipient}")
                continue
            groups.setdefault((message.environment_id, message.channel), []).append(message)
        integrations = _integrations_of(groups)
        for (environment_id, channel), group in groups.items():
            candidates: list[Integration | None] = list(integrations.get((environment_id, channel), []))
            if not candidates and channel == "email":
                candidates = [None]  # Django's default email backend
            self._deliver_group(group, candidates, now)
        self._one_by_one(other)

    def _one_by_one(self, messages: Sequence[Message]) -> None:
        """The per-message path (exactly ``message_deliver`` after its claim)."""
        for message in messages:
            self._beat_if_due()
            if self._begin(message):
                _deliver_guarded(message)

    def _deliver_group(self, group: list[Message], candidates: list[Integration | None], now: datetime) -> None:
        """Fresh messages of one environment and channel: through the first integration the failover
        order would use now, on one connection, unless that choice needs the per-message path."""
        if not candidates:
            for message in group:
                if self._begin(message):
                    _finish_failed(message, f"no active {message.channel} integration")
            return
        index, reopen_at = _plain_choice(candidates, now)
        if index is None:
            self._one_by_one(group)
            return
        integration = candidates[index]
        provider = get_provider(group[0].channel, integration.provider if integration else "smtp")
        if provider is None:
            self._one_by_one(group)
            return
        name = integration.provider if integration else "default"
        queue = list(group)
        failed: tuple[Message, _Made] | None = None
        with provider.connection(integration, group):
            window = self._write_ahead(queue[: self.window_size], integration, name)
            del queue[: self.window_size]
            while window:
                sent: list[tuple[Message, SendResult, int]] = []
                unsent: list[Message] = []
                try:
                    for position, message in enumerate(window):
                        self._beat_if_due()
                        if not self._begin(message):
                            continue
                        started = time.monotonic()
                        try:
                            result = _send(provider, message, integration)
                        except ProviderError as exc:
                            made = _Made(exc, started, message.send_started_at, candidates[index:], reopen_at)
                            failed = (message, made)
                            unsent = window[position + 1 :]
                            break
                        sent.append((message, result, int((time.monotonic() - started) * 1000)))
                except _HandOff:
                    self._settle_window(sent, integration, name, next_window=[], unsent=[])
                    raise
                next_window = [] if failed else queue[: self.window_size]
                del queue[: len(next_window)]
                window = self._settle_window(sent, integration, name, next_window=next_window, unsent=unsent)
                if failed:
                    break
        if failed is not None:
            message, made = failed
            # The failed message, then the rest one by one: each rechecks the circuit and fails over.
            _deliver_guarded(message, made=made)
            self._one_by_one([m for m in group if m.pk in self.held])

    def _write_ahead(self, window: list[Message], integration: Integration | None, name: str) -> list[Message]:
        """Record that calls for these messages may start now (in doubt if the worker dies)."""
        if not window:
            return []
        now = timezone.now()
        ours = _update_returning([m.pk for m in window], _ahead_assignments(integration, name, now), status="sending")
        return self._keep(window, ours, integration, name, now)

    def _keep(
        self, window: list[Message], ours: set[int], integration: Integration | None, name: str, now: datetime
    ) -> list[Message]:
        """The window's messages whose write-ahead took; the others were taken over (presumed dead
        while they waited) and are not this task's any more."""
        kept = []
        for message in window:
            if message.pk in ours:
                message.send_started_at, message.integration, message.provider = now, integration, name
                kept.append(message)
            else:
                self.held.pop(message.pk, None)
        return kept

    def _settle_window(
        self,
        sent: list[tuple[Message, SendResult, int]],
        integration: Integration | None,
        name: str,
        *,
        next_window: list[Message],
        unsent: list[Message],
    ) -> list[Message]:
        """One transaction: the window's successes, the write-ahead taken back from messages that were
        not called, and the next window's write-ahead. If it cannot be recorded, every message the
        provider accepted is settled in doubt (it may not be sent again elsewhere)."""
        now = timezone.now()
        ahead = [m.pk for m in next_window]
        if sent:
            delivery_observed_many(name, [ms / 1000 for _, _, ms in sent])
        try:
            if sent and not unsent and connection.vendor == "postgresql":
                ours = _record_sent(sent, integration, name, ahead=ahead, ahead_at=now)  # one statement
            else:
                with transaction.atomic():
                    if sent:
                        ours = _record_sent(sent, integration, name, ahead=ahead, ahead_at=now)
                    else:
                        ours = _update_returning(ahead, _ahead_assignments(integration, name, now), status="sending")
                    if unsent:
                        ids = [m.pk for m in unsent]
                        Message.objects.filter(pk__in=ids, status=Message.Status.SENDING).update(
                            send_started_at=None, updated_at=now
                        )
                        for message in unsent:
                            message.send_started_at = None
            return self._keep(next_window, ours, integration, name, now)
        except Exception as exc:
            logger.exception("delivery batch: recording %d send(s) through %s failed", len(sent), name)
            what = f"{type(exc).__name__}: {exc}"
            for message, _result, _ms in sent:
                _settle_in_doubt(
                    message,
                    integration=integration,
                    provider_name=name,
                    evidence=f"delivery crashed during the {name} call ({what})",
                    started_at=message.send_started_at,
                )
            for message in unsent:
                message.send_started_at = None
            return self._write_ahead(next_window, integration, name)


def _ahead_assignments(integration: Integration | None, name: str, now: datetime) -> dict[str, Any]:
    return {
        "send_started_at": now,
        "integration_id": integration.pk if integration else None,
        "provider": name,
        "updated_at": now,
    }


def _plain_choice(candidates: list[Integration | None], now: datetime) -> tuple[int | None, datetime | None]:
    """Which candidate the failover order sends a fresh message through now, when that needs no
    per-message decision: (its index, the earliest reopening of an open circuit skipped on the way).
    ``None``: a half-open circuit (one probe), a rate limit, or every circuit open."""
    reopen_at: datetime | None = None
    for index, integration in enumerate(candidates):
        if integration is None:
            return index, reopen_at
        if integration.rate_limit and integration.rate_limit > 0:
            return None, None
        open_until = integration.circuit_open_until
        if open_until is None:
            return index, reopen_at
        if open_until <= now:
            return None, None  # half-open
        reopen_at = open_until if reopen_at is None else min(reopen_at, open_until)
    return None, None


def _suppressions_of(messages: Sequence[Message]) -> dict[int, Suppression]:
    """The suppression of each message's address (one query), as ``_suppression_of`` per message."""
    keys = {
        m.pk: (m.environment_id, m.channel, address_normalize(channel=m.channel, address=m.recipient))
        for m in messages
        if m.channel in SUPPRESSIBLE_CHANNELS
    }
    if not keys:
        return {}
    rows = Suppression.objects.filter(
        environment_id__in={k[0] for k in keys.values()},
        channel__in={k[1] for k in keys.values()},
        address__in={k[2] for k in keys.values()},
    )
    found = {(s.environment_id, s.channel, s.address): s for s in rows}
    return {pk: found[key] for pk, key in keys.items() if key in found}


def _integrations_of(groups: dict[tuple[int, str], list[Message]]) -> dict[tuple[int, str], list[Integration]]:
    """Active integrations per (environment, channel) in failover order (one query)."""
    if not groups:
        return {}
    found: dict[tuple[int, str], list[Integration]] = {}
    rows = Integration.objects.filter(
        environment_id__in={env for env, _ in groups}, channel__in={channel for _, channel in groups}, active=True
    ).order_by("priority", "id")
    for integration in rows:
        found.setdefault((integration.environment_id, integration.channel), []).append(integration)
    return found


def _record_sent(
    sent: list[tuple[Message, SendResult, int]],
    integration: Integration | None,
    name: str,
    *,
    ahead: Sequence[int] = (),
    ahead_at: datetime | None = None,
) -> set[int]:
    """What ``_record_attempt`` + ``_finish_sent`` + ``_apply_early_events`` do, for many messages,
    plus the write-ahead of the ``ahead`` messages (the next window): returns the ids it took.

    On PostgreSQL one statement (data-modifying CTEs: atomic, one round trip): the attempts' INSERT,
    the messages' UPDATE, the write-ahead and the look for early callbacks. Elsewhere the same as
    separate statements (the caller holds a transaction). Plain SQL: compiling the ORM's CASE over a
    window costs more than running it."""
    now = ahead_at or timezone.now()
    quote = connection.ops.quote_name
    at = connection.ops.adapt_datetimefield_value(now)
    integration_id = integration.pk if integration is not None else None
    response_field = DeliveryAttempt._meta.get_field("response")
    columns = (
        "message_id, integration_id, provider, status, response_code, error_kind, retryable, response, error, "
        "duration_ms, created_at"
    )
    values: list[Any] = []
    for message, result, duration_ms in sent:
        values += [
            message.pk,
            integration_id,
            name,
            DeliveryAttempt.Status.SUCCESS.value,
            result.status_code,
            "",
            False,
            response_field.get_db_prep_save(result.response, connection),
            "",
            duration_ms,
            at,
        ]
    row = "(" + ", ".join(["%s"] * 11) + ")"
    provider_ids = {message.pk: result.provider_message_id[:255] for message, result, _ in sent}
    ids = list(provider_ids)
    settleable = "(status IN (%s, %s) OR (status = %s AND in_doubt_count > 0))"  # as _SETTLEABLE_BY_SUCCESS
    cases = " ".join(["WHEN %s THEN %s"] * len(ids))
    update = (
        f"UPDATE {quote(Message._meta.db_table)} SET status = %s, attempts = attempts + 1, provider = %s, "
        f"integration_id = %s, provider_message_id = CASE id {cases} ELSE '' END, sent_at = %s, error = '', "
        f"next_attempt_at = NULL, send_started_at = NULL, updated_at = %s "
        f"WHERE id IN ({', '.join(['%s'] * len(ids))}) AND {settleable}"
    )
    update_params: list[Any] = [Message.Status.SENT.value, name, integration_id]
    for pk, value in provider_ids.items():
        update_params += [pk, value]
    update_params += [at, at, *ids]
    update_params += [Message.Status.SENDING.value, Message.Status.IN_DOUBT.value, Message.Status.QUEUED.value]
    insert = f"INSERT INTO {quote(DeliveryAttempt._meta.db_table)} ({columns}) VALUES {', '.join([row] * len(sent))}"
    with_ids = [message for message, _, _ in sent if provider_ids[message.pk]]
    early: set[tuple[int, str]] = set()
    ours: set[int] = set()
    if connection.vendor == "postgresql":
        table = quote(Message._meta.db_table)
        # The messages that moved to sent are counted in the same statement (analytics).
        counted, counted_params = counted_rows_sql(
            source="sent", metric=counters.SENT, at=now, dims={m.pk: dims_of(m) for m, _, _ in sent}
        )
        parts = [
            f"WITH attempt AS ({insert} RETURNING 1), sent AS ({update} RETURNING id), "
            f"counted AS ({counted} RETURNING 1)",
            "SELECT 's'::text, id::bigint, NULL::text FROM sent",
        ]
        params = [*values, *update_params, *counted_params]
        if ahead:
            assignments = _ahead_assignments(integration, name, now)
            parts[0] += (
                f", ahead AS (UPDATE {table} SET {', '.join(f'{quote(c)} = %s' for c in assignments)} "
                f"WHERE status = %s AND id IN ({', '.join(['%s'] * len(ahead))}) RETURNING id)"
            )
            params += [*assignments.values(), Message.Status.SENDING.value, *ahead]
            parts.append("SELECT 'a', id::bigint, NULL FROM ahead")
        if with_ids:
            envs = sorted({m.environment_id for m in with_ids})
            pids = sorted({provider_ids[m.pk] for m in with_ids})
            parts.append(
                f"SELECT 'e', environment_id::bigint, provider_message_id::text "
                f"FROM {quote(MessageEvent._meta.db_table)} WHERE message_id IS NULL "
                f"AND environment_id IN ({', '.join(['%s'] * len(envs))}) "
                f"AND provider_message_id IN ({', '.join(['%s'] * len(pids))})"
            )
            params += [*envs, *pids]
        with connection.cursor() as cursor:
            cursor.execute(f"{parts[0]} {' UNION ALL '.join(parts[1:])}", params)
            rows = cursor.fetchall()
        moved = sum(1 for kind, _, _ in rows if kind == "s")
        ours = {int(pk) for kind, pk, _ in rows if kind == "a"}
        early = {(int(env), pid) for kind, env, pid in rows if kind == "e"}
    else:
        with connection.cursor() as cursor:
            cursor.execute(insert, values)
            if _RETURNING:
                cursor.execute(f"{update} RETURNING id", update_params)
                moved_ids = {int(row[0]) for row in cursor.fetchall()}
            else:  # pragma: no cover - SQLite older than 3.35: this statement's rows carry its sent_at
                cursor.execute(update, update_params)
                moved_ids = set(
                    Message.objects.filter(pk__in=ids, status=Message.Status.SENT, sent_at=now).values_list(
                        "pk", flat=True
                    )
                )
        moved = len(moved_ids)
        tally = Tally()  # the caller holds the transaction
        for message, _, _ in sent:
            if message.pk in moved_ids:
                tally.add_dims(dims_of(message), at=now, metric=counters.SENT)
        tally.write()
        if ahead:
            ours = _update_returning(ahead, _ahead_assignments(integration, name, now), status="sending")
    if moved < len(ids):
        # A callback got there first for some (delivered, opened…): keep the provider's id for the next ones.
        for pk, value in provider_ids.items():
            if value:
                Message.objects.filter(pk=pk, provider_message_id="").update(
                    provider_message_id=value, provider=name, integration=integration, sent_at=now
                )
    dead: list[int] = []
    for message, result, _ in sent:
        message.status, message.provider, message.provider_message_id = (
            Message.Status.SENT,
            name,
            provider_ids[message.pk],
        )
        message.integration, message.sent_at, message.error, message.send_started_at = integration, now, "", None
        message.attempts += 1
        dead.extend(result.dead_devices)
    if integration is not None and (integration.circuit_failures or integration.circuit_open_until):
        _circuit_success(integration)
        integration.circuit_failures, integration.circuit_open_until = 0, None
    _remove_dead_devices(dead)
    if with_ids and connection.vendor != "postgresql":
        early = set(
            MessageEvent.objects.filter(
                environment_id__in={m.environment_id for m in with_ids},
                provider_message_id__in={m.provider_message_id for m in with_ids},
                message__isnull=True,
            ).values_list("environment_id", "provider_message_id")
        )
    for message in with_ids:
        if (message.environment_id, message.provider_message_id) in early:
            _apply_early_events(message)
    return ours


def _update_returning(
    ids: Sequence[int], assignments: dict[str, Any], *, status: str, due_by: datetime | None = None
) -> set[int]:
    """``UPDATE`` the messages among ``ids`` that are in ``status`` (and due by ``due_by``, when
    given); the ids it changed. One statement (``RETURNING``); on SQLite older than 3.35 one per id."""
    if not ids:
        return set()
    due = Q(next_attempt_at__isnull=True) | Q(next_attempt_at__lte=due_by) if due_by is not None else Q()
    if not _RETURNING:  # pragma: no cover - SQLite older than 3.35
        return {pk for pk in ids if Message.objects.filter(due, pk=pk, status=status).update(**assignments)}
    quote = connection.ops.quote_name
    table = quote(Message._meta.db_table)
    adapt = connection.ops.adapt_datetimefield_value
    set_sql = ", ".join(f"{quote(column)} = %s" for column in assignments)
    params: list[Any] = [adapt(v) if isinstance(v, datetime) else v for v in assignments.values()]
    where = f"status = %s AND id IN ({', '.join(['%s'] * len(ids))})"
    params += [str(status), *ids]
    if due_by is not None:
        where += " AND (next_attempt_at IS NULL OR next_attempt_at <= %s)"
        params.append(adapt(due_by))
    with connection.cursor() as cursor:
        cursor.execute(f"UPDATE {table} SET {set_sql} WHERE {where} RETURNING id", params)
        return {int(row[0]) for row in cursor.fetchall()}


def messages_redrive(*, now: datetime, limit: int = 5000) -> list[int]:
    """The message ids to enqueue now; called every second on every worker host (the ticker).

    1. Sends presumed dead (``sending`` with no heartbeat for ``SEND_HEARTBEAT_SECONDS``): one that
       died during a provider call goes in doubt and its category's policy decides (resend to the
       same integration later, or hold); one that died outside a call is simply queued again.
    2. Queued messages whose ``next_attempt_at`` has come (deferred retries, resends): marked as
       handed out (``next_attempt_at`` cleared) in the same statement that selects them, so
       concurrent callers never get the same id, and the next call does not return it again unless
       it becomes due again. Each step is one indexed query when there is nothing to do.
    """
    stale_before = now - timedelta(seconds=send_heartbeat_seconds())
    _settle_dead_sends(stale_before=stale_before, now=now, limit=min(limit, 500))
    due = _take_due(now=now, limit=limit)
    return sorted({*due, *_take_lost(now=now, limit=limit)})


def _take_lost(*, now: datetime, limit: int) -> list[int]:
    """Queued messages whose delivery task was lost (a killed cluster's prefetched tasks, a Redis
    that restarted empty): not handed out for ``STALL_SECONDS``. Their ``updated_at`` is bumped in
    the same statement, so each is handed out again at most once per period, by one caller."""
    from apps.core.db import update_returning_ids

    return update_returning_ids(
        table=Message._meta.db_table,
        assignments={"updated_at": now},
        where="status = %s AND next_attempt_at IS NULL AND updated_at < %s AND channel <> %s",
        params=[Message.Status.QUEUED, now - timedelta(seconds=settings.CLARION["STALL_SECONDS"]), "in_app"],
        order_by="updated_at",
        limit=limit,
    )


def messages_requeue_stalled(*, stalled_before: datetime) -> list[int]:
    """What the minute sweeper should (re-)deliver: due retries and lost tasks (queued, not handed
    out since ``stalled_before``), after settling dead sends by the same in-doubt rule as
    ``messages_redrive`` (never a send whose heartbeat is fresher than ``SEND_HEARTBEAT_SECONDS``).
    """
    now = timezone.now()
    stale_before = min(stalled_before, now - timedelta(seconds=send_heartbeat_seconds()))
    _settle_dead_sends(stale_before=stale_before, now=now, limit=5000)
    due = _take_due(now=now, limit=5000)
    lost = list(
        Message.objects.filter(
            status=Message.Status.QUEUED, next_attempt_at__isnull=True, updated_at__lt=stalled_before
        )
        .exclude(channel="in_app")
        .order_by("pk")
        .values_list("pk", flat=True)[:5000]
    )
    return sorted({*due, *lost})


def _settle_dead_sends(*, stale_before: datetime, now: datetime, limit: int) -> None:
    """``sending`` messages whose heartbeat stopped before ``stale_before``: their worker is gone."""
    rows = list(
        Message.objects.filter(status=Message.Status.SENDING, updated_at__lt=stale_before)
        .select_related("integration")
        .order_by("updated_at")[:limit]
    )
    if not rows:
        return
    idle = [m.pk for m in rows if m.send_started_at is None]
    if idle:  # died between calls (claiming, waiting): nothing reached a provider since the last answer
        Message.objects.filter(
            pk__in=idle, status=Message.Status.SENDING, updated_at__lt=stale_before, send_started_at__isnull=True
        ).update(status=Message.Status.QUEUED, next_attempt_at=now, updated_at=now)
    for message in rows:
        started_at = message.send_started_at
        if started_at is None:
            continue
        name = message.provider or (message.integration.provider if message.integration else "default")
        evidence = (
            f"the worker stopped during the {name} call started at {started_at.isoformat()} "
            f"(no heartbeat since {message.updated_at.isoformat()})"
        )
        settled = _settle_in_doubt(
            message,
            integration=message.integration,
            provider_name=name,
            evidence=evidence,
            started_at=started_at,
            now=now,
            guard=Q(updated_at__lt=stale_before, send_started_at=started_at),
            extra={"attempts": F("attempts") + 1},
        )
        if settled:
            DeliveryAttempt.objects.create(
                message=message,
                integration=message.integration,
                provider=name,
                status=DeliveryAttempt.Status.IN_DOUBT,
                error_kind=ErrorKind.WORKER_DIED,
                error=evidence,
                duration_ms=max(0, int((message.updated_at - started_at).total_seconds() * 1000)),
            )


_RETURNING = connection.vendor == "postgresql" or sqlite3.sqlite_version_info >= (3, 35)


def _take_due(*, now: datetime, limit: int) -> list[int]:
    """Queued messages due by ``now``: clear their ``next_attempt_at`` and return their ids, at once.

    ``UPDATE … RETURNING`` over a ``FOR UPDATE SKIP LOCKED`` subquery on PostgreSQL (concurrent
    callers take disjoint rows without waiting); on SQLite writers are serialized, so the same
    statement is atomic there too.
    """
    if not _RETURNING:  # pragma: no cover - SQLite older than 3.35
        ids = list(
            Message.objects.filter(status=Message.Status.QUEUED, next_attempt_at__lte=now)
            .order_by("next_attempt_at")
            .values_list("pk", flat=True)[:limit]
        )
        Message.objects.filter(pk__in=ids, status=Message.Status.QUEUED, next_attempt_at__lte=now).update(
            next_attempt_at=None, updated_at=now
        )
        return sorted(ids)
    table = connection.ops.quote_name(Message._meta.db_table)
    lock = " FOR UPDATE SKIP LOCKED" if connection.vendor == "postgresql" else ""
    at = connection.ops.adapt_datetimefield_value(now)
    queued = Message.Status.QUEUED.value
    sql = (
        f"UPDATE {table} SET next_attempt_at = NULL, updated_at = %s "
        f"WHERE id IN (SELECT id FROM {table} WHERE status = %s AND next_attempt_at <= %s "
        f"ORDER BY next_attempt_at LIMIT %s{lock}) "
        "AND status = %s AND next_attempt_at <= %s RETURNING id"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, [at, queued, at, limit, queued, at])
        return sorted(row[0] for row in cursor.fetchall())
