"""The workflow editor in the admin: a form per step type, add / reorder / remove, branches as
nested lists, a live diagram, draft and publish with a note, history, diff and rollback.

The form is plain HTML whose input names are the steps' JSON paths (``steps[2].branches[0].if``),
the same paths ``validate_steps`` reports errors at, so every error lands on its field. Forms are
built from the step registry: each ``StepType`` declares its ``fields``; ``FIELD_SPECS`` says how a
known field is edited (a field nobody described gets a JSON-or-text box, so a new step type is
editable at once). Structural edits (add, move, remove a step, a branch or an escalation stage)
are form submissions handled here, so the editor works without JavaScript;
``static/clarion/admin/workflow-editor.js`` only sends them in the background and refreshes the
diagram (``diagram.steps_svg``) as you type. Every write goes through ``services``.
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseNotAllowed, HttpResponseRedirect, QueryDict
from django.template.loader import render_to_string
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils.html import format_html
from django.utils.safestring import SafeString, mark_safe
from unfold.admin import ModelAdmin

from apps.core.channels import CHANNELS
from apps.core.errors import ApiError
from apps.events.models import Event
from apps.templates.models import Template
from apps.workflows.definitions import CHANNEL_STEP_TYPES, DefinitionError, validate_steps
from apps.workflows.diagram import shorten, steps_svg
from apps.workflows.models import Workflow
from apps.workflows.selectors import workflow_version_diff, workflow_versions
from apps.workflows.services import workflow_rollback, workflow_upsert
from apps.workflows.steps import all_step_types
from apps.workflows.steps.escalate import STOP_ON
from apps.workflows.trial import RUNS_SHOWN as TRIAL_RUNS_SHOWN
from apps.workflows.trial import TrialForm, TrialRefused, trial_event, trial_form, trial_timeline, trial_trigger

# --------------------------------------------------------------------------------------------
# What each field is: how it is edited and explained
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FieldSpec:
    label: str
    kind: str = "text"  # text | int | bool | template | choice | auto (JSON, else text) | branches | channels
    help: str = ""
    choices: tuple[str, ...] = ()
    placeholder: str = ""


COMMON_SPECS = {
    "id": FieldSpec(
        "Step id", help="Letters, digits, '-' or '_', unique in the workflow; conditions use it (steps.<id>)."
    ),
    "name": FieldSpec("Name", help="Optional: what the step is for, in words."),
    "if": FieldSpec(
        "Only if",
        help="Optional condition over payload, subscriber, actor and steps.<id>, e.g. not steps.inbox.read.",
        placeholder="not steps.inbox.read",
    ),
}
FIELD_SPECS: dict[str, FieldSpec] = {
    "template": FieldSpec("Template", "template", "The template this step renders (its published version)."),
    "for": FieldSpec(
        "Wait for", help="A duration: 30s, 10m, 1h, 2d (or ISO 8601). Fill one of the three.", placeholder="10m"
    ),
    "until": FieldSpec("Wait until", help="A payload path holding a timestamp.", placeholder="payload.starts_at"),
    "until_next": FieldSpec(
        "Until the next", help="A schedule, e.g. 'weekdays 09:00-18:00'.", placeholder="daily 09:00"
    ),
    "window": FieldSpec("Window", help="A duration: 30s, 10m, 1h, 2d.", placeholder="1h"),
    "schedule": FieldSpec("Schedule", help="Instead of a window: e.g. 'daily 09:00'.", placeholder="daily 09:00"),
    "key": FieldSpec(
        "Per", help="Optional payload path to keep apart, e.g. payload.post_id.", placeholder="payload.post_id"
    ),
    "lookback": FieldSpec(
        "Look back", help="Optional: send at once if nothing was sent this long ago.", placeholder="1h"
    ),
    "max_events": FieldSpec("At most events", "int", "Optional: close the digest early at this many events."),
    "limit": FieldSpec("Limit", "int", "How many runs may pass per window and subscriber."),
    "timezone": FieldSpec(
        "Time zone", help="Optional IANA zone used when the subscriber has none.", placeholder="Europe/Paris"
    ),
    "stop_on": FieldSpec("Stop when the subscriber has", "choice", "Engagement that ends the escalation.", STOP_ON),
    "channels": FieldSpec(
        "Channels", "channels", "One after another; 'after' counts from the start of the escalation."
    ),
    "reason": FieldSpec("Reason", help="Optional: recorded in the trace."),
    "branches": FieldSpec("Branches", "branches", "Checked in order; the first true condition is taken."),
    "else": FieldSpec("Else", "branches"),
}
TYPE_HELP = {
    **{name: f"Render a template and send it on {name.replace('_', '-')}." for name in CHANNEL_STEP_TYPES},
    "delay": "Wait for a duration, until a time in the payload, or until the next allowed time.",
    "digest": "Collect events per subscriber (and key), then carry them on as one.",
    "branch": "If / else-if / else: the first branch whose condition is true runs.",
    "throttle": "At most N runs per window per subscriber; over it, the run ends.",
    "escalate": "Channels one after another with waits, until the subscriber engages.",
    "exit": "End the run here.",
}
FIELD_ORDER = [
    "template",
    "for",
    "until",
    "until_next",
    "window",
    "schedule",
    "limit",
    "key",
    "lookback",
    "max_events",
    "timezone",
    "stop_on",
    "channels",
    "reason",
    "branches",
    "else",
]
ESCALATION_CHANNELS = tuple(channel for channel in CHANNELS if channel != "webhook")


def field_spec(name: str) -> FieldSpec:
    return FIELD_SPECS.get(name) or FieldSpec(name.replace("_", " ").capitalize(), "auto", "A value (JSON or text).")


def step_types() -> list[str]:
    """Every step type, in the registry's order (channel steps first)."""
    return [name for kind in all_step_types() for name in kind.types]


def type_fields(type_name: str) -> list[str]:
    """The fields a step type declares, in the editor's order (unknown ones last)."""
    from apps.workflows.steps import known_step_types, step_type

    if type_name not in known_step_types():
        return []
    declared = step_type(type_name).fields
    return sorted(declared, key=lambda name: (FIELD_ORDER.index(name) if name in FIELD_ORDER else 99, name))


# --------------------------------------------------------------------------------------------
# Form data ⇄ steps
# --------------------------------------------------------------------------------------------

TOKEN = re.compile(r"^([A-Za-z_]+)(?:\[(\d{1,3})\])?$")
MAX_INDEX = 200
# Deeper than any valid definition (branches nest 5 deep, three parts a level): ignored, so a
# crafted name cannot make the parser recurse without end
MAX_TOKENS = 32


class _Indexed(dict[int, Any]):
    """A list being assembled from ``name[i]`` inputs (any order, gaps allowed)."""


def _tokens(path: str) -> list[tuple[str, int | None]] | None:
    tokens: list[tuple[str, int | None]] = []
    parts = path.split(".")
    if len(parts) > MAX_TOKENS:
        return None
    for part in parts:
        match = TOKEN.match(part)
        if match is None:
            return None
        index = int(match.group(2)) if match.group(2) is not None else None
        if index is not None and index > MAX_INDEX:
            return None
        tokens.append((match.group(1), index))
    return tokens


def _assemble(node: Any) -> Any:
    if isinstance(node, _Indexed):
        return [_assemble(node[index]) for index in sorted(node)]
    if isinstance(node, dict):
        return {key: _assemble(value) for key, value in node.items()}
    return node


def parse_steps(data: QueryDict | dict[str, Any]) -> list[dict[str, Any]]:
    """The steps the form describes, typed per field (what the API would store)."""
    root: dict[str, Any] = {}
    for name in data:
        if not name.startswith("steps["):
            continue
        tokens = _tokens(name)
        if tokens is None:
            continue
        value = data.get(name, "")
        node: Any = root
        for position, (key, index) in enumerate(tokens):
            last = position == len(tokens) - 1
            if not isinstance(node, dict):
                break
            if index is None:
                if last:
                    node[key] = value
                else:
                    node = node.setdefault(key, {})
                continue
            items = node.setdefault(key, _Indexed())
            if not isinstance(items, _Indexed):
                break
            if last:
                items[index] = value
            else:
                node = items.setdefault(index, {})
    steps = _assemble(root).get("steps", [])
    return [_typed_step(step) for step in steps]


def _typed_step(raw: Any) -> dict[str, Any]:
    if not isinstance(raw, dict):
        return {}
    step: dict[str, Any] = {}
    for name in ("id", "type"):
        step[name] = str(raw.get(name, "")).strip()
    type_name = step["type"]
    for name in type_fields(type_name):
        spec = field_spec(name)
        if name not in raw:
            if name == "branches" and type_name == "branch":
                step[name] = []
            continue
        value = _typed_value(spec, name, raw[name])
        if value is not None:
            step[name] = value
    for name in ("name", "if"):
        value = str(raw.get(name, "")).strip() if not isinstance(raw.get(name), dict | list) else ""
        if value:
            step[name] = value
    return step


def _typed_value(spec: FieldSpec, name: str, raw: Any) -> Any:
    if spec.kind == "branches":
        if name == "else":
            steps = raw if isinstance(raw, list) else []
            return [_typed_step(step) for step in steps] or None
        return [_typed_branch(branch) for branch in raw] if isinstance(raw, list) else []
    if spec.kind == "channels":
        return [_typed_stage(stage) for stage in raw] if isinstance(raw, list) else []
    if isinstance(raw, dict | list):
        return None
    text = str(raw).strip()
    if not text:
        return None
    if spec.kind == "int":
        return int(text) if text.isdigit() else text
    if spec.kind == "bool":
        return True
    if spec.kind == "auto":
        try:
            return json.loads(text)
        except ValueError:
            return text
    return text


def _typed_branch(raw: Any) -> dict[str, Any]:
    raw = raw if isinstance(raw, dict) else {}
    branch: dict[str, Any] = {"if": str(raw.get("if", "")).strip()}
    if str(raw.get("name", "")).strip():
        branch["name"] = str(raw["name"]).strip()
    if raw.get("end"):
        branch["end"] = True
    steps = raw.get("steps")
    branch["steps"] = [_typed_step(step) for step in steps] if isinstance(steps, list) else []
    return branch


def _typed_stage(raw: Any) -> dict[str, Any]:
    raw = raw if isinstance(raw, dict) else {}
    stage = {name: str(raw.get(name, "")).strip() for name in ("channel", "template", "after")}
    return {name: value for name, value in stage.items() if value or name != "after"}


# --------------------------------------------------------------------------------------------
# Structural edits: add, move, remove (form submissions named ``_op``)
# --------------------------------------------------------------------------------------------


def _resolve(steps: list[dict[str, Any]], path: str) -> tuple[list[Any], int] | None:
    """The list holding the item at ``path`` (``steps[1].else[0]``) and the item's index."""
    tokens = _tokens(path)
    if not tokens or tokens[0][0] != "steps" or tokens[-1][1] is None:
        return None
    node: Any = {"steps": steps}
    for key, index in tokens[:-1]:
        node = node.get(key) if isinstance(node, dict) else None
        if index is not None:
            node = node[index] if isinstance(node, list) and index < len(node) else None
    key, index = tokens[-1]
    items = node.get(key) if isinstance(node, dict) else None
    if not isinstance(items, list) or index is None or index >= len(items):
        return None
    return items, index


def _list_at(steps: list[dict[str, Any]], path: str) -> list[Any] | None:
    """The list at ``path`` (``steps``, ``steps[2].else``), created when a branch has no ``else`` yet."""
    if path == "steps":
        return steps
    parent_path, _, name = path.rpartition(".")
    found = _resolve(steps, parent_path)
    if found is None or name not in {"steps", "else", "channels", "branches"}:
        return None
    parent = found[0][found[1]]
    if not isinstance(parent, dict):
        return None
    items = parent.setdefault(name, [])
    return items if isinstance(items, list) else None


def _step_ids(steps: list[Any]) -> set[str]:
    ids: set[str] = set()
    for step in steps:
        if not isinstance(step, dict):
            continue
        ids.add(str(step.get("id", "")))
        for branch in step.get("branches", []) if isinstance(step.get("branches"), list) else []:
            if isinstance(branch, dict) and isinstance(branch.get("steps"), list):
                ids |= _step_ids(branch["steps"])
        if isinstance(step.get("else"), list):
            ids |= _step_ids(step["else"])
    return ids


def new_step(type_name: str, steps: list[dict[str, Any]]) -> dict[str, Any]:
    """A fresh step of ``type_name`` with an id not used anywhere in ``steps``."""
    taken = _step_ids(steps)
    base = re.sub(r"[^A-Za-z0-9_-]", "-", type_name) or "step"
    number = 1
    while f"{base}-{number}" in taken:
        number += 1
    step: dict[str, Any] = {"id": f"{base}-{number}", "type": type_name}
    if type_name == "branch":
        step["branches"] = [{"if": "", "steps": []}]
    elif type_name == "escalate":
        step["channels"] = [{"channel": "in_app", "template": ""}]
    return step


def apply_op(steps: list[dict[str, Any]], op: str, data: QueryDict | dict[str, Any]) -> str:
    """Apply one structural edit in place; returns what happened, in words (for the status line)."""
    verb, _, target = op.partition(":")
    if verb == "add":
        items = _list_at(steps, target)
        type_name = str(data.get(f"add_type:{target}", ""))
        if items is None or type_name not in step_types():
            return "Choose a step type to add."
        items.append(new_step(type_name, steps))
        return f"Added a {type_name} step."
    if verb == "add-branch":
        items = _list_at(steps, f"{target}.branches")
        if items is None:
            return "No such branch step."
        items.append({"if": "", "steps": []})
        return "Added a branch."
    if verb == "add-stage":
        items = _list_at(steps, f"{target}.channels")
        if items is None:
            return "No such escalation."
        used = {stage.get("channel") for stage in items if isinstance(stage, dict)}
        channel = next((name for name in ESCALATION_CHANNELS if name not in used), "email")
        items.append({"channel": channel, "template": "", "after": ""})
        return "Added a channel to the escalation."
    found = _resolve(steps, target)
    if found is None:
        return "That item is no longer there."
    items, index = found
    if verb == "remove":
        items.pop(index)
        return "Removed."
    if verb in {"up", "down"}:
        other = index - 1 if verb == "up" else index + 1
        if 0 <= other < len(items):
            items[index], items[other] = items[other], items[index]
            return "Moved."
        return "Already at the edge."
    return "Unknown edit."


# --------------------------------------------------------------------------------------------
# Errors: each at its step and field
# --------------------------------------------------------------------------------------------

STEP_PATH = re.compile(r"^(.*(?:steps|else)\[\d+\])")


def validation_errors(steps: list[dict[str, Any]]) -> dict[str, str]:
    try:
        validate_steps(steps)
    except DefinitionError as exc:
        return dict(exc.errors)
    return {}


def error_owner(path: str) -> str | None:
    """The step an error path belongs to: ``steps[1].branches[0].if`` → ``steps[1]``."""
    match = STEP_PATH.match(path)
    return match.group(1) if match else None


def _walk(steps: Any, where: str) -> Iterator[tuple[str, dict[str, Any]]]:
    for index, step in enumerate(steps if isinstance(steps, list) else []):
        if not isinstance(step, dict):
            continue
        path = f"{where}[{index}]"
        yield path, step
        for number, branch in enumerate((step.get("branches") or []) if step.get("type") == "branch" else []):
            if isinstance(branch, dict):
                yield from _walk(branch.get("steps"), f"{path}.branches[{number}].steps")
        if step.get("type") == "branch":
            yield from _walk(step.get("else"), f"{path}.else")


def template_error_paths(steps: list[dict[str, Any]], details: dict[str, Any]) -> dict[str, str]:
    """``invalid_templates`` details are keyed by template key: put each at every field using it."""
    errors: dict[str, str] = {}
    for where, step in _walk(steps, "steps"):
        if step.get("template") in details:
            errors[f"{where}.template"] = str(details[step["template"]])
        for index, stage in enumerate((step.get("channels") or []) if step.get("type") == "escalate" else []):
            if isinstance(stage, dict) and stage.get("template") in details:
                errors[f"{where}.channels[{index}].template"] = str(details[stage["template"]])
    return errors


# --------------------------------------------------------------------------------------------
# What the page shows: step cards built from the steps, the errors and the templates
# --------------------------------------------------------------------------------------------


@dataclass
class TemplateOption:
    key: str
    name: str
    channel: str
    published: bool
    preview: str


def template_options(environment_id: int) -> list[TemplateOption]:
    """The environment's templates with a one-line preview of their published version (one query)."""
    options = []
    for template in (
        Template.objects.filter(environment_id=environment_id).select_related("published_version").order_by("key")
    ):
        version = template.published_version
        preview = ""
        if version is not None:
            parts = [version.subject if template.channel == "email" else version.title, version.body]
            preview = shorten(" — ".join(part for part in parts if part), 160)
        options.append(
            TemplateOption(template.key, template.name, template.channel, version is not None, preview or "(empty)")
        )
    return options


class _Cards:
    """Builds the view model of the step list; remembers which errors it placed."""

    def __init__(self, errors: dict[str, str], templates: list[TemplateOption]) -> None:
        self.errors = errors
        self.placed: set[str] = set()
        self.templates = templates
        self.types = step_types()

    def error(self, path: str) -> str:
        if path in self.errors:
            self.placed.add(path)
            return self.errors[path]
        return ""

    def field(self, path: str, name: str, spec: FieldSpec, value: Any, *, channel: str | None = None) -> dict[str, Any]:
        input_name = f"{path}.{name}"
        if value is None:
            shown = ""
        elif isinstance(value, str):
            shown = value
        elif isinstance(value, bool | int | float) and spec.kind != "auto":
            shown = str(value)
        else:
            shown = json.dumps(value, ensure_ascii=False)
        row: dict[str, Any] = {
            "name": input_name,
            "id": "wf-" + re.sub(r"[^A-Za-z0-9_-]", "-", input_name),
            "label": spec.label,
            "kind": spec.kind,
            "help": spec.help,
            "placeholder": spec.placeholder,
            "value": shown,
            "checked": bool(value) if spec.kind == "bool" else False,
            "choices": spec.choices,
            "error": self.error(input_name),
        }
        if spec.kind == "template":
            row["options"] = [option for option in self.templates if channel is None or option.channel == channel]
            known = {option.key for option in row["options"]}
            row["missing"] = shown if shown and shown not in known else ""
            row["optional"] = channel == "webhook"
            row["preview"] = next((option.preview for option in self.templates if option.key == shown), "")
        return row

    def step_list(self, steps: Any, path: str) -> dict[str, Any]:
        items = steps if isinstance(steps, list) else []
        return {
            "path": path,
            "error": self.error(path),
            "cards": [self.card(step, f"{path}[{index}]", index, len(items)) for index, step in enumerate(items)],
            "types": self.types,
        }

    def card(self, step: Any, path: str, index: int, count: int) -> dict[str, Any]:
        step = step if isinstance(step, dict) else {}
        type_name = str(step.get("type", ""))
        card: dict[str, Any] = {
            "path": path,
            "anchor": "wf-" + re.sub(r"[^A-Za-z0-9_-]", "-", path),
            "type": type_name,
            "type_help": TYPE_HELP.get(type_name, ""),
            "first": index == 0,
            "last": index == count - 1,
            "fields": [],
            "branches": None,
            "stages": None,
        }
        card["type_error"] = self.error(f"{path}.type")
        card["common"] = [self.field(path, name, COMMON_SPECS[name], step.get(name)) for name in ("id", "name", "if")]
        channel = CHANNEL_STEP_TYPES.get(type_name)
        for name in type_fields(type_name):
            spec = field_spec(name)
            if spec.kind == "branches":
                continue
            if spec.kind == "channels":
                card["stages"] = self.stages(step.get(name), path)
                card["stages_error"] = self.error(f"{path}.channels")
                continue
            card["fields"].append(self.field(path, name, spec, step.get(name), channel=channel))
        if type_name == "branch":
            branches = step.get("branches") if isinstance(step.get("branches"), list) else []
            card["branches"] = [
                self.branch(branch, f"{path}.branches[{number}]") for number, branch in enumerate(branches)
            ]
            card["branches_error"] = self.error(f"{path}.branches")
            card["else"] = self.step_list(step.get("else"), f"{path}.else")
        # errors of the step as a whole (a delay with two modes, unknown fields); after its fields,
        # so that an error nobody placed on a field still shows on this card
        card["error"] = self.error(path)
        card["stray"] = [
            {"path": key, "message": message}
            for key, message in self.errors.items()
            if key not in self.placed and error_owner(key) == path
        ]
        self.placed.update(row["path"] for row in card["stray"])
        card["has_error"] = bool(card["error"] or card["type_error"] or card["stray"]) or any(
            row["error"] for row in card["common"] + card["fields"]
        )
        return card

    def branch(self, branch: Any, path: str) -> dict[str, Any]:
        branch = branch if isinstance(branch, dict) else {}
        return {
            "path": path,
            "error": self.error(path),
            "name": self.field(path, "name", FieldSpec("Branch name", help="Optional."), branch.get("name")),
            "if": self.field(
                path, "if", FieldSpec("If", help="A condition, e.g. payload.amount > 100."), branch.get("if")
            ),
            "end": self.field(path, "end", FieldSpec("End the run after these steps", "bool"), branch.get("end")),
            "steps": self.step_list(branch.get("steps"), f"{path}.steps"),
        }

    def stages(self, stages: Any, path: str) -> list[dict[str, Any]]:
        rows = []
        for number, stage in enumerate(stages if isinstance(stages, list) else []):
            stage = stage if isinstance(stage, dict) else {}
            where = f"{path}.channels[{number}]"
            rows.append(
                {
                    "path": where,
                    "error": self.error(where),
                    "channel": self.field(
                        where,
                        "channel",
                        FieldSpec("Channel", "choice", choices=ESCALATION_CHANNELS),
                        stage.get("channel"),
                    ),
                    "template": self.field(where, "template", FIELD_SPECS["template"], stage.get("template")),
                    "after": self.field(
                        where,
                        "after",
                        FieldSpec("After", help="From the start; empty for the first.", placeholder="1h"),
                        stage.get("after"),
                    ),
                }
            )
        return rows


def editor_steps(
    steps: list[dict[str, Any]], errors: dict[str, str], templates: list[TemplateOption]
) -> tuple[dict[str, Any], list[dict[str, str]]]:
    """The step list's view model, and the errors no field or card took (shown above the form)."""
    cards = _Cards(errors, templates)
    root = cards.step_list(steps, "steps")
    other = [{"path": key, "message": message} for key, message in errors.items() if key not in cards.placed]
    return root, other


def error_step_paths(errors: dict[str, str]) -> set[str]:
    return {owner for owner in (error_owner(key) for key in errors) if owner}


def diagram(steps: list[dict[str, Any]], errors: dict[str, str], title: str) -> SafeString:
    # steps_svg escapes every value it draws
    return mark_safe(steps_svg(steps, error_paths=error_step_paths(errors), title=title))


# --------------------------------------------------------------------------------------------
# The admin views (mixed into WorkflowAdmin)
# --------------------------------------------------------------------------------------------


class WorkflowEditorAdmin(ModelAdmin):
    """The editor views of ``WorkflowAdmin`` (URL names ``workflows_workflow_editor`` and friends)."""

    def get_urls(self) -> list[URLPattern]:
        def view(func: Any, suffix: str) -> URLPattern:
            return path(
                f"<path:object_id>/{suffix}/",
                self.admin_site.admin_view(func),
                name=f"workflows_workflow_{suffix.replace('/', '_')}",
            )

        return [
            view(self.editor_view, "editor"),
            view(self.diagram_view, "diagram"),
            view(self.diff_view, "diff"),
            view(self.test_run_view, "test"),
            path(
                "<path:object_id>/test/<int:event_id>/timeline/",
                self.admin_site.admin_view(self.test_timeline_view),
                name="workflows_workflow_test_timeline",
            ),
            path(
                "<path:object_id>/rollback/<int:number>/",
                self.admin_site.admin_view(self.rollback_view),
                name="workflows_workflow_rollback",
            ),
            *super().get_urls(),
        ]

    @admin.display(description="steps")
    def steps_editor_link(self, obj: Workflow) -> str:
        if obj.pk is None:
            return "Save the workflow first, then edit its steps."
        url = reverse("admin:workflows_workflow_editor", args=[obj.pk])
        return format_html('<a class="button" href="{}">Open the workflow editor</a>', url)

    def _workflow_or_404(self, request: HttpRequest, object_id: str) -> Workflow:
        workflow = self.get_object(request, object_id)
        if workflow is None or not self.has_view_permission(request, workflow):
            raise Http404("No such workflow.")
        return workflow

    def _editor_url(self, workflow: Workflow) -> str:
        return reverse("admin:workflows_workflow_editor", args=[workflow.pk])

    def editor_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        workflow = self._workflow_or_404(request, object_id)
        if request.method == "GET":
            steps: list[dict[str, Any]] = workflow.draft_steps if isinstance(workflow.draft_steps, list) else []
            source = request.GET.get("from_version", "")
            loaded = None
            if source.isdigit():
                version = workflow.versions.filter(number=int(source)).first()
                if version is not None:
                    steps, loaded = version.steps, version.number
            return self._editor_response(request, workflow, steps=steps, errors={}, loaded=loaded)
        if request.method != "POST":
            return HttpResponseNotAllowed(["GET", "POST"])
        steps = parse_steps(request.POST)
        op = request.POST.get("_op", "")
        if op:
            status = apply_op(steps, op, request.POST)
            if request.POST.get("_fragment"):
                return self._fragment(request, workflow, steps)
            return self._editor_response(request, workflow, steps=steps, errors={}, status=status)
        if not self.has_change_permission(request, workflow):
            raise PermissionDenied
        return self._save(request, workflow, steps)

    def _save(self, request: HttpRequest, workflow: Workflow, steps: list[dict[str, Any]]) -> HttpResponse:
        publish = request.POST.get("_action") == "publish"
        note = request.POST.get("note", "").strip()[:500]
        errors = validation_errors(steps)
        refused = "Not published" if publish else "Nothing was saved"
        if errors:
            self.message_user(request, f"{refused}: fix the fields marked below.", messages.ERROR)
            return self._editor_response(request, workflow, steps=steps, errors=errors, status="")
        try:
            workflow, _ = workflow_upsert(
                environment=workflow.environment,
                key=workflow.key,
                steps=steps,
                publish=publish,
                note=note,
                created_by=request.user,
            )
        except ApiError as exc:
            details = exc.details if isinstance(exc.details, dict) else {}
            if exc.error_code == "invalid_templates":
                errors = template_error_paths(steps, details)
            else:
                errors = {str(key): str(value) for key, value in details.items()}
            errors = errors or {"workflow": str(exc.detail)}
            self.message_user(request, f"{refused}: {exc.detail}", messages.ERROR)
            return self._editor_response(request, workflow, steps=steps, errors=errors, status="")
        if publish:
            version = workflow.published_version
            assert version is not None
            self.log_change(request, workflow, f"Published version {version.number}. {note}".strip())
            self.message_user(request, f"Published: {workflow.key} version {version.number}.", messages.SUCCESS)
        else:
            self.log_change(request, workflow, "Saved the draft steps in the editor.")
            self.message_user(request, f"Draft saved: {workflow.key} (not published yet).", messages.SUCCESS)
        return HttpResponseRedirect(self._editor_url(workflow))

    def _fragment(self, request: HttpRequest, workflow: Workflow, steps: list[dict[str, Any]]) -> HttpResponse:
        root, _ = editor_steps(steps, {}, template_options(workflow.environment_id))
        html = render_to_string(
            "admin/workflows/workflow/steps_fragment.html",
            {"list": root, "can_change": self.has_change_permission(request, workflow)},
            request=request,
        )
        return HttpResponse(html)

    def _editor_response(
        self,
        request: HttpRequest,
        workflow: Workflow,
        *,
        steps: list[dict[str, Any]],
        errors: dict[str, str],
        loaded: int | None = None,
        status: str = "",
        trial: TrialForm | None = None,
    ) -> HttpResponse:
        templates = template_options(workflow.environment_id)
        root, other_errors = editor_steps(steps, errors, templates)
        versions = list(workflow_versions(workflow=workflow))
        published = next((version for version in versions if version.pk == workflow.published_version_id), None)
        can_change = self.has_change_permission(request, workflow)
        context = {
            **self.admin_site.each_context(request),
            **self._trial_context(request, workflow, trial or trial_form(workflow, published)),
            "opts": self.model._meta,
            "title": f"Edit the steps of “{workflow.name}”",
            "subtitle": workflow.key,
            "workflow": workflow,
            "list": root,
            "other_errors": other_errors,
            "error_count": len(errors),
            "diagram": diagram(steps, errors, f"Workflow {workflow.key}"),
            "templates": templates,
            "versions": [
                {
                    "version": version,
                    "is_published": version.pk == workflow.published_version_id,
                    "is_superseded": published is not None and version.number < published.number,
                }
                for version in versions
            ],
            "published": published,
            "draft_differs": published is None or published.steps != workflow.draft_steps,
            "loaded": loaded,
            "status": status,
            "note": request.POST.get("note", "") if request.method == "POST" else "",
            "can_change": can_change,
            "editor_url": self._editor_url(workflow),
            "diagram_url": reverse("admin:workflows_workflow_diagram", args=[workflow.pk]),
            "diff_url": reverse("admin:workflows_workflow_diff", args=[workflow.pk]),
            "settings_url": reverse("admin:workflows_workflow_change", args=[workflow.pk]),
            "media": forms.Media(
                js=["clarion/admin/workflow-editor.js"], css={"all": ["clarion/admin/workflow-editor.css"]}
            ),
        }
        request.current_app = self.admin_site.name
        return TemplateResponse(request, "admin/workflows/workflow/editor.html", context)

    def diagram_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        """The diagram of the posted (unsaved) steps, their validation errors marked."""
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        workflow = self._workflow_or_404(request, object_id)
        steps = parse_steps(request.POST)
        svg = steps_svg(steps, error_paths=error_step_paths(validation_errors(steps)), title=f"Workflow {workflow.key}")
        return HttpResponse(svg, content_type="image/svg+xml; charset=utf-8")

    def rollback_view(self, request: HttpRequest, object_id: str, number: int) -> HttpResponse:
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        workflow = self._workflow_or_404(request, object_id)
        if not self.has_change_permission(request, workflow):
            raise PermissionDenied
        try:
            version = workflow_rollback(workflow=workflow, version_number=number, created_by=request.user)
        except ApiError as exc:
            self.message_user(request, f"Could not roll back: {exc.detail}", messages.ERROR)
        else:
            self.log_change(request, workflow, f"Rolled back to version {number} (published version {version.number}).")
            self.message_user(
                request,
                f"Rolled back: version {version.number} (a copy of version {number}) is now published.",
                messages.SUCCESS,
            )
        return HttpResponseRedirect(self._editor_url(workflow))

    def diff_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        workflow = self._workflow_or_404(request, object_id)
        numbers = [request.GET.get("a", ""), request.GET.get("b", "")]
        if not all(number.isdigit() for number in numbers):
            self.message_user(request, "Choose two versions to compare.", messages.WARNING)
            return HttpResponseRedirect(self._editor_url(workflow))
        a, b = sorted(int(number) for number in numbers)
        try:
            rows = workflow_version_diff(workflow=workflow, a=a, b=b)
        except ApiError as exc:
            self.message_user(request, str(exc.detail), messages.ERROR)
            return HttpResponseRedirect(self._editor_url(workflow))
        differ = difflib.HtmlDiff(tabsize=2)
        tables = [
            {
                **row,
                # HtmlDiff escapes the text it lays out
                "table": mark_safe(
                    differ.make_table(
                        row["before"].splitlines() or [""],
                        row["after"].splitlines() or [""],
                        fromdesc=f"version {a}",
                        todesc=f"version {b}",
                    )
                ),
            }
            for row in rows
        ]
        context = {
            **self.admin_site.each_context(request),
            "opts": self.model._meta,
            "title": f"{workflow.key}: version {a} → version {b}",
            "workflow": workflow,
            "a": a,
            "b": b,
            "rows": tables,
            "changed_count": sum(1 for row in rows if row["changed"]),
            "editor_url": self._editor_url(workflow),
            "media": forms.Media(
                css={"all": ["clarion/admin/template-editor.css", "clarion/admin/workflow-editor.css"]}
            ),
        }
        request.current_app = self.admin_site.name
        return TemplateResponse(request, "admin/workflows/workflow/diff.html", context)

    # --- "Test this workflow": trigger the published version for one subscriber, watch the timeline

    def _can_test(self, request: HttpRequest, workflow: Workflow) -> bool:
        """Triggering is changing what the workflow does to people; watching it is reading events."""
        return self.has_change_permission(request, workflow) and request.user.has_perm("events.view_event")

    def _trial_context(self, request: HttpRequest, workflow: Workflow, trial: TrialForm) -> dict[str, Any]:
        return {
            "trial": trial,
            "can_test": self._can_test(request, workflow),
            "test_url": reverse("admin:workflows_workflow_test", args=[workflow.pk]),
        }

    def _trial_timeline_context(self, workflow: Workflow, event: Event) -> dict[str, Any]:
        timeline, live = trial_timeline(event)
        return {
            "timeline": timeline,
            "live": live,
            "original": event,
            "event_environment": workflow.environment,
            "runs_shown": TRIAL_RUNS_SHOWN,
            "all_runs_url": reverse("admin:workflows_run_changelist") + f"?event__id__exact={event.pk}",
            "event_url": reverse("admin:events_event_change", args=[event.pk]),
            "poll_url": reverse("admin:workflows_workflow_test_timeline", args=[workflow.pk, event.pk]),
            "can_cancel": False,  # the event page has the buttons
            "can_resend": False,
        }

    def test_run_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        """POST: trigger for real. With ``_fragment`` (the page's script) the answer is the test
        panel (its form and the event's timeline); without, the event's page (or the editor with
        the form's error)."""
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        workflow = self._workflow_or_404(request, object_id)
        if not self._can_test(request, workflow):
            raise PermissionDenied
        published = workflow.published_version
        subscriber_id = request.POST.get("subscriber_id", "").strip()[:200]
        payload_text = request.POST.get("payload", "")
        fragment = bool(request.POST.get("_fragment"))
        try:
            event = trial_trigger(workflow=workflow, subscriber_id=subscriber_id, payload_text=payload_text)
        except TrialRefused as exc:
            trial = trial_form(
                workflow,
                published,
                subscriber_id=subscriber_id,
                payload=payload_text,
                errors=[exc.message],
                details=exc.details,
            )
            if fragment:
                return self._trial_panel(request, workflow, trial, status=422)
            self.message_user(request, f"Not triggered: {exc.message}", messages.ERROR)
            steps = workflow.draft_steps if isinstance(workflow.draft_steps, list) else []
            return self._editor_response(request, workflow, steps=steps, errors={}, trial=trial)
        self.log_change(
            request, workflow, f"Test run: triggered event {event.transaction_id} for subscriber {subscriber_id}."
        )
        if not fragment:
            self.message_user(
                request,
                f"Triggered {workflow.key} for {subscriber_id}: event {event.transaction_id}.",
                messages.SUCCESS,
            )
            return HttpResponseRedirect(reverse("admin:events_event_change", args=[event.pk]))
        trial = trial_form(workflow, published, subscriber_id=subscriber_id, payload=payload_text)
        fresh = trial_event(workflow=workflow, event_id=event.pk)  # processed meanwhile, maybe
        return self._trial_panel(request, workflow, trial, event=fresh)

    def _trial_panel(
        self,
        request: HttpRequest,
        workflow: Workflow,
        trial: TrialForm,
        *,
        event: Event | None = None,
        status: int = 200,
    ) -> HttpResponse:
        context = {**self._trial_context(request, workflow, trial), "workflow": workflow}
        if event is not None:
            context.update(trial_event=event, **self._trial_timeline_context(workflow, event))
        html = render_to_string("admin/workflows/workflow/test_panel.html", context, request=request)
        return HttpResponse(html, status=status)

    def test_timeline_view(self, request: HttpRequest, object_id: str, event_id: int) -> HttpResponse:
        """GET: the test run's timeline (the event page's partial), for the panel to refresh."""
        if request.method != "GET":
            return HttpResponseNotAllowed(["GET"])
        workflow = self._workflow_or_404(request, object_id)
        if not request.user.has_perm("events.view_event"):
            raise PermissionDenied
        event = trial_event(workflow=workflow, event_id=event_id)
        if event is None:
            raise Http404("No such event of this workflow.")
        html = render_to_string(
            "admin/workflows/workflow/test_timeline.html",
            self._trial_timeline_context(workflow, event),
            request=request,
        )
        return HttpResponse(html)
