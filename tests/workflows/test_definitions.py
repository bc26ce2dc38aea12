"""Validation and compilation of workflow definitions."""

from __future__ import annotations

import pytest

from apps.workflows.definitions import DefinitionError, compile_steps, template_keys, validate_steps

VALID = [
    {"id": "inbox", "type": "in_app", "template": "t-in-app"},
    {"id": "wait", "type": "delay", "for": "10m"},
    {"id": "due", "type": "delay", "until": "payload.due_at"},
    {"id": "morning", "type": "delay", "until_next": "weekdays 09:00", "timezone": "Europe/Paris"},
    {"id": "batch", "type": "digest", "window": "1h", "key": "payload.post_id", "lookback": "5m", "max_events": 50},
    {"id": "daily", "type": "digest", "schedule": "daily 09:00"},
    {"id": "cap", "type": "throttle", "limit": 3, "window": "1d", "key": "payload.project"},
    {
        "id": "route",
        "type": "branch",
        "branches": [
            {"if": "payload.amount > 100", "name": "big", "steps": [{"id": "sms", "type": "sms", "template": "t-sms"}]},
            {"if": "subscriber.data.vip", "end": True, "steps": []},
        ],
        "else": [{"id": "chat", "type": "chat", "template": "t-chat"}],
    },
    {
        "id": "reach",
        "type": "escalate",
        "stop_on": "seen",
        "channels": [
            {"channel": "push", "template": "t-push"},
            {"channel": "email", "template": "t-email", "after": "1h"},
        ],
    },
    {"id": "hook", "type": "webhook"},
    {"id": "stop", "type": "exit", "if": "payload.done"},
]


def test_every_step_type_validates():
    assert validate_steps(VALID) is VALID
    assert template_keys(VALID) == {
        "t-in-app": "in_app",
        "t-sms": "sms",
        "t-chat": "chat",
        "t-push": "push",
        "t-email": "email",
    }


@pytest.mark.parametrize(
    ("step", "path", "fragment"),
    [
        ({"id": "d", "type": "delay"}, "steps[0]", "exactly one of"),
        ({"id": "d", "type": "delay", "for": "1h", "until": "payload.x"}, "steps[0]", "exactly one of"),
        ({"id": "d", "type": "delay", "until": "due_at"}, "steps[0].until", "path"),
        ({"id": "d", "type": "delay", "until_next": "someday 9am"}, "steps[0].until_next", "schedule"),
        ({"id": "d", "type": "delay", "for": "1h", "timezone": "Mars/Base"}, "steps[0].timezone", "IANA"),
        ({"id": "g", "type": "digest", "key": "payload.k"}, "steps[0]", "exactly one of"),
        ({"id": "g", "type": "digest", "window": "1h", "max_events": 1}, "steps[0].max_events", "from 2"),
        ({"id": "g", "type": "digest", "schedule": "daily 09:00-10:00"}, "steps[0].schedule", "not a range"),
        ({"id": "t", "type": "throttle", "limit": 0, "window": "1h"}, "steps[0].limit", "from 1"),
        ({"id": "t", "type": "throttle", "limit": 2, "window": "soon"}, "steps[0].window", "duration"),
        ({"id": "b", "type": "branch", "branches": []}, "steps[0].branches", "non-empty"),
        ({"id": "b", "type": "branch", "branches": [{"if": "{{", "steps": []}]}, "steps[0].branches[0].if", "invalid"),
        (
            {"id": "b", "type": "branch", "branches": [{"if": "true", "steps": [{"id": "x", "type": "nope"}]}]},
            "steps[0].branches[0].steps[0].type",
            "unknown step type",
        ),
        ({"id": "e", "type": "escalate", "channels": []}, "steps[0].channels", "non-empty"),
        (
            {
                "id": "e",
                "type": "escalate",
                "channels": [
                    {"channel": "email", "template": "a"},
                    {"channel": "email", "template": "b", "after": "1h"},
                ],
            },
            "steps[0].channels[1].channel",
            "twice",
        ),
        (
            {
                "id": "e",
                "type": "escalate",
                "channels": [
                    {"channel": "in_app", "template": "a"},
                    {"channel": "email", "template": "b", "after": "2h"},
                    {"channel": "sms", "template": "c", "after": "1h"},
                ],
            },
            "steps[0].channels[2].after",
            "cannot go down",
        ),
        (
            {"id": "e", "type": "escalate", "stop_on": "liked", "channels": [{"channel": "in_app", "template": "a"}]},
            "steps[0].stop_on",
            "one of",
        ),
        ({"id": "s", "type": "email"}, "steps[0].template", "required"),
        ({"id": "s", "type": "email", "template": "t", "wait": "1h"}, "steps[0]", "unknown field"),
    ],
)
def test_invalid_steps_name_the_json_path(step, path, fragment):
    with pytest.raises(DefinitionError) as excinfo:
        validate_steps([step])
    assert path in excinfo.value.errors, excinfo.value.errors
    assert fragment in excinfo.value.errors[path]


def test_step_ids_are_unique_across_branches():
    steps = [
        {"id": "a", "type": "in_app", "template": "t"},
        {
            "id": "b",
            "type": "branch",
            "branches": [{"if": "true", "steps": [{"id": "a", "type": "in_app", "template": "t"}]}],
        },
    ]
    with pytest.raises(DefinitionError) as excinfo:
        validate_steps(steps)
    assert "duplicate step id 'a'" in excinfo.value.errors["steps[1].branches[0].steps[0].id"]


def test_branches_compile_to_a_flat_program_with_jumps():
    program = compile_steps(
        [
            {
                "id": "route",
                "type": "branch",
                "branches": [
                    {"if": "a", "steps": [{"id": "x", "type": "in_app", "template": "t"}]},
                    {"if": "b", "end": True, "steps": [{"id": "y", "type": "in_app", "template": "t"}]},
                ],
                "else": [{"id": "z", "type": "in_app", "template": "t"}],
            },
            {"id": "after", "type": "in_app", "template": "t"},
        ]
    )
    ops = [(i["op"], i.get("step", {}).get("id"), i.get("to")) for i in program]
    assert ops == [
        ("branch", "route", None),
        ("step", "x", None),
        ("jump", None, 6),
        ("step", "y", None),
        ("end", "route", None),
        ("step", "z", None),
        ("step", "after", None),
    ]
    assert (program[0]["targets"], program[0]["else"], program[0]["after"]) == ([1, 3], 5, 6)


def test_a_flat_definition_compiles_to_itself():
    steps = [{"id": "a", "type": "in_app", "template": "t"}, {"id": "w", "type": "delay", "for": "1m"}]
    assert [i["step"] for i in compile_steps(steps)] == steps
