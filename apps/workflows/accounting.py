"""What a finished run did with each message of the "CPaaS only" baseline (the savings report).

The baseline sends every channel step of the run's workflow version — every branch arm, every
escalation stage — to the recipient at once. When a run reaches a terminal state, each of those
baseline messages gets exactly one outcome, read from the engine's own record of the run
(``Run.step_results``, the position it ended at, its status): ``sent`` (a Message was created),
a reason that names the lever that avoided it, or a reason counted as "other" (cancelled, failed).

Everything here is pure: the compiled program and the step results are in memory wherever a run
finishes (the chunk's commit, the digest members' completion, a cancellation), so counting a
finished run costs no query; ``apps.analytics.savings`` reads the same outcomes back for the
drill-down, so the report and its runs agree by construction.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import datetime
from typing import Any, NamedTuple

from apps.analytics.counters import Tally
from apps.core.channels import CHANNELS
from apps.workflows.models import Run

logger = logging.getLogger(__name__)

# A channel step's type is its channel's name (as ``steps.channel.CHANNEL_STEP_TYPES``; not imported
# from there: the step types import this module).
CHANNEL_STEP_TYPES = {channel: channel for channel in CHANNELS}

SENT = "sent"

# The engine's reason → the lever that avoided the message. Order: how the report lists levers.
LEVER_OF_REASON: dict[str, str] = {
    "preference": "preference",  # the subscriber turned the channel (or category) off
    "unsubscribed": "unsubscribed",  # unsubscribed from everything non-critical
    "digest_merged": "digest",  # merged into a digest another run of the bucket sent
    "frequency_preference": "digest",  # held for the daily/weekly digest the subscriber chose
    "frequency_cap": "frequency_cap",  # held for the category digest: over a frequency cap
    "throttled": "throttle",  # a throttle step ended the run
    "escalation_stopped": "escalation",  # the subscriber engaged on an earlier (cheaper) channel
    "no_address": "no_address",  # no address on the channel, or the address is suppressed
    "condition_false": "condition",  # the step's `if` (or its branch's) was false
    "branch_not_taken": "condition",  # in a branch arm the run did not take
    "exit": "exit",  # an exit step ended the run
    "branch_ended": "exit",  # a branch with `end: true` ended the run
}
LEVERS: tuple[str, ...] = tuple(dict.fromkeys(LEVER_OF_REASON.values()))
# Baseline messages neither sent nor avoided: the run stopped for another reason.
OTHER_REASONS: tuple[str, ...] = ("cancelled", "failed", "template_not_published", "render_error", "unreached")

BASELINE = "baseline"
ACTUAL = "actual"
RECIPIENTS = "recipients"
SMS_SEGMENTS = "sms_segments"  # segments of the SMS bodies created (value: segments)
SMS_BODIES = "sms_bodies"  # SMS bodies created (value: 1): the denominator of the average
REPLACED = "replaced"  # "replaced:<lever>": a category digest sent in place of held messages


def avoided_metric(lever: str) -> str:
    return f"avoided:{lever}"


def other_metric(reason: str) -> str:
    return f"other:{reason}"


def skipped_metric(reason: str) -> str:
    return f"skipped:{reason}"


class Slot(NamedTuple):
    """One baseline message: a channel step (or an escalation stage) of the workflow version."""

    step_id: str
    channel: str
    template_key: str


class Outcome(NamedTuple):
    slot: Slot
    reason: str  # SENT, a key of LEVER_OF_REASON, or one of OTHER_REASONS

    @property
    def lever(self) -> str | None:
        return LEVER_OF_REASON.get(self.reason)

    @property
    def kind(self) -> str:
        if self.reason == SENT:
            return ACTUAL
        return "avoided" if self.reason in LEVER_OF_REASON else "other"


def baseline_slots(steps: list[dict[str, Any]]) -> list[Slot]:
    """Every message the baseline sends for one recipient of a version with these steps."""
    return [slot for _step, slot in _slots_of(steps)]


def _slots_of(steps: list[dict[str, Any]]) -> Iterator[tuple[dict[str, Any], Slot]]:
    for step in steps:
        kind = step.get("type")
        if kind == "branch":
            for arm in step.get("branches", []):
                yield from _slots_of(arm.get("steps", []))
            yield from _slots_of(step.get("else", []))
        elif kind in CHANNEL_STEP_TYPES:
            yield step, Slot(step["id"], CHANNEL_STEP_TYPES[kind], step.get("template") or "")
        elif kind == "escalate":
            for stage in step.get("channels", []):
                yield step, Slot(step["id"], stage["channel"], stage.get("template") or "")


def end_reason(run: Run) -> str:
    """Why the baseline messages the run never reached were not sent: what ended its path."""
    if run.status == Run.Status.CANCELLED:
        return "cancelled"
    if run.status == Run.Status.FAILED:
        return "failed"
    from apps.workflows.definitions import program_for  # the definitions import the step types

    program = program_for(run.workflow_version)
    if run.step_index < len(program):
        instruction = program[run.step_index]
        if instruction["op"] == "end":
            return "branch_ended"
        kind = instruction.get("step", {}).get("type")
        if kind == "throttle":
            return "throttled"
        if kind == "exit":
            return "exit"
        if kind == "digest":  # a member of a digest: completed when another run sent it
            return "digest_merged"
    return "unreached"


def run_outcomes(run: Run, *, ended_by: str | None = None) -> list[Outcome]:
    """The outcome of each baseline message of a finished run (``ended_by``: ``end_reason`` unless given)."""
    reason = ended_by or end_reason(run)
    outcomes: list[Outcome] = []
    _walk(run.workflow_version.steps, run.step_results or {}, reason, outcomes)
    return outcomes


def _walk(steps: list[dict[str, Any]], results: dict[str, Any], ended: str, out: list[Outcome]) -> None:
    for step in steps:
        kind = step.get("type")
        result = results.get(step["id"])
        if kind == "branch":
            arms = [arm.get("steps", []) for arm in step.get("branches", [])]
            arms.append(step.get("else", []))
            if result is None or result.get("in_progress"):
                taken: Any = None
                missed = ended
            elif result.get("reason") == "condition_false":
                taken, missed = None, "condition_false"
            else:
                taken = result.get("branch")
                taken = len(arms) - 1 if taken == "else" else taken
                missed = "branch_not_taken"
            for index, arm in enumerate(arms):
                if index == taken:
                    _walk(arm, results, ended, out)
                else:
                    out.extend(Outcome(slot, missed) for slot in baseline_slots(arm))
        elif kind in CHANNEL_STEP_TYPES:
            slot = Slot(step["id"], CHANNEL_STEP_TYPES[kind], step.get("template") or "")
            out.append(Outcome(slot, _channel_reason(result, ended)))
        elif kind == "escalate":
            for stage in step.get("channels", []):
                slot = Slot(step["id"], stage["channel"], stage.get("template") or "")
                out.append(Outcome(slot, _stage_reason(result, stage["channel"], ended)))


def _channel_reason(result: dict[str, Any] | None, ended: str) -> str:
    if result is None or result.get("in_progress"):  # never reached, or waiting (quiet hours) when it ended
        return ended
    reason = result.get("reason")
    if reason is None:
        # A message was created (its status may since have become the delivery status).
        return SENT if result.get("channel") else ended
    if reason == "preference" and result.get("rule") == "unsubscribed":
        return "unsubscribed"
    return str(reason)


def _stage_reason(state: dict[str, Any] | None, channel: str, ended: str) -> str:
    if state is None:
        return ended
    if state.get("reason") == "condition_false":
        return "condition_false"
    outcome = (state.get("channels") or {}).get(channel)
    if outcome is None:
        return "escalation_stopped" if state.get("status") == "stopped" else ended
    if outcome in ("sent", "queued"):
        return SENT
    refined = (state.get("reasons") or {}).get(channel)
    if refined:
        return str(refined)
    return "frequency_cap" if outcome == "held" else str(outcome)


class Dims(NamedTuple):
    """What a baseline message is counted by: its environment, the hour, and its dimensions."""

    environment_id: int
    at: datetime
    workflow_key: str = ""
    category_key: str = ""
    channel: str = ""
    template_key: str = ""

    def add(self, tally: Tally, metric: str, value: int = 1) -> None:
        tally.add(
            environment_id=self.environment_id,
            at=self.at,
            metric=metric,
            workflow_key=self.workflow_key,
            category_key=self.category_key,
            channel=self.channel,
            template_key=self.template_key,
            value=value,
        )


def count_finished(
    tally: Tally, run: Run, at: datetime, *, ended_by: str | None = None, times: int = 1
) -> list[Outcome]:
    """Add a finished run's baseline, actual, avoided and other messages (and the skips) to ``tally``
    (``times``: for that many runs in the same state, e.g. the members a digest merged)."""
    version = run.workflow_version
    workflow_key = version.workflow.key
    try:
        outcomes = run_outcomes(run, ended_by=ended_by)
    except Exception:  # a bug here must not stop the engine: the run goes uncounted, loudly
        logger.exception("savings: could not count finished run %s (x%d)", run.pk, times)
        return []
    for outcome in outcomes:
        slot = outcome.slot
        dims = Dims(run.environment_id, at, workflow_key, version.category_key, slot.channel, slot.template_key)
        dims.add(tally, BASELINE, times)
        kind = outcome.kind
        if kind == ACTUAL:
            dims.add(tally, ACTUAL, times)
        elif kind == "avoided":
            dims.add(tally, avoided_metric(LEVER_OF_REASON[outcome.reason]), times)
            dims.add(tally, skipped_metric(outcome.reason), times)
        else:
            dims.add(tally, other_metric(outcome.reason), times)
    return outcomes


def count_recipient(tally: Tally, run: Run, at: datetime) -> None:
    version = run.workflow_version
    Dims(run.environment_id, at, version.workflow.key, version.category_key).add(tally, RECIPIENTS)


def count_sms_body(tally: Tally, dims: Dims, body: str) -> None:
    """An SMS body created: its segments, for the average the report prices SMS at."""
    dims.add(tally, SMS_SEGMENTS, sms_segments(body))
    dims.add(tally, SMS_BODIES)


def sms_segments(body: str) -> int:
    """Segments an SMS body takes: GSM-7 160 characters (153 per part when split; extension
    characters count twice), otherwise UCS-2 70 (67 per part, characters outside the BMP count twice)."""
    if not body:
        return 1
    if all(char in _GSM7_BASIC or char in _GSM7_EXTENSION for char in body):
        units = sum(2 if char in _GSM7_EXTENSION else 1 for char in body)
        return 1 if units <= 160 else -(-units // 153)
    units = sum(2 if ord(char) > 0xFFFF else 1 for char in body)
    return 1 if units <= 70 else -(-units // 67)


_GSM7_BASIC = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞ\x1bÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
_GSM7_EXTENSION = frozenset("^{}\\[~]|€\f")
