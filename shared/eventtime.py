"""Event time: every cadence fires when *reading timestamps* cross a boundary, never on a timer.

Boundaries are computed in a local time zone (default Asia/Seoul) so "the day", "the hour" and
"the quarter" mean what the operator means, also across DST changes in zones that have them.

    >>> clock = BoundaryClock(ZoneInfo("Asia/Seoul"))
    >>> clock.crossed(prev_ts, ts, "hour")   # -> the boundary instant, or None
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Literal
from zoneinfo import ZoneInfo

Period = Literal["minute", "10min", "hour", "day", "week", "month", "quarter", "year"]
PERIODS: tuple[str, ...] = ("minute", "10min", "hour", "day", "week", "month", "quarter", "year")


def floor(ts: datetime, period: str, tz: ZoneInfo) -> datetime:
    """Start of the period containing ``ts``, in local time ``tz``, returned as aware UTC."""
    if ts.tzinfo is None:
        raise ValueError("event time must be timezone-aware")
    local = ts.astimezone(tz)
    if period == "minute":
        start = local.replace(second=0, microsecond=0)
    elif period == "10min":
        start = local.replace(minute=local.minute - local.minute % 10, second=0, microsecond=0)
    elif period == "hour":
        start = local.replace(minute=0, second=0, microsecond=0)
    elif period == "day":
        start = local.replace(hour=0, minute=0, second=0, microsecond=0)
    elif period == "week":  # weeks start on Monday (ISO)
        day = local.replace(hour=0, minute=0, second=0, microsecond=0)
        start = day - timedelta(days=day.weekday())
    elif period == "month":
        start = local.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    elif period == "quarter":
        month = local.month - (local.month - 1) % 3
        start = local.replace(month=month, day=1, hour=0, minute=0, second=0, microsecond=0)
    elif period == "year":
        start = local.replace(month=1, day=1, hour=0, minute=0, second=0, microsecond=0)
    else:
        raise ValueError(f"unknown period {period!r}; one of {', '.join(PERIODS)}")
    # Re-attach the zone so the UTC offset is the one valid at the boundary (DST-safe).
    start = start.replace(tzinfo=None).replace(tzinfo=tz)
    return start.astimezone(UTC)


def crossed(prev: datetime | None, cur: datetime, period: str, tz: ZoneInfo) -> datetime | None:
    """The latest boundary ``b`` of ``period`` with ``prev < b <= cur``, else None.

    A reading exactly on a boundary crosses it (10:00 crosses the hour; 10:01 does not, if the
    previous reading was 10:00). With no previous reading nothing is crossed. A reading older than
    the previous one (out of order) crosses nothing.
    """
    if prev is None or cur <= prev:
        return None
    b = floor(cur, period, tz)
    return b if b > prev else None


class BoundaryClock:
    """Remembers the last event time per key and reports the boundaries each new one crosses."""

    def __init__(self, tz: ZoneInfo | str = "Asia/Seoul") -> None:
        self.tz = ZoneInfo(tz) if isinstance(tz, str) else tz
        self._last: dict[object, datetime] = {}

    def last(self, key: object = None) -> datetime | None:
        return self._last.get(key)

    def seed(self, ts: datetime, key: object = None) -> None:
        """Set the last-seen time (e.g. from the store at start) without firing anything."""
        self._last[key] = ts

    def advance(self, ts: datetime, periods: tuple[str, ...] | list[str], key: object = None) -> dict[str, datetime]:
        """Record ``ts`` for ``key``; return {period: boundary} for each period crossed."""
        prev = self._last.get(key)
        out: dict[str, datetime] = {}
        for p in periods:
            b = crossed(prev, ts, p, self.tz)
            if b is not None:
                out[p] = b
        if prev is None or ts > prev:
            self._last[key] = ts
        return out


def local_hour_and_weekend(ts: datetime, tz: ZoneInfo) -> tuple[int, bool]:
    local = ts.astimezone(tz)
    return local.hour, local.weekday() >= 5


def parse_period(text: str) -> str:
    if text not in PERIODS:
        raise ValueError(f"unknown period {text!r}; one of {', '.join(PERIODS)}")
    return text


def implausible(ts: datetime, *, last: datetime | None, now: datetime, limits) -> str | None:
    """Why a reading dated ``ts`` cannot be placed in time, or None when it can.

    ``last`` is the meter's previous accepted reading (its own event clock), ``now`` this machine's
    clock, ``limits`` the ``limits`` settings (``earliest``, ``max_ahead_s``, ``max_jump_s``). A reading
    is implausible before ``limits.earliest``, or when it is more than ``max_ahead_s`` ahead of the
    clock *and* more than ``max_jump_s`` ahead of the meter's previous reading (a replay or a
    simulation at ``--speed`` runs ahead of the clock a reading at a time, legitimately).
    """
    if ts < limits.earliest:
        return f"timestamp {ts.isoformat()} is before limits.earliest ({limits.earliest.isoformat()})"
    ahead = (ts - now).total_seconds()
    if ahead <= limits.max_ahead_s:
        return None
    if last is not None and (ts - last).total_seconds() <= limits.max_jump_s:
        return None
    since = f" and {_human((ts - last).total_seconds())} after the meter's previous reading" if last is not None else ""
    return (f"timestamp {ts.isoformat()} is {_human(ahead)} ahead of this machine's clock{since} "
            f"(limits.max_ahead_s={limits.max_ahead_s:g}, limits.max_jump_s={limits.max_jump_s:g}); check the meter's clock")


def _human(seconds: float) -> str:
    for unit, n in (("days", 86400), ("h", 3600), ("min", 60)):
        if abs(seconds) >= n:
            return f"{seconds / n:.1f} {unit}"
    return f"{seconds:.0f} s"


class TimeGuard:
    """Judges each reading's timestamp before it moves any clock (per meter; see :func:`implausible`)."""

    def __init__(self, limits) -> None:
        self.limits = limits
        self._last: dict[object, datetime] = {}

    def knows(self, key: object) -> bool:
        return key in self._last

    def meters(self, site: str) -> int:
        """How many meters of ``site`` (keys ``(site, meter)``) have a clock."""
        return sum(1 for k in self._last if isinstance(k, tuple) and k[0] == site)

    def seed(self, key: object, ts: datetime) -> None:
        """The meter's clock at start (its newest stored reading)."""
        if key not in self._last or ts > self._last[key]:
            self._last[key] = ts

    def check(self, key: object, ts: datetime, now: datetime | None = None) -> str | None:
        """None (and the meter's clock moves on) when ``ts`` is plausible, else the reason."""
        last = self._last.get(key)
        reason = implausible(ts, last=last, now=now or datetime.now(UTC), limits=self.limits)
        if reason is None and (last is None or ts > last):
            self._last[key] = ts
        return reason
