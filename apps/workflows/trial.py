"""The workflow editor's "Test this workflow": trigger the published version for one subscriber
with a sample payload, for real (``events.services.event_trigger``: the event is queued for the
workers like an API trigger), then watch the event's timeline (``activity.event_timeline``, the
event page's partial) until the run settles. See docs/console.md ("Workflow editor").
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.utils import timezone

from apps.core.errors import ApiError
from apps.events.models import Event
from apps.events.services import TriggerRequest, event_trigger
from apps.subscribers.models import Subscriber
from apps.subscribers.selectors import subscriber_list
from apps.workflows.activity import EventTimeline, event_timeline
from apps.workflows.models import Run, Workflow, WorkflowVersion

SUBSCRIBER_CHOICES = 50  # the datalist offers the newest subscribers; any other id can be typed
RUNS_SHOWN = 10  # a test run has one recipient; the full event page shows the rest
# A run waiting this long or less is worth watching; a longer wait (a 10-minute delay) stops the
# refreshing, and the event page shows what happens next.
SHORT_WAIT = timedelta(seconds=30)
TRANSACTION_PREFIX = "console-test-"


@dataclass
class TrialForm:
    """What the "Test this workflow" form shows: its values, its errors and the subscriber choices."""

    subscriber_id: str = ""
    payload: str = "{}"
    errors: list[str] = field(default_factory=list)
    details: list[tuple[str, str]] = field(default_factory=list)  # (path, message) of a schema's refusal
    subscribers: list[str] = field(default_factory=list)
    published: bool = False
    active: bool = True


class TrialRefused(Exception):
    def __init__(self, message: str, details: list[tuple[str, str]] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details or []


def payload_example(schema: Any) -> dict[str, Any]:
    """A sample payload from the JSON schema: its ``examples[0]`` (or ``example``) when it is an
    object, else one built from the properties' examples or defaults; ``{}`` when there is none."""
    if not isinstance(schema, dict):
        return {}
    for candidate in (*(schema.get("examples") or [])[:1], schema.get("example")):
        if isinstance(candidate, dict):
            return candidate
    sample: dict[str, Any] = {}
    properties = schema.get("properties")
    for name, spec in (properties if isinstance(properties, dict) else {}).items():
        if not isinstance(spec, dict):
            continue
        examples = spec.get("examples")
        if isinstance(examples, list) and examples:
            sample[str(name)] = examples[0]
        elif "example" in spec:
            sample[str(name)] = spec["example"]
        elif "default" in spec:
            sample[str(name)] = spec["default"]
    return sample


def trial_form(workflow: Workflow, version: WorkflowVersion | None, **values: Any) -> TrialForm:
    """The form for ``workflow`` (``version``: its published one, the caller has it): prefilled
    with the version's payload example unless ``values`` say otherwise. One query (the subscribers)."""
    form = TrialForm(
        subscribers=list(
            subscriber_list(environment=workflow.environment)
            .order_by("-pk")
            .values_list("subscriber_id", flat=True)[:SUBSCRIBER_CHOICES]
        ),
        published=version is not None,
        active=workflow.active,
    )
    form.payload = json.dumps(payload_example(version.payload_schema if version else None), indent=2)
    for name, value in values.items():
        setattr(form, name, value)
    return form


def parse_payload(text: str) -> dict[str, Any]:
    """The payload typed in the form, or ``TrialRefused`` saying what is wrong with it."""
    limit = int(settings.CLARION["MAX_PAYLOAD_BYTES"])
    if len(text.encode()) > limit:
        raise TrialRefused(f"The payload is longer than the limit of {limit} bytes.")
    try:
        payload = json.loads(text or "{}")
    except ValueError as exc:
        raise TrialRefused(f"The payload is not valid JSON: {exc}.") from None
    if not isinstance(payload, dict):
        raise TrialRefused("The payload must be a JSON object ({…}).")
    if "\\u0000" in json.dumps(payload):  # PostgreSQL cannot store NUL in jsonb
        raise TrialRefused("The payload holds a NUL character (\\u0000), which cannot be stored.")
    return payload


def trial_trigger(*, workflow: Workflow, subscriber_id: str, payload_text: str) -> Event:
    """Trigger the published version of ``workflow`` for one existing subscriber of its environment."""
    if not workflow.active:
        raise TrialRefused("This workflow is inactive: activate it (its settings) before testing it.")
    if workflow.published_version_id is None:
        raise TrialRefused("This workflow has no published version: publish it before testing it.")
    subscriber_id = subscriber_id.strip()
    if not subscriber_id:
        raise TrialRefused("Choose a subscriber.")
    payload = parse_payload(payload_text)
    if not Subscriber.objects.filter(environment=workflow.environment, subscriber_id=subscriber_id).exists():
        raise TrialRefused(f"No subscriber '{subscriber_id}' in the environment {workflow.environment}.")
    request = TriggerRequest(
        workflow=workflow.key,
        to=[subscriber_id],
        payload=payload,
        transaction_id=f"{TRANSACTION_PREFIX}{uuid.uuid4().hex}",
    )
    try:
        return event_trigger(environment=workflow.environment, request=request)
    except ApiError as exc:
        details = exc.details if isinstance(exc.details, dict) else {}
        raise TrialRefused(str(exc.detail), [(str(key), str(value)) for key, value in details.items()]) from None


def trial_event(*, workflow: Workflow, event_id: int) -> Event | None:
    """An event of ``workflow`` (in its environment), or None."""
    return Event.objects.filter(pk=event_id, workflow=workflow, environment_id=workflow.environment_id).first()


def still_moving(event: Event, timeline: EventTimeline) -> bool:
    """Worth refreshing: the fan-out has not run, or a run is pending, running, or waits briefly."""
    if event.status == Event.Status.PENDING:
        return True
    soon = timezone.now() + SHORT_WAIT
    return any(
        run["status"] in (Run.Status.PENDING, Run.Status.RUNNING)
        or (run["status"] == Run.Status.WAITING and run["resume_at"] is not None and run["resume_at"] <= soon)
        for run in timeline.runs
    )


def trial_timeline(event: Event) -> tuple[EventTimeline, bool]:
    """The event's timeline (as its page shows it) and whether it is still moving."""
    timeline = event_timeline(event=event, limit=RUNS_SHOWN)
    return timeline, still_moving(event, timeline)
