"""Channel steps — ``in_app``, ``email``, ``sms``, ``push``, ``chat``, ``webhook`` — share one step type.

A channel step resolves the subscriber's preferences, checks there is an address, waits out quiet
hours, renders the template version (the one pinned at fan-out unless the workflow uses the
latest), holds the message for the category digest when a frequency cap or a digest choice says
so, and otherwise builds the message (``delivery.services.rows.message_row_build``; in-app: the inbox item too)
into the chunk's writes, which the chunk's commit hands to the delivery and inbox services.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime
from typing import Any

from django.db.models import F

from apps.core.bulk import in_array
from apps.core.channels import CHANNELS
from apps.core.durations import parse_duration
from apps.core.sandbox import SandboxError
from apps.core.schedule import parse_schedule, zone
from apps.delivery.models import Message
from apps.delivery.selectors import reachable_channels
from apps.delivery.services.rows import message_row_build
from apps.inbox.models import InboxMessage
from apps.inbox.services import InboxItem
from apps.preferences.links import email_links
from apps.preferences.models import Category, QuietHours
from apps.preferences.selectors import (
    category_frequencies,
    frequency_schedule,
    resolve_preferences,
    workflow_channel_defaults_many,
)
from apps.templates.models import TemplateVersion
from apps.templates.rendering import RenderedContent, render_version
from apps.workflows import digests
from apps.workflows.limits import limit_acquire
from apps.workflows.models import FrequencyCap, Run, StepRun
from apps.workflows.steps.base import (
    ChunkData,
    ChunkPlan,
    ChunkWrites,
    Held,
    StepType,
    Validation,
    Walk,
    register,
    time_guarded,
    trace,
    wait,
)

# step type -> channel: one step type per channel, named after it. A webhook step's template is
# optional (without one the event payload is sent).
CHANNEL_STEP_TYPES = {channel: channel for channel in CHANNELS}
TEMPLATE_OPTIONAL_STEP_TYPES = {"webhook"}


@register
class ChannelStep(StepType):
    types = tuple(CHANNEL_STEP_TYPES)
    fields = frozenset({"template"})
    commit_order = 20

    def validate(self, step: dict[str, Any], where: str, check: Validation) -> int:
        template = step.get("template")
        optional = step["type"] in TEMPLATE_OPTIONAL_STEP_TYPES and template is None
        if not optional and (not isinstance(template, str) or not template):
            check.errors[f"{where}.template"] = "required: the key of a template for this channel"
        return 0

    def template_keys(self, step: dict[str, Any]) -> dict[str, str]:
        template = step.get("template")
        return {template: CHANNEL_STEP_TYPES[step["type"]]} if template else {}

    def prepare(self, plan: ChunkPlan, data: ChunkData, now: datetime) -> None:
        prepare_channels(plan, data, now)

    def on_walk_start(self, walk: Walk) -> None:
        refresh_step_results(walk.run, walk.data)

    def execute(self, walk: Walk, step: dict[str, Any]) -> None:
        send_channel(
            walk.run,
            step,
            walk.context,
            walk.data,
            walk.writes,
            walk.now,
            channel=CHANNEL_STEP_TYPES[step["type"]],
            template_key=step.get("template"),
        )

    def commit(self, writes: ChunkWrites, held_runs: set[int], now: datetime) -> list[int]:
        held = [h for h in writes.held if h.run.pk in held_runs]
        if held:
            hold_for_category_digest(held, now)
        return []


def prepare_channels(plan: ChunkPlan, data: ChunkData, now: datetime) -> None:
    """Engagement and delivery state of resumed runs (for conditions and escalations) and, when a
    channel is ahead, categories, preferences, digest choices, addresses, quiet hours and caps."""
    if "channels" in data.prepared:
        return
    data.prepared.add("channels")
    runs = plan.runs
    resumed = [run.pk for run in plan.resumed()]
    if resumed:
        _load_engagement(resumed, data)
    ahead = plan.types_ahead()
    if not (ahead & set(CHANNEL_STEP_TYPES) or "escalate" in ahead):
        return

    category_keys: dict[int, set[str]] = defaultdict(set)
    for run in runs:
        if run.workflow_version.category_key:
            category_keys[run.environment_id].add(run.workflow_version.category_key)
    for environment_id, keys in category_keys.items():
        found = {c.key: c for c in Category.objects.filter(environment_id=environment_id, key__in=keys)}
        for key in keys:
            data.categories[(environment_id, key)] = found.get(key)

    # Preferences depend on the category and on the workflow's own channel defaults.
    groups: dict[tuple[int, str, int], set[int]] = defaultdict(set)
    by_category: dict[tuple[int, str], set[int]] = defaultdict(set)
    for run in runs:
        category_key = run.workflow_version.category_key
        groups[(run.environment_id, category_key, run.workflow_version.workflow_id)].add(run.subscriber_id)
        by_category[(run.environment_id, category_key)].add(run.subscriber_id)
    workflow_defaults = workflow_channel_defaults_many(workflow_ids={key[2] for key in groups})
    # Only the channels the runs can still send on (an escalation may send on any).
    channels = (
        set(CHANNEL_STEP_TYPES.values())
        if "escalate" in ahead
        else {CHANNEL_STEP_TYPES[kind] for kind in ahead if kind in CHANNEL_STEP_TYPES}
    )
    for (environment_id, category_key, workflow_id), subscriber_pks in groups.items():
        data.preferences[(environment_id, category_key, workflow_id)] = resolve_preferences(
            environment=environment_id,
            subscriber_ids=subscriber_pks,
            category=data.categories.get((environment_id, category_key)) if category_key else None,
            channels=sorted(channels),
            workflow_defaults=workflow_defaults.get(workflow_id),
        )
    for (environment_id, category_key), subscriber_pks in by_category.items():
        data.frequencies[(environment_id, category_key)] = category_frequencies(
            environment=environment_id,
            subscriber_ids=subscriber_pks,
            category=data.categories.get((environment_id, category_key)) if category_key else None,
        )

    run_subscriber_pks = list({run.subscriber_id for run in runs})
    data.quiet_hours = {
        q.subscriber_id: q for q in QuietHours.objects.filter(in_array("subscriber_id", run_subscriber_pks))
    }
    caps: dict[int, list[FrequencyCap]] = defaultdict(list)
    for cap in FrequencyCap.objects.filter(
        environment_id__in={run.environment_id for run in runs}, active=True
    ).select_related("category"):
        caps[cap.environment_id].append(cap)
    data.caps = caps
    data.reachable = reachable_channels(
        subscribers=list({run.subscriber_id: run.subscriber for run in runs}.values()), channels=channels
    )


def _load_engagement(resumed: list[int], data: ChunkData) -> None:
    rows = InboxMessage.objects.filter(message__run_id__in=resumed).annotate(
        run_pk=F("message__run_id"), step_id=F("message__step_id")
    )
    engagement: dict[tuple[int, str], set[str]] = defaultdict(set)
    for inbox in rows:
        data.inbox_state[(inbox.run_pk, inbox.step_id)] = inbox
        engagement[(inbox.run_pk, inbox.step_id)].update(inbox_engagement(inbox))
    for run_pk, step_id, channel, status, opened_at, clicked_at in (
        Message.objects.filter(run_id__in=resumed)
        .exclude(channel="in_app")
        .values_list("run_id", "step_id", "channel", "status", "opened_at", "clicked_at")
    ):
        data.delivery[(run_pk, step_id, channel)] = status
        levels = set(ENGAGED_MESSAGE_STATUSES.get(status, ()))
        if opened_at is not None:
            levels.update({"seen", "read"})
        if clicked_at is not None:
            levels.update({"seen", "read", "clicked"})
        engagement[(run_pk, step_id)].update(levels)
    data.engagement = engagement


# Delivery statuses that count as engagement, and the levels they reach.
ENGAGED_MESSAGE_STATUSES: dict[str, set[str]] = {
    "read": {"seen", "read"},
    "opened": {"seen", "read"},
    "clicked": {"seen", "read", "clicked"},
}


def inbox_engagement(inbox: InboxMessage) -> set[str]:
    levels: set[str] = set()
    if inbox.seen_at is not None:
        levels.add("seen")
    if inbox.read_at is not None:
        levels.update({"seen", "read"})
    actions = getattr(inbox, "actions", None) or []
    if any(isinstance(a, dict) and a.get("completed_at") for a in actions):
        levels.update({"seen", "read", "clicked"})
    return levels


def refresh_step_results(run: Run, data: ChunkData) -> None:
    """Bring what happened since into ``steps.<id>`` for conditions: engagement on in-app messages,
    and the delivery status of others (``steps.email.status == "bounced"``)."""
    for step_id, result in run.step_results.items():
        channel = result.get("channel")
        if channel and channel != "in_app" and (run.pk, step_id, channel) in data.delivery:
            result["status"] = data.delivery[(run.pk, step_id, channel)]
        message = data.inbox_state.get((run.pk, step_id))
        if message is not None:
            result["seen"] = message.seen_at is not None
            result["read"] = message.read_at is not None
            result["archived"] = message.archived_at is not None


def _quiet_until(run: Run, channel: str, data: ChunkData, now: datetime) -> datetime | None:
    quiet = data.quiet_hours.get(run.subscriber_id)
    if quiet is None:
        return None
    channels = quiet.channels or [c for c in CHANNEL_STEP_TYPES.values() if c != "in_app"]
    if channel not in channels:
        return None
    days = ",".join(quiet.days) if quiet.days else "daily"
    schedule = parse_schedule(f"{days} {quiet.start:%H:%M}-{quiet.end:%H:%M}")
    window = schedule.current_window(now, zone(quiet.timezone or run.subscriber.timezone))
    return window[1] if window else None


def _cap_for(run: Run, channel: str, category: Category | None, data: ChunkData) -> FrequencyCap | None:
    """The most specific active cap for this channel (the category's own, else the channel's)."""
    best = None
    for cap in data.caps.get(run.environment_id, ()):
        if cap.channel != channel:
            continue
        if cap.category_id is not None and category is not None and cap.category_id == category.pk:
            return cap
        if cap.category_id is None:
            best = cap
    return best


PREFERENCE_MESSAGES = {
    "unsubscribed": "the subscriber unsubscribed from everything non-critical",
    "subscriber_channel": "{channel} is off for all categories",
    "workflow_default": "{channel} is off by default for this workflow",
    "category_default": "{channel} is off by default for category {category}",
}


def _hold_reason(
    run: Run, channel: str, category: Category | None, data: ChunkData, step_id: str, now: datetime
) -> dict[str, Any] | None:
    """Why a non-critical message goes to the category digest instead of out now, if it does.

    The subscriber's own choice of a daily or weekly digest for the category comes first (every
    channel but in-app, which is the inbox itself); otherwise a frequency cap that is full.
    """
    category_key = category.key if category else ""
    frequency = data.frequencies.get((run.environment_id, category_key), {}).get(run.subscriber_id, "instant")
    schedule = None if channel == "in_app" else frequency_schedule(frequency, category)
    if schedule is not None:
        return {"reason": "frequency_preference", "schedule": schedule, "frequency": frequency}
    cap = _cap_for(run, channel, category, data)
    if cap is None:
        return None
    limit = limit_acquire(
        environment_id=run.environment_id,
        key=f"cap:{channel}:{cap.category_id or '*'}:{run.subscriber_id}",
        limit=cap.limit,
        window=parse_duration(cap.window),
        hit_key=f"run:{run.pk}:{step_id}:{channel}",
        now=now,
    )
    if limit.allowed:
        return None
    return {
        "reason": "frequency_cap",
        "schedule": category.digest_schedule if category else "daily 09:00",
        "cap": f"{cap.limit} per {cap.window}",
        "count": limit.count,
    }


def send_channel(
    run: Run,
    step: dict[str, Any],
    context: dict[str, Any],
    data: ChunkData,
    writes: ChunkWrites,
    now: datetime,
    *,
    channel: str,
    template_key: str | None,
    record: bool = True,
) -> str:
    """Send (or skip, hold, or wait for quiet hours to end) one channel; returns the outcome.

    ``record`` False (escalation stages): the outcome goes to the caller's state instead of
    ``steps.<id>``.
    """
    step_id = step["id"]
    category_key = run.workflow_version.category_key
    category = data.categories.get((run.environment_id, category_key)) if category_key else None
    critical = bool(category and category.critical)

    def skip(reason: str, **detail: Any) -> str:
        if record:
            run.step_results[step_id] = {"status": "skipped", "reason": reason, "channel": channel}
            if "rule" in detail:  # which preference rule (the savings report tells "unsubscribed" apart)
                run.step_results[step_id]["rule"] = detail["rule"]
        trace(writes, run, step, StepRun.Decision.SKIPPED, reason, channel=channel, **detail)
        return reason

    preferences = data.preferences[(run.environment_id, category_key, run.workflow_version.workflow_id)]
    resolution = preferences[run.subscriber_id][channel]
    if not resolution.allowed:
        return skip(
            "preference",
            category=category_key or None,
            rule=resolution.reason,
            message=PREFERENCE_MESSAGES.get(resolution.reason, "{channel} is off for category {category}").format(
                channel=channel, category=category_key or "-"
            ),
        )
    subscriber = run.subscriber
    if channel not in data.reachable.get(subscriber.pk, ()):
        return skip("no_address", message=f"the subscriber has no {channel} address")

    if not critical:
        quiet_end = _quiet_until(run, channel, data, now)
        if quiet_end is not None:
            if record:
                run.step_results[step_id] = {"status": "waiting", "reason": "quiet_hours", "in_progress": True}
            trace(
                writes, run, step, StepRun.Decision.WAITING, "quiet_hours", channel=channel, until=quiet_end.isoformat()
            )
            wait(run, quiet_end)

    version, template_policy = template_for(run, template_key, data)
    if template_key and version is None:
        if record:
            run.step_results[step_id] = {"status": "failed", "reason": "template_not_published"}
        trace(writes, run, step, StepRun.Decision.FAILED, "template_not_published", template=template_key)
        return "template_not_published"
    links = (
        email_links(subscriber=subscriber, category_key=category_key or None, critical=critical)
        if channel == "email"
        else {}
    )
    rendered: RenderedContent | None = None
    if version is not None:
        step_context = {**context, "step": {"id": step_id}}
        for name in ("preferences_url", "unsubscribe_url"):
            if links.get(name):
                step_context[name] = links[name]
        try:
            rendered = time_guarded(
                data,
                ("render", version.pk),
                render_version,
                version=version,
                locale=subscriber.locale,
                context=step_context,
                memo=data.render_memo.setdefault((run.event_id, step_id, version.pk), {}),
            )
        except SandboxError as exc:
            if record:
                run.step_results[step_id] = {"status": "failed", "reason": "render_error"}
            trace(writes, run, step, StepRun.Decision.FAILED, "render_error", template=template_key, error=str(exc))
            return "render_error"

    event = run.event
    workflow_key = run.workflow_version.workflow.key
    subject = (rendered.subject if channel == "email" else rendered.title) if rendered else ""
    body = rendered.body if rendered else ""

    hold = None if critical else _hold_reason(run, channel, category, data, step_id, now)
    if hold is not None:
        schedule_spec = hold.pop("schedule")
        reason = hold.pop("reason")
        closes_at = parse_schedule(schedule_spec).next_start(now, zone(subscriber.timezone))
        writes.held.append(
            Held(
                run=run,
                step_id=step_id,
                channel=channel,
                category_key=category_key,
                closes_at=closes_at,
                content={
                    "workflow": workflow_key,
                    "channel": channel,
                    "subject": subject,
                    "body": body,
                    "action_url": rendered.action_url if rendered else "",
                    "template": template_key,
                    "template_version": version.number if version else None,
                    "locale": rendered.locale if rendered else "",
                    # why it was held: the savings report's lever for the digest that replaces it
                    "held_for": reason,
                },
            )
        )
        if record:
            run.step_results[step_id] = {"status": "held", "reason": reason, "channel": channel}
        why = f"over the {channel} cap" if reason == "frequency_cap" else f"a {hold['frequency']} digest was chosen"
        trace(
            writes,
            run,
            step,
            StepRun.Decision.HELD,
            reason,
            channel=channel,
            category=category_key or None,
            **hold,
            digest_at=closes_at.isoformat(),
            message=f"{why}; held for the next {category_key or 'general'} digest",
        )
        return "held"

    is_in_app = channel == "in_app"
    # "category" and "template": the dimensions analytics counts the message by (no lookup per status change).
    message_data: dict[str, Any] = {
        "transaction_id": event.transaction_id,
        "workflow": workflow_key,
        "category": category_key or "",
        "template": template_key or "",
    }
    if rendered is not None and rendered.action_url:
        message_data["action_url"] = rendered.action_url
    if rendered is not None and rendered.text:
        message_data["text"] = rendered.text
    if channel == "webhook":
        message_data["payload"] = event.payload
    if links.get("headers"):
        message_data["headers"] = links["headers"]
    message = message_row_build(
        environment_id=run.environment_id,
        run_id=run.pk,
        step_id=step_id,
        channel=channel,
        subscriber=subscriber,
        template_version_id=version.pk if version else None,
        locale=rendered.locale if rendered else "",
        subject=subject,
        body=body,
        data=message_data,
        now=now,
    )
    writes.messages.append(message)
    result: dict[str, Any] = {"status": "sent" if is_in_app else "queued", "channel": channel}
    if is_in_app and rendered is not None:
        inbox = InboxItem(
            environment_id=run.environment_id,
            subscriber_id=subscriber.pk,
            workflow_key=workflow_key,
            category_key=category_key,
            title=rendered.title,
            body=rendered.body,
            action_url=rendered.action_url,
            avatar=_actor_avatar(event.actor),
            data={"transaction_id": event.transaction_id, "payload": event.payload},
            actions=[
                {"id": f"{action.get('kind') or 'action'}-{index}", **action, "completed_at": None}
                for index, action in enumerate(getattr(rendered, "actions", []) or [])
            ],
        )
        writes.inbox.append((inbox, len(writes.messages) - 1, run, step_id))
        result.update({"read": False, "seen": False, "archived": False})
    if record:
        run.step_results[step_id] = result
    trace(
        writes,
        run,
        step,
        StepRun.Decision.EXECUTED,
        "sent" if is_in_app else "queued",
        channel=channel,
        template=template_key,
        template_version=version.number if version else None,
        template_policy=template_policy,
        locale=rendered.locale if rendered else None,
    )
    return str(result["status"])


def template_for(run: Run, template_key: str | None, data: ChunkData) -> tuple[TemplateVersion | None, str]:
    """The version a run renders: the one its event pinned at fan-out, else the one published now."""
    if not template_key:
        return None, ""
    pinned_pk = (run.event.template_versions or {}).get(template_key)
    if pinned_pk is not None and pinned_pk in data.pinned:
        return data.pinned[pinned_pk], "pinned"
    return data.templates.get((run.environment_id, template_key)), "latest"


def _actor_avatar(actor: Any) -> str:
    return actor.get("avatar", "") if isinstance(actor, dict) else ""


def hold_for_category_digest(held: list[Held], now: datetime) -> None:
    """Held messages join their subscriber's next digest of the category: a fixed number of
    queries for the whole chunk (see ``digests.digests_hold``)."""
    digests.digests_hold(
        held=[
            digests.HeldMessage(
                environment_id=item.run.environment_id,
                subscriber_id=item.run.subscriber_id,
                run_id=item.run.pk,
                step_id=item.step_id,
                category_key=item.category_key,
                channel=item.channel,
                closes_at=item.closes_at,
                content=item.content,
            )
            for item in held
        ],
        now=now,
    )
