"""A picture of a workflow: a vertical SVG flow chart, drawn on the server from the steps list.

``steps_svg(steps)`` is a pure function of the (possibly invalid, half-edited) steps: each step is a
box (its type, id, what it does and its condition), a branch fans out into its branches and its
``else`` side by side, then joins again (a branch with ``end: true`` ends instead). Every string
that comes from the steps is escaped and shortened; nothing is styled with CSS, so the admin's
Content-Security-Policy has nothing to object to. ``error_paths`` marks the steps that have
validation errors (their JSON paths, e.g. ``steps[1].branches[0].steps[0]``).
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from html import escape
from typing import Any

BOX_WIDTH = 210
LINE_HEIGHT = 15
GAP = 22  # vertical space between boxes
COLUMN_GAP = 24  # horizontal space between branch columns
LABEL_HEIGHT = 18  # a branch column's condition label
PAD = 16
MAX_CHARS = 30
MAX_DEPTH = 8  # deeper nesting (invalid anyway) is drawn as one box

COLOURS = {
    "channel": ("#e0f2fe", "#0369a1"),
    "wait": ("#fef3c7", "#b45309"),
    "branch": ("#ede9fe", "#6d28d9"),
    "exit": ("#fee2e2", "#b91c1c"),
    "other": ("#f3f4f6", "#4b5563"),
}
KINDS = {
    "delay": "wait",
    "digest": "wait",
    "throttle": "wait",
    "escalate": "channel",
    "branch": "branch",
    "exit": "exit",
}
CHANNEL_TYPES = {"in_app", "email", "sms", "push", "chat", "webhook"}
ERROR_STROKE = "#ba2121"
LINE_COLOUR = "#9ca3af"


def shorten(value: Any, limit: int = MAX_CHARS) -> str:
    text = " ".join(str(value).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def step_summary(step: dict[str, Any]) -> list[str]:
    """What the box says under its title: the step's main settings, then its condition."""
    kind = step.get("type")
    lines: list[str] = []
    if kind in CHANNEL_TYPES:
        lines.append(f"template {step['template']}" if step.get("template") else "no template")
    elif kind == "delay":
        for name, label in (("for", "for"), ("until", "until"), ("until_next", "until next")):
            if step.get(name):
                lines.append(f"{label} {step[name]}")
    elif kind == "digest":
        lines.append(f"window {step['window']}" if step.get("window") else f"{step.get('schedule', '')}")
        if step.get("key"):
            lines.append(f"per {step['key']}")
    elif kind == "throttle":
        lines.append(f"{step.get('limit', '?')} per {step.get('window', '?')}")
    elif kind == "escalate":
        stages = step["channels"] if isinstance(step.get("channels"), list) else []
        lines.append(" → ".join(str(stage.get("channel", "?")) for stage in stages if isinstance(stage, dict)))
        lines.append(f"stop on {step.get('stop_on', 'read')}")
    elif kind == "exit" and step.get("reason"):
        lines.append(str(step["reason"]))
    if step.get("if"):
        lines.append(f"if {step['if']}")
    return [line for line in lines if line]


@dataclass
class _Canvas:
    parts: list[str] = field(default_factory=list)
    errors: Collection[str] = ()

    def line(self, x1: float, y1: float, x2: float, y2: float) -> None:
        self.parts.append(f'<line x1="{x1:g}" y1="{y1:g}" x2="{x2:g}" y2="{y2:g}" stroke="{LINE_COLOUR}"/>')

    def text(self, x: float, y: float, value: str, *, weight: str = "normal", colour: str = "#111827") -> None:
        self.parts.append(
            f'<text x="{x:g}" y="{y:g}" text-anchor="middle" font-size="12" font-weight="{weight}" '
            f'fill="{colour}">{escape(value)}</text>'
        )

    def pill(self, x: float, y: float, label: str) -> None:
        self.parts.append(
            f'<rect x="{x - 34:g}" y="{y:g}" width="68" height="22" rx="11" fill="#f9fafb" stroke="{LINE_COLOUR}"/>'
        )
        self.text(x, y + 15, label, colour="#4b5563")


class _Block:
    width: float
    height: float

    def draw(self, canvas: _Canvas, centre: float, top: float) -> None:
        raise NotImplementedError


class _Box(_Block):
    def __init__(self, step: Any, path: str) -> None:
        self.path = path
        if isinstance(step, dict):
            self.title = f"{step.get('type') or '?'} · {step.get('id') or '?'}"
            self.lines = step_summary(step)
            self.kind = "channel" if step.get("type") in CHANNEL_TYPES else KINDS.get(str(step.get("type")), "other")
        else:
            self.title, self.lines, self.kind = "not a step", [], "other"
        self.width = BOX_WIDTH
        self.height = 14 + LINE_HEIGHT * (1 + len(self.lines))

    def draw(self, canvas: _Canvas, centre: float, top: float) -> None:
        fill, accent = COLOURS[self.kind]
        failed = self.path in canvas.errors
        stroke = ERROR_STROKE if failed else accent
        marker = ' data-error="true"' if failed else ""
        canvas.parts.append(f'<g data-step="{escape(self.path)}"{marker}>')
        canvas.parts.append(
            f'<rect x="{centre - self.width / 2:g}" y="{top:g}" width="{self.width:g}" height="{self.height:g}" '
            f'rx="6" fill="{fill}" stroke="{stroke}" stroke-width="{2 if failed else 1}"/>'
        )
        canvas.text(centre, top + 4 + LINE_HEIGHT, shorten(self.title), weight="bold", colour=accent)
        for index, line in enumerate(self.lines, start=2):
            canvas.text(centre, top + 4 + LINE_HEIGHT * index, shorten(line))
        canvas.parts.append("</g>")


class _Sequence(_Block):
    def __init__(self, steps: Any, path: str, depth: int) -> None:
        items = steps if isinstance(steps, list) else []
        self.blocks: list[_Block] = [_block(step, f"{path}[{index}]", depth) for index, step in enumerate(items)]
        self.width = max((block.width for block in self.blocks), default=BOX_WIDTH)
        self.height = sum(block.height for block in self.blocks) + GAP * max(len(self.blocks) - 1, 0)

    def draw(self, canvas: _Canvas, centre: float, top: float) -> None:
        y = top
        for index, block in enumerate(self.blocks):
            if index:
                canvas.line(centre, y - GAP, centre, y)
            block.draw(canvas, centre, y)
            y += block.height + GAP


class _Branch(_Block):
    """The branch's box, its columns side by side (each branch, then ``else``), and the join."""

    def __init__(self, step: dict[str, Any], path: str, depth: int) -> None:
        self.head = _Box(step, path)
        branches = step["branches"] if isinstance(step.get("branches"), list) else []
        self.columns: list[tuple[str, _Sequence, bool]] = []
        for index, branch in enumerate(branches):
            branch = branch if isinstance(branch, dict) else {}
            label = branch.get("name") or (f"if {branch['if']}" if branch.get("if") else "if ?")
            sequence = _Sequence(branch.get("steps"), f"{path}.branches[{index}].steps", depth + 1)
            self.columns.append((str(label), sequence, bool(branch.get("end"))))
        self.columns.append(("else", _Sequence(step.get("else"), f"{path}.else", depth + 1), False))
        widths = [sequence.width for _, sequence, _ in self.columns]
        self.width = max(sum(widths) + COLUMN_GAP * (len(widths) - 1), BOX_WIDTH)
        self.body = max(sequence.height for _, sequence, _ in self.columns)
        self.height = self.head.height + GAP + LABEL_HEIGHT + self.body + GAP + 6

    def draw(self, canvas: _Canvas, centre: float, top: float) -> None:
        self.head.draw(canvas, centre, top)
        fork = top + self.head.height + GAP / 2
        canvas.line(centre, top + self.head.height, centre, fork)
        join = fork + GAP / 2 + LABEL_HEIGHT + self.body + GAP
        x = centre - self.width / 2
        centres: list[float] = []
        for label, sequence, ends in self.columns:
            column = x + sequence.width / 2
            centres.append(column)
            canvas.line(column, fork, column, fork + GAP / 2)
            canvas.text(column, fork + GAP / 2 + 12, shorten(label, 34), colour="#6d28d9")
            body_top = fork + GAP / 2 + LABEL_HEIGHT
            sequence.draw(canvas, column, body_top + 2)
            end_of_column = body_top + 2 + sequence.height
            if ends:
                canvas.line(column, end_of_column, column, end_of_column + 6)
                canvas.pill(column, end_of_column + 6, "end")
            else:
                canvas.line(column, end_of_column if sequence.blocks else body_top, column, join)
            x += sequence.width + COLUMN_GAP
        canvas.line(min(centres), fork, max(centres), fork)
        joined = [column for column, (_, _, ends) in zip(centres, self.columns, strict=True) if not ends]
        canvas.line(min(joined), join, max(joined), join)
        if centre not in joined:
            canvas.line(centre, join, min(joined, key=lambda column: abs(column - centre)), join)
        canvas.line(centre, join, centre, top + self.height)


def _block(step: Any, path: str, depth: int) -> _Block:
    if isinstance(step, dict) and step.get("type") == "branch" and depth < MAX_DEPTH:
        return _Branch(step, path, depth)
    return _Box(step, path)


def steps_svg(steps: Any, *, error_paths: Collection[str] = (), title: str = "Workflow diagram") -> str:
    """The SVG (a string) of ``steps``: start, the steps top to bottom, end."""
    sequence = _Sequence(steps, "steps", 0)
    width = sequence.width + 2 * PAD
    pill = 22
    height = PAD + pill + GAP + sequence.height + (GAP if sequence.blocks else 0) + pill + PAD
    canvas = _Canvas(errors=set(error_paths))
    centre = width / 2
    canvas.pill(centre, PAD, "trigger")
    body_top = PAD + pill + GAP
    canvas.line(centre, PAD + pill, centre, body_top)
    sequence.draw(canvas, centre, body_top)
    bottom = body_top + sequence.height
    if sequence.blocks:
        canvas.line(centre, bottom, centre, bottom + GAP)
        bottom += GAP
    canvas.pill(centre, bottom, "end")
    count = len(sequence.blocks)
    label = f"{title}: {count} step{'s' if count != 1 else ''}"
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" class="wf-diagram" width="{width:g}" height="{height:g}" '
        f'viewBox="0 0 {width:g} {height:g}" role="img" aria-label="{escape(label)}" '
        f'font-family="system-ui, -apple-system, Segoe UI, sans-serif">'
        f"<title>{escape(label)}</title>{''.join(canvas.parts)}</svg>"
    )
