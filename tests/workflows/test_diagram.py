"""The workflow diagram: a pure function of the steps list, drawn as SVG with every label escaped."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

from apps.workflows.diagram import steps_svg

SVG = "{http://www.w3.org/2000/svg}"

FLOW = [
    {"id": "inbox", "type": "in_app", "template": "comment-in-app"},
    {"id": "wait", "type": "delay", "for": "10m"},
    {
        "id": "route",
        "type": "branch",
        "branches": [
            {"if": "payload.vip", "name": "VIP", "steps": [{"id": "text", "type": "sms", "template": "vip-sms"}]},
            {"if": "payload.spam", "end": True, "steps": []},
        ],
        "else": [{"id": "batch", "type": "digest", "window": "1h", "key": "payload.post_id"}],
    },
    {"id": "mail", "type": "email", "template": "comment-email", "if": "not steps.inbox.read"},
]


def boxes(svg: str) -> dict[str, ET.Element]:
    tree = ET.fromstring(svg)  # well-formed XML, or this raises
    return {group.attrib["data-step"]: group for group in tree.iter(f"{SVG}g")}


def texts(element: ET.Element) -> list[str]:
    return [node.text or "" for node in element.iter(f"{SVG}text")]


def rect(group: ET.Element) -> dict[str, float]:
    node = group.find(f"{SVG}rect")
    assert node is not None
    return {name: float(node.attrib[name]) for name in ("x", "y", "width", "height")}


def test_every_step_is_a_box_with_its_settings_nested_ones_included() -> None:
    svg = steps_svg(FLOW)
    found = boxes(svg)

    assert list(found) == [
        "steps[0]",
        "steps[1]",
        "steps[2]",
        "steps[2].branches[0].steps[0]",
        "steps[2].else[0]",
        "steps[3]",
    ]
    assert texts(found["steps[0]"]) == ["in_app · inbox", "template comment-in-app"]
    assert texts(found["steps[1]"]) == ["delay · wait", "for 10m"]
    assert texts(found["steps[3]"]) == ["email · mail", "template comment-email", "if not steps.inbox.read"]
    assert texts(found["steps[2].else[0]"]) == ["digest · batch", "window 1h", "per payload.post_id"]
    labels = texts(ET.fromstring(svg))
    assert "VIP" in labels and "if payload.spam" in labels and "else" in labels
    assert labels.count("end") == 2  # the branch that ends, and the workflow's end


def test_vertical_with_branches_side_by_side() -> None:
    found = boxes(steps_svg(FLOW))
    inbox, wait, route, mail = (rect(found[f"steps[{index}]"]) for index in range(4))
    vip, other = rect(found["steps[2].branches[0].steps[0]"]), rect(found["steps[2].else[0]"])

    assert inbox["y"] + inbox["height"] < wait["y"] < route["y"] < vip["y"] < mail["y"]
    assert vip["y"] == other["y"]  # the columns start level
    assert vip["x"] + vip["width"] < other["x"]  # ... and side by side, the branch left of else
    assert mail["y"] > max(vip["y"] + vip["height"], other["y"] + other["height"])  # joined below


def test_labels_are_escaped_and_shortened() -> None:
    hostile = [
        {"id": '<script>alert("x")</script>', "type": "email", "template": 'a"><script>alert(1)</script>'},
        {"id": "x", "type": "branch", "branches": [{"if": '"><img src=x onerror=alert(1)>', "steps": []}]},
    ]
    svg = steps_svg(hostile)

    assert "<script" not in svg and "<img" not in svg
    assert "&lt;script&gt;" in svg and "&quot;" in svg
    ET.fromstring(svg)  # still well-formed
    assert all(len(text) <= 34 for text in texts(ET.fromstring(svg)))


def test_invalid_or_half_edited_steps_still_draw() -> None:
    for steps in ([], None, "oops", [1, {"type": "nope"}, {"id": "b", "type": "branch", "branches": "x", "else": 3}]):
        svg = steps_svg(steps)
        assert ET.fromstring(svg).tag == f"{SVG}svg"
    assert 'aria-label="Workflow diagram: 0 steps"' in steps_svg([])


def test_error_paths_mark_their_step_only() -> None:
    svg = steps_svg(FLOW, error_paths={"steps[2].else[0]"})
    marked = [path for path, group in boxes(svg).items() if group.attrib.get("data-error") == "true"]

    assert marked == ["steps[2].else[0]"]


def test_pure_function_of_the_steps() -> None:
    assert steps_svg(FLOW) == steps_svg([dict(step) for step in FLOW])
    assert re.search(r'viewBox="0 0 [\d.]+ [\d.]+"', steps_svg(FLOW))
