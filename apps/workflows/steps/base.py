"""What every step type shares: the chunk's data and writes, the walk's state, the trace helpers,
the validation helpers, and the registry every part of Clarion reads step types from.

A step type is one class (``StepType``) that declares, in one place:

* ``types`` and ``fields`` — the ``type`` values it handles and the fields a step may carry;
* ``validate`` — the checks on an authored step (definitions call it);
* ``template_keys`` — the templates a step references (publishing, "used by", the chunk loader);
* ``prepare`` — what it loads once per chunk of runs (a fixed number of queries);
* ``on_walk_start`` — what it brings into a resumed run before the walk (engagement, a digest);
* ``execute`` — what it does when a run reaches it;
* ``commit`` — what it writes in the chunk's transaction besides messages, inbox rows and trace.

Adding a step type is one module under ``apps/workflows/steps/`` decorated with ``@register``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple, TypeVar

from apps.analytics.counters import Tally
from apps.core.durations import parse_duration
from apps.core.sandbox import RenderTimeout, SandboxError, validate_expression
from apps.core.schedule import is_valid_zone, zone
from apps.workflows.models import Run, StepRun

if TYPE_CHECKING:
    from apps.delivery.services.rows import MessageRow
    from apps.inbox.models import InboxMessage
    from apps.inbox.services import InboxItem
    from apps.preferences.models import Category, QuietHours
    from apps.preferences.selectors import Resolution
    from apps.templates.models import TemplateVersion
    from apps.workflows.digests import DigestJoin
    from apps.workflows.models import FrequencyCap

T = TypeVar("T")
PATH = re.compile(r"^(payload|subscriber|actor)(\.[A-Za-z0-9_-]+)+$")


# --------------------------------------------------------------------------------------------
# A chunk of runs: what it needs (loaded once) and what it will write (committed together)
# --------------------------------------------------------------------------------------------


@dataclass
class Held:
    """A message held back (frequency cap, daily/weekly choice) for its category's digest."""

    run: Run
    step_id: str
    channel: str
    category_key: str
    closes_at: datetime
    content: dict[str, Any]


class TraceEntry(NamedTuple):
    """One decision for a run's trace (a StepRun row once the chunk commits)."""

    run: Run
    step_id: str
    step_type: str
    decision: str
    reason: str
    detail: dict[str, Any]


@dataclass
class ChunkWrites:
    """Everything one chunk will write, committed together."""

    # decisions for the trace: TraceEntry (``trace``) or an unsaved StepRun
    step_runs: list[TraceEntry | StepRun] = field(default_factory=list)
    messages: list[MessageRow] = field(default_factory=list)
    # (inbox item, index of its Message in ``messages``, run, step id)
    inbox: list[tuple[InboxItem, int, Run, str]] = field(default_factory=list)
    digest_joins: list[DigestJoin] = field(default_factory=list)
    # runs that carried a digest out: bucket pk → leader run pk (its members complete now)
    digests_sent: dict[int, int] = field(default_factory=dict)
    # messages held back by a frequency cap or a digest choice, for the category's next digest
    held: list[Held] = field(default_factory=list)
    # runs walked for the first time in this chunk (counted as recipients when the chunk commits)
    started: set[int] = field(default_factory=set)
    # analytics counts of this commit attempt (``commit_chunk`` starts a new one per attempt; step
    # types' commits add to it, e.g. the digest members they complete), written in its transaction
    tally: Tally = field(default_factory=Tally)
    # the workflow versions of the chunk's runs, by pk (what finished runs are counted against)
    versions: dict[int, Any] = field(default_factory=dict)


@dataclass
class ChunkData:
    """What the runs of a chunk need, loaded once per chunk (each step type loads its own part)."""

    templates: dict[tuple[int, str], TemplateVersion] = field(default_factory=dict)
    # TemplateVersion pk -> version, for the versions the runs' events pinned at fan-out
    pinned: dict[int, TemplateVersion] = field(default_factory=dict)
    categories: dict[tuple[int, str], Category | None] = field(default_factory=dict)
    preferences: dict[tuple[int, str, int], dict[int, dict[str, Resolution]]] = field(default_factory=dict)
    # (run id, step id) -> the in-app message that step created, for engagement in conditions
    inbox_state: dict[tuple[int, str], InboxMessage] = field(default_factory=dict)
    # subscriber pk -> channels the subscriber has an address for
    reachable: dict[int, set[str]] = field(default_factory=dict)
    quiet_hours: dict[int, QuietHours] = field(default_factory=dict)
    # (environment, category key) -> subscriber pk -> "instant" | "daily" | "weekly"
    frequencies: dict[tuple[int, str], dict[int, str]] = field(default_factory=dict)
    caps: dict[int, list[FrequencyCap]] = field(default_factory=dict)
    # (run id, step id) -> engagement levels reached on that step's other-channel messages
    engagement: dict[tuple[int, str], set[str]] = field(default_factory=dict)
    # (run id, step id, channel) -> the delivery status of a message sent earlier in the run
    delivery: dict[tuple[int, str, str], str] = field(default_factory=dict)
    # bucket pk -> its events (digests being sent or carried by runs in this chunk)
    digest_events: dict[int, list[dict[str, Any]]] = field(default_factory=dict)
    # leader runs whose bucket stays open a moment longer: events of its window are still on the way
    digest_postponed: set[int] = field(default_factory=set)
    # names of the loads already done (step types that share one, e.g. escalate and channels)
    prepared: set[str] = field(default_factory=set)
    # renders and conditions that ran out of time in this chunk: not tried again for its other runs
    timed_out: dict[tuple[Any, ...], str] = field(default_factory=dict)
    # (event pk, step id, template version pk, locale) -> the fields of that render that read
    # nothing of the subscriber: rendered once for the chunk's recipients of one event
    render_memo: dict[tuple[Any, ...], dict[tuple[str, str], str]] = field(default_factory=dict)


@dataclass
class ChunkPlan:
    """The runs of a chunk and, for each, the steps it still has ahead of it."""

    runs: list[Run]
    ahead: dict[int, list[dict[str, Any]]]

    def types_ahead(self) -> set[str]:
        return {step.get("type", "") for steps in self.ahead.values() for step in steps}

    def resumed(self) -> list[Run]:
        return [run for run in self.runs if run.step_results]


@dataclass
class Walk:
    """One run being walked: the chunk's data and writes, the clock, and the render context."""

    run: Run
    data: ChunkData
    writes: ChunkWrites
    now: datetime
    context: dict[str, Any]

    def trace(self, step: dict[str, Any], decision: str, reason: str, **detail: Any) -> None:
        trace(self.writes, self.run, step, decision, reason, **detail)


class Stop(Exception):
    """The run cannot go further now (it waits, ended or failed); its state is already set."""


def time_guarded(data: ChunkData, key: tuple[Any, ...], call: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run a render or an evaluation; once one with the same ``key`` (the same template version or
    condition) ran out of time in this chunk, fail it for the chunk's other runs at once, so one
    hostile template costs one time limit per chunk, not one per recipient."""
    if key in data.timed_out:
        raise SandboxError(f"{data.timed_out[key]} (not tried again for the other recipients of this chunk)")
    try:
        return call(*args, **kwargs)
    except RenderTimeout as exc:
        data.timed_out[key] = str(exc)
        raise


def trace(writes: ChunkWrites, run: Run, step: dict[str, Any], decision: str, reason: str, **detail: Any) -> None:
    writes.step_runs.append(TraceEntry(run, step["id"], step["type"], decision, reason, detail))


def wait(run: Run, until: datetime | None) -> None:
    run.status = Run.Status.WAITING
    run.resume_at = until
    raise Stop


def end(run: Run, now: datetime, status: str = Run.Status.COMPLETED) -> None:
    run.status = status
    run.resume_at = None
    run.completed_at = now
    raise Stop


def subscriber_zone(run: Run, step: dict[str, Any]) -> Any:
    return zone(run.subscriber.timezone, default=step.get("timezone") or "UTC")


def path_value(context: dict[str, Any], path: str) -> Any:
    value: Any = context
    for part in path.split("."):
        if isinstance(value, dict):
            value = value.get(part)
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            return None
    return value


def event_item(run: Run) -> dict[str, Any]:
    return {
        "transaction_id": run.event.transaction_id,
        "payload": run.event.payload,
        "actor": run.event.actor or {},
        "created_at": run.event.created_at.isoformat(),
    }


def reached_at(run: Run, now: datetime) -> datetime:
    """When the run was due to reach its current step: its trigger time, or the end of the wait it
    just resumed from. Digest windows are measured from here, not from when a (possibly
    backlogged) worker got to it, so events sent together land in one digest."""
    candidates = [moment for moment in (run.event.created_at, run.resume_at) if moment is not None and moment <= now]
    return max(candidates, default=now)


# --------------------------------------------------------------------------------------------
# Validation helpers
# --------------------------------------------------------------------------------------------


@dataclass
class Validation:
    """Where validation errors go, and how a step with nested steps (a branch) validates them."""

    errors: dict[str, str]
    nested: Callable[[Any, str], int]  # validate a nested list one level deeper; returns its step count


def check_duration(
    step: dict[str, Any], name: str, where: str, errors: dict[str, str], *, zero_ok: bool = False
) -> None:
    try:
        duration = parse_duration(step.get(name, ""))
    except ValueError as exc:
        errors[f"{where}.{name}"] = str(exc)
        return
    if duration.total_seconds() < 0 or (not zero_ok and duration.total_seconds() == 0):
        errors[f"{where}.{name}"] = "must be longer than zero"


def check_path(value: Any, where: str, errors: dict[str, str]) -> None:
    if not isinstance(value, str) or not PATH.match(value):
        errors[where] = "must be a path such as 'payload.post_id' (under payload, subscriber or actor)"


def check_int(value: Any, where: str, errors: dict[str, str], *, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        errors[where] = f"must be a whole number from {low} to {high}"


def check_expression(value: Any, where: str, errors: dict[str, str]) -> None:
    if not isinstance(value, str) or not value.strip():
        errors[where] = "must be a non-empty expression string"
        return
    try:
        validate_expression(value)
    except SandboxError as exc:
        errors[where] = f"invalid expression: {exc}"


def check_timezone(step: dict[str, Any], where: str, errors: dict[str, str]) -> None:
    if "timezone" in step and (not isinstance(step["timezone"], str) or not is_valid_zone(step["timezone"])):
        errors[f"{where}.timezone"] = "must be an IANA timezone such as 'Europe/Paris'"


# --------------------------------------------------------------------------------------------
# Step types and their registry
# --------------------------------------------------------------------------------------------


class StepType:
    """Subclass, set ``types`` and ``fields``, implement what applies, decorate with ``@register``."""

    types: ClassVar[tuple[str, ...]]
    fields: ClassVar[frozenset[str]] = frozenset()
    commit_order: ClassVar[int] = 100  # digest joins lock their buckets before held messages do

    def validate(self, step: dict[str, Any], where: str, check: Validation) -> int:
        """Record problems in ``check.errors``; return how many nested steps the step holds."""
        return 0

    def template_keys(self, step: dict[str, Any]) -> dict[str, str]:
        """template key → the channel it is rendered for."""
        return {}

    def prepare(self, plan: ChunkPlan, data: ChunkData, now: datetime) -> None:
        """Load what this step type needs for the chunk into ``data`` (called for every chunk)."""

    def on_walk_start(self, walk: Walk) -> None:
        """Bring what happened while the run waited into its state, before the walk."""

    def execute(self, walk: Walk, step: dict[str, Any]) -> None:
        """Do the step; raise ``Stop`` (through ``wait``/``end``) when the run cannot go on now."""
        raise NotImplementedError

    def commit(self, writes: ChunkWrites, held_runs: set[int], now: datetime) -> list[int]:
        """Write what the step type keeps outside the trace, inside the chunk's transaction.

        Only for runs in ``held_runs`` (the worker still holds them). Returns runs to wake.
        """
        return []

    def stops_walk(self, run: Run, step: dict[str, Any]) -> bool:
        """Whether a run that reaches this step now surely waits there, so that no step behind it
        runs in this walk (the chunk then loads nothing for those: see ``steps_ahead``)."""
        return False


_REGISTRY: dict[str, StepType] = {}
_ORDER: list[StepType] = []


def register(cls: type[StepType]) -> type[StepType]:
    instance = cls()
    for name in cls.types:
        if name in _REGISTRY:
            raise ValueError(f"step type {name!r} is registered twice")
        _REGISTRY[name] = instance
    _ORDER.append(instance)
    return cls


def step_type(name: str) -> StepType:
    return _REGISTRY[name]


def known_step_types() -> set[str]:
    return set(_REGISTRY)


def all_step_types() -> Iterable[StepType]:
    return tuple(_ORDER)


def steps_ahead(run: Run, program: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """The steps a run may still reach in this walk, in program order: every step from its position
    on, up to and including the first unconditional step on its straight path (no branch, jump or
    end before it) that surely makes it wait (``StepType.stops_walk``, e.g. a digest it joins now).

    What the chunk loads (templates, preferences, addresses…) follows from these steps, so runs
    that only join their digest load nothing for the channel steps behind it.
    """
    straight = True
    for instruction in program[run.step_index :]:
        step = instruction.get("step")
        if step is None:  # a jump: what follows is not on the straight path
            straight = False
            continue
        yield step
        if instruction["op"] != "step":
            straight = False
            continue
        kind = _REGISTRY.get(step.get("type", ""))
        if straight and not step.get("if") and kind is not None and kind.stops_walk(run, step):
            return
