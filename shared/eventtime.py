"""Event time: every cadence fires when *reading timestamps* cross a boundary, never on a timer.

Boundaries are computed in a local time zone (default Asia/Seoul) so "the day", "the hour" and
"the quarter" mean what the operator means, also across DST changes in zones that have them.

    >>> clock = BoundaryClock(ZoneInfo("Asia/Seoul"))
    >>> clock.crossed(prev_ts, ts, "hour")   # -> the boundary instant, or None
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Iterable
from datetime import UTC, date, datetime, timedelta
from typing import Any, Literal
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


def weekend(d: date) -> bool:
    """Saturday or Sunday: the day type of a calendar without holidays."""
    return d.weekday() >= 5


@functools.cache
def _zone_tables() -> tuple[dict[str, str], dict[str, str]]:
    """(zone -> country from ``zone.tab``, alias -> zone from the links of ``tzdata.zi``)."""
    from importlib.resources import files

    root = files("tzdata.zoneinfo")
    countries, links = {}, {}
    for line in root.joinpath("zone.tab").read_text(encoding="utf-8").splitlines():
        parts = line.split("\t")
        if not line.startswith("#") and len(parts) >= 3:
            countries[parts[2]] = parts[0]
    for line in root.joinpath("tzdata.zi").read_text(encoding="utf-8").splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0] == "L":  # "L Asia/Kolkata Asia/Calcutta": a link, target then alias
            links[parts[2]] = parts[1]
    return countries, links


def zone_country(zone: str) -> str | None:
    """The ISO 3166 country of an IANA zone (``Asia/Seoul`` -> ``KR``; an alias such as ``ROK`` or
    ``Asia/Calcutta`` through its link), from the zone tables the ``tzdata`` package ships; None for
    a zone of no country (``UTC``)."""
    countries, links = _zone_tables()
    for _ in range(4):  # a link may point at another link
        if zone in countries:
            return countries[zone]
        if zone not in links:
            return None
        zone = links[zone]
    return None


_FILL = threading.Lock()  # the holidays package fills a year's table on its first lookup: one thread at a time


def _holiday_table(country: str) -> Any:
    """The ``holidays`` calendar of ``country`` (``KR``, ``US-CA``, ``BE-Flemish``: the subdivision as
    written, else upper-cased); raises ValueError naming the `holidays` setting."""
    import holidays

    code, _, subdiv = country.partition("-")
    code = code.upper()
    for sub in dict.fromkeys((subdiv, subdiv.upper())) if subdiv else (None,):
        try:
            return holidays.country_holidays(code, subdiv=sub)
        except NotImplementedError:
            pass
    try:
        holidays.country_holidays(code)
        what = f"subdivision {subdiv!r} of {code!r}"
    except NotImplementedError:
        what = f"country {code!r}"
    raise ValueError(f"holidays: no public-holiday calendar for {what}; use an ISO 3166 code such as 'KR', or "
                     "'US-CA' with a subdivision, 'auto' (the country of `timezone`) or 'none'")


class DaysOff:
    """Which local dates are days off: Saturday, Sunday, the public holidays of a country (the
    ``holidays`` package) and dates listed by the operator. Demand on a holiday follows a Sunday's
    shape, not the weekday's: wherever a rule keeps a weekday and a weekend baseline (step
    thresholds, bands, the night-flow baseline, the forecast tolerance, seasonal naive), a day off is
    a weekend day. Called with a local date; safe to share between threads. Equal when made from the
    same country and dates."""

    __slots__ = ("cache", "country", "extra", "table")

    def __init__(self, country: str | None = None, extra: Iterable[date] = ()) -> None:
        """``country``: an ISO 3166 code, with a subdivision after a dash (``KR``, ``US-CA``), or None."""
        self.country = country
        self.extra = frozenset(extra)
        self.cache: dict[date, bool] = {}
        self.table = _holiday_table(country) if country else None

    @classmethod
    def from_setting(cls, holidays: str, timezone: str, extra: Iterable[date] = ()) -> DaysOff:
        """``holidays`` as configured: ``auto`` (the country of ``timezone``), ``none`` or a code. The
        same setting gives the same (shared) calendar: it is built once per process."""
        key = holidays.strip()
        country = zone_country(timezone) if key.lower() == "auto" else (None if key.lower() in ("none", "") else key)
        return _days_off(country, frozenset(extra))

    def __call__(self, d: date) -> bool:
        off = self.cache.get(d)
        if off is None:
            if len(self.cache) > 20_000:
                self.cache.clear()
            off = d.weekday() >= 5 or d in self.extra
            if not off and self.table is not None:
                with _FILL:
                    off = d in self.table
            self.cache[d] = off
        return off

    def holiday(self, d: date) -> bool:
        """A day off that is not a Saturday or Sunday."""
        return d.weekday() < 5 and self(d)

    def holiday_within(self, first: float, last: float, tz: ZoneInfo) -> bool:
        """Whether a local date from the one of epoch ``first`` to the one of ``last`` is a holiday."""
        d, end = datetime.fromtimestamp(first, tz).date(), datetime.fromtimestamp(last, tz).date()
        while d <= end:
            if self.holiday(d):
                return True
            d += timedelta(days=1)
        return False

    @property
    def has_holidays(self) -> bool:
        """Whether any weekday can be a day off (a country's calendar or listed dates)."""
        return self.table is not None or bool(self.extra)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, DaysOff) and (self.country, self.extra) == (other.country, other.extra)

    def __hash__(self) -> int:
        return hash((self.country, self.extra))

    def __repr__(self) -> str:
        return f"DaysOff({self.country or 'weekends only'}{f', +{len(self.extra)} dates' if self.extra else ''})"


@functools.lru_cache(maxsize=32)
def _days_off(country: str | None, extra: frozenset[date]) -> DaysOff:
    return DaysOff(country, extra)


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


def wall_clock_back(t: float, seconds: float, tz: ZoneInfo | None) -> float:
    """The epoch ``seconds`` (whole days) before ``t`` at the same local wall time: across a
    daylight-saving change a week ago is an hour more or less, and a copy by the hour count would
    forecast the morning rise an hour early or late all week. Without a zone: plain ``t - seconds``."""
    if tz is None:
        return t - seconds
    shift = datetime.fromtimestamp(t, tz).utcoffset() - datetime.fromtimestamp(t - seconds, tz).utcoffset()
    return t - seconds + shift.total_seconds()
