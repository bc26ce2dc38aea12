"""Every reason code the engine writes on a step decision (StepRun.reason), in plain words.

The code is the machine-readable answer (stable, documented, what the API returns); the words are
what the console shows beside it when the decision carries no ``detail["message"]`` of its own.
A new code in the engine needs its words here: tests/events/test_timeline.py reads the engine's
source for every code it writes and fails on one missing from ``REASON_WORDS``.
"""

from __future__ import annotations

from typing import Any

REASON_WORDS: dict[str, str] = {
    # the walker (engine/walker.py) and branch steps
    "condition_false": "the step's condition was false, so the step was skipped",
    "condition_error": "the condition could not be evaluated; the run stopped as failed",
    "branch_taken": "this branch's condition was true; the run followed it",
    "branch_else": "no branch's condition was true; the run followed the 'else' steps",
    "branch_ended": "the end of the branch was reached; the run finished",
    "exit": "an exit step ended the run here",
    # channel steps (steps/channel.py)
    "queued": "the message was created and handed to delivery",
    "sent": "the in-app message was put in the subscriber's inbox",
    "preference": "the subscriber's preferences turn this channel off for this notification",
    "no_address": "the subscriber has no address for this channel",
    "quiet_hours": "the subscriber's quiet hours: the message waits until they end",
    "template_not_published": "the step's template has no published version; nothing was sent",
    "render_error": "the template could not be rendered with this event's data; nothing was sent",
    "frequency_preference": "the subscriber chose a digest for this category: the message was held for it",
    "frequency_cap": "over the channel's frequency cap: the message was held for the category's digest",
    # delay steps (steps/delay.py)
    "delay": "waiting for the delay to end",
    "delay_ended": "the delay ended and the run went on",
    "delay_timestamp_missing": "the payload has no timestamp to wait until, so the delay was skipped",
    "delay_timestamp_invalid": "the payload's timestamp could not be read, so the delay was skipped",
    "delay_timestamp_past": "the timestamp to wait until had already passed, so the delay was skipped",
    "within_allowed_time": "already inside the allowed sending time, so no wait was needed",
    # digest steps (steps/digest.py, digests.py)
    "digest_joined": "the event joined a digest that is collecting; the digest sends when it closes",
    "digest_sent": "the digest closed and this run sent it, with every event it collected",
    "digest_merged": "this event went out inside another run's digest",
    "digest_lookback_quiet": "nothing was sent for this digest recently, so this event goes out at once",
    "digest_lookback_passthrough": "the event went on at once instead of waiting for a digest",
    # escalation steps (steps/escalate.py)
    "escalation_wait": "waiting before escalating to the next channel",
    "escalation_stopped": "the subscriber engaged, so the escalation stopped",
    # throttle steps (steps/throttle.py)
    "under_limit": "under the throttle's limit: the run went on",
    "throttled": "over the throttle's limit: the run stopped here",
    # cancellation (engine/cancel.py) and the engine itself (engine/chunks.py)
    "cancelled_by_api": "the event was cancelled (API or console) while this run was waiting",
    "cancelled_by_key": "the event was cancelled by its cancellation key while this run was waiting",
    "engine_error": "an unexpected error in the engine stopped the run as failed",
}


def reason_in_words(reason: str, detail: Any) -> str:
    """What the decision means: the step's own message when it gave one (it names the channel, the
    rule, the cap...), else the words for its reason code, else the code itself."""
    message = detail.get("message") if isinstance(detail, dict) else None
    if message:
        return str(message)
    return REASON_WORDS.get(reason, reason or "—")
