from __future__ import annotations

import re
from datetime import timedelta

_SHORT = re.compile(r"^\s*(\d+)\s*(s|m|h|d|w)\s*$")
_ISO = re.compile(
    r"^P(?:(?P<weeks>\d+)W)?(?:(?P<days>\d+)D)?"
    r"(?:T(?:(?P<hours>\d+)H)?(?:(?P<minutes>\d+)M)?(?:(?P<seconds>\d+)S)?)?$"
)
# The same forms as one JSON-Schema pattern, for the OpenAPI schema of duration fields.
DURATION_PATTERN = (
    r"^(?=.*[1-9])\s*(\d+\s*[smhdw]|[Pp](?=\S*\d)(\d+[Ww])?(\d+[Dd])?([Tt](\d+[Hh])?(\d+[Mm])?(\d+[Ss])?)?)\s*$"
)
MAX_DURATION = timedelta(days=36525)
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_duration(value: str) -> timedelta:
    """Parse ``30s``, ``10m``, ``1h``, ``2d``, ``1w`` or an ISO 8601 duration (``PT10M``)."""
    if not isinstance(value, str) or not value.strip():
        raise ValueError("a duration must be a non-empty string such as '10m' or 'PT10M'")
    duration = None
    try:
        match = _SHORT.match(value)
        if match:
            duration = timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})
        iso = _ISO.match(value.strip().upper())
        if duration is None and iso and any(iso.groupdict().values()):
            duration = timedelta(**{k: int(v) for k, v in iso.groupdict().items() if v})
    except OverflowError:
        duration = MAX_DURATION * 2
    if duration is not None:
        # Longer would overflow date arithmetic (now + delay) later, in the engine.
        if duration > MAX_DURATION:
            raise ValueError(f"'{value}' is longer than any duration Clarion keeps (100 years)")
        return duration
    raise ValueError(f"'{value}' is not a duration; use forms like 30s, 10m, 1h, 2d or PT10M")
