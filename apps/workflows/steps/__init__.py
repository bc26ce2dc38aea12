"""Step types: one module each (channel steps share one), registered on import.

``step_type(name)`` gives the ``StepType`` of a step's ``type``; ``all_step_types()`` every one, in
a fixed order (channel steps first: escalations reuse what they load). Definitions, the engine and
the templates' "used by" all read step types from here.
"""

from apps.workflows.steps import base, branch, channel, delay, digest, escalate, exit, throttle  # noqa: F401
from apps.workflows.steps.base import (
    ChunkData,
    ChunkPlan,
    ChunkWrites,
    Held,
    StepType,
    Stop,
    Validation,
    Walk,
    all_step_types,
    known_step_types,
    register,
    step_type,
)
from apps.workflows.steps.channel import CHANNEL_STEP_TYPES, TEMPLATE_OPTIONAL_STEP_TYPES

__all__ = [
    "CHANNEL_STEP_TYPES",
    "TEMPLATE_OPTIONAL_STEP_TYPES",
    "ChunkData",
    "ChunkPlan",
    "ChunkWrites",
    "Held",
    "StepType",
    "Stop",
    "Validation",
    "Walk",
    "all_step_types",
    "known_step_types",
    "register",
    "step_type",
]
