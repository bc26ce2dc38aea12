"""Settings for the chaos suite's processes: Clarion's own, with one optional tuning knob.

``CHAOS_CIRCUIT_COOLDOWN`` (seconds) shortens the circuit breaker's cooldown so that the short
profile can watch a circuit open, probe and close within its few minutes. The full profile
leaves it unset: production's 60 s.
"""

import os

from config.settings import *  # noqa: F403

if os.environ.get("CHAOS_CIRCUIT_COOLDOWN"):
    CLARION_DELIVERY = {"CIRCUIT_COOLDOWN": float(os.environ["CHAOS_CIRCUIT_COOLDOWN"])}
