"""Wall-clock schedules in a person's own timezone: "weekdays 09:00", "daily 08:00-20:00".

Used by delays ("until the next allowed time"), scheduled digests and quiet hours. Times are
local to a timezone; the arithmetic happens on local dates and is converted back to an aware
UTC datetime, so daylight-saving changes move nothing by an hour.

Grammar: ``<days> <HH:MM>`` or ``<days> <HH:MM>-<HH:MM>``, where days is one of ``daily``,
``weekdays``, ``weekends``, ``weekly <day>``, or a comma list of day names
(``mon,wed,fri``; ``monday``…). A range whose end is earlier than its start runs past midnight
(``22:00-07:00``) and belongs to the day it starts on.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

DAY_NAMES = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
_DAY_ALIASES = {
    **{name: i for i, name in enumerate(DAY_NAMES)},
    **{
        full: i for i, full in enumerate(["monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"])
    },
}
_DAY_SETS = {"daily": frozenset(range(7)), "weekdays": frozenset(range(5)), "weekends": frozenset({5, 6})}
_TIME = r"([01]?\d|2[0-3]):([0-5]\d)"
_SPEC = re.compile(rf"^\s*(?P<days>.+?)\s+{_TIME}(?:\s*-\s*{_TIME})?\s*$")


class ScheduleError(ValueError):
    pass


def zone(name: str | None, *, default: str = "UTC") -> ZoneInfo:
    """The named timezone, or ``default`` when the name is empty or unknown."""
    for candidate in (name, default, "UTC"):
        if candidate:
            try:
                return ZoneInfo(candidate)
            except (ZoneInfoNotFoundError, ValueError):
                continue
    return ZoneInfo("UTC")


def is_valid_zone(name: str) -> bool:
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return False
    return True


@dataclass(frozen=True)
class Schedule:
    days: frozenset[int]
    start: time
    end: time | None = None  # None: a point in time, not a window

    @property
    def crosses_midnight(self) -> bool:
        return self.end is not None and self.end <= self.start

    def _window(self, day: date, tz: ZoneInfo) -> tuple[datetime, datetime]:
        start = datetime.combine(day, self.start, tzinfo=tz)
        end_time = self.end if self.end is not None else self.start
        end_day = day + timedelta(days=1) if self.crosses_midnight else day
        end = datetime.combine(end_day, end_time, tzinfo=tz)
        return start, end

    def current_window(self, now: datetime, tz: ZoneInfo) -> tuple[datetime, datetime] | None:
        """The window containing ``now`` (start inclusive, end exclusive), if any."""
        if self.end is None:
            return None
        local = now.astimezone(tz)
        for offset in (0, -1):  # a window that crossed midnight started yesterday
            day = local.date() + timedelta(days=offset)
            if day.weekday() not in self.days:
                continue
            start, end = self._window(day, tz)
            if start <= now < end:
                return start.astimezone(UTC), end.astimezone(UTC)
        return None

    def next_start(self, now: datetime, tz: ZoneInfo) -> datetime:
        """The first start strictly after ``now``, as an aware UTC datetime."""
        local_day = now.astimezone(tz).date()
        for offset in range(0, 8):
            day = local_day + timedelta(days=offset)
            if day.weekday() not in self.days:
                continue
            start, _ = self._window(day, tz)
            if start > now:
                return start.astimezone(UTC)
        raise ScheduleError("schedule has no days")  # unreachable: days is never empty

    def next_allowed(self, now: datetime, tz: ZoneInfo) -> datetime | None:
        """None when ``now`` is inside a window; otherwise when the next window opens."""
        if self.current_window(now, tz) is not None:
            return None
        return self.next_start(now, tz)


def parse_schedule(spec: str, *, require_window: bool = False, forbid_window: bool = False) -> Schedule:
    if not isinstance(spec, str) or not spec.strip():
        raise ScheduleError("must be a schedule such as 'weekdays 09:00' or 'daily 09:00-17:00'")
    match = _SPEC.match(spec.lower())
    if not match:
        raise ScheduleError(f"'{spec}' is not a schedule; use forms like 'weekdays 09:00' or 'daily 22:00-07:00'")
    days_text = match.group("days").strip()
    if days_text in _DAY_SETS:
        days = _DAY_SETS[days_text]
    else:
        days_text = days_text.removeprefix("weekly").strip() or days_text
        names = [part.strip() for part in days_text.split(",") if part.strip()]
        unknown = [name for name in names if name not in _DAY_ALIASES]
        if not names or unknown:
            raise ScheduleError(
                f"unknown day(s) {unknown or [days_text]}; use daily, weekdays, weekends, "
                "'weekly monday' or a list like mon,wed,fri"
            )
        days = frozenset(_DAY_ALIASES[name] for name in names)
    groups = match.groups()
    start = time(int(groups[1]), int(groups[2]))
    end = time(int(groups[3]), int(groups[4])) if groups[3] is not None else None
    if end is not None and end == start:
        raise ScheduleError("a window's start and end must differ")
    if require_window and end is None:
        raise ScheduleError(f"'{spec}' needs a time range such as 'daily 22:00-07:00'")
    if forbid_window and end is not None:
        raise ScheduleError(f"'{spec}' must be a time of day such as 'daily 09:00', not a range")
    return Schedule(days=days, start=start, end=end)


def parse_timestamp(value: object) -> datetime | None:
    """An aware datetime from ISO 8601 text (naive = UTC) or a Unix timestamp; None if unusable."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        try:
            return datetime.fromtimestamp(value, tz=UTC)
        except (OverflowError, OSError, ValueError):
            return None
    if isinstance(value, str) and value.strip():
        text = value.strip()
        if text.endswith("Z"):
            text = text[:-1] + "+00:00"
        try:
            parsed = datetime.fromisoformat(text)
        except ValueError:
            return None
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    return None
