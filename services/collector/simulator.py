"""A realistic simulated meter, for demos, tests and ``flowwatch up``; usable without MQTT.

    >>> sim = Simulator(SimulatorSettings(), seed=7, interval_s=60)
    >>> for r in sim.readings(start, 1440): ...        # one day of shared.messages.Reading
    >>> sim.schedule(start)                             # where the injected events are

Flow follows a daily demand profile (low at night, a morning and an evening peak) with a weekend
factor and autocorrelated noise. Pressure is the source head minus the friction loss ``k·Q²``
(``k`` set so the loss at mean flow is ``friction_loss_bar``), plus noise. A schedule of events is
injected: **burst** (flow jumps, pressure falls through the friction term), **leak** (flow rises
slowly over ``duration_minutes`` and stays: leaks do not heal), **pressure_drop**, **flatline**
(the sensor repeats its last value), **spike** (one reading multiplied), **gap** (no readings).

The stream is a pure function of (settings, seed, start, interval): the same inputs give the same
readings. The random numbers are drawn for every step, gaps included, so an event never shifts
the noise of the readings after it.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import numpy as np

from shared.eventtime import weekend
from shared.messages import Reading
from shared.settings import RangeLimits, SimEvent, SimulatorSettings

# A demo should show a burst within its first minute at --speed 600: it starts 20 minutes in.
# Each event lasts long enough for the default detector rules to see it (flat-line: 60 min).
DEFAULT_EVENTS: tuple[SimEvent, ...] = (
    SimEvent(kind="burst", at_minutes=20, duration_minutes=30),
    SimEvent(kind="spike", at_minutes=150, signal="flow_rate"),
    SimEvent(kind="flatline", at_minutes=240, duration_minutes=90, signal="pressure"),
    SimEvent(kind="pressure_drop", at_minutes=360, duration_minutes=30),
    SimEvent(kind="gap", at_minutes=480, duration_minutes=15),
    SimEvent(kind="leak", at_minutes=600, duration_minutes=24 * 60),
)


@dataclass(frozen=True)
class ScheduledEvent:
    kind: str
    signal: str
    start: datetime
    end: datetime  # exclusive; a leak stays at full size after its end
    magnitude: float

    def active(self, ts: datetime) -> bool:
        return self.start <= ts < self.end


@dataclass(frozen=True)
class SimSample:
    ts: datetime
    flow_rate: float
    pressure: float
    events: tuple[str, ...]  # kinds of the events active at ts (truth labels)


def align(ts: datetime, interval_s: int) -> datetime:
    """``ts`` floored to a multiple of the interval (UTC epoch based)."""
    epoch = int(ts.timestamp())
    return datetime.fromtimestamp(epoch - epoch % interval_s, UTC)


@functools.lru_cache(maxsize=16)  # one read-only array per amplitude, shared by every simulated meter
def _profile(amplitude: float) -> np.ndarray:
    """Relative demand per minute of the local day: mean 1, night minimum 1 - amplitude."""
    h = np.arange(1440) / 60.0

    def bump(center: float, width: float) -> np.ndarray:
        d = np.minimum(np.abs(h - center), 24 - np.abs(h - center))
        return np.exp(-0.5 * (d / width) ** 2)

    raw = 0.3 + 1.0 * bump(7.75, 1.6) + 0.45 * bump(12.5, 2.5) + 0.8 * bump(19.5, 2.2)
    dev = raw / raw.mean() - 1.0
    out = 1.0 + dev * (amplitude / -dev.min()) if amplitude > 0 else np.ones(1440)
    out.flags.writeable = False
    return out


class Simulator:
    """A deterministic simulated meter. ``seed`` overrides ``config.seed``."""

    def __init__(self, config: SimulatorSettings | None = None, seed: int | None = None, *, interval_s: int = 60, tz: str | ZoneInfo = "Asia/Seoul",
                 off: Callable[[date], bool] = weekend) -> None:
        self.config = config or SimulatorSettings()
        self.seed = self.config.seed if seed is None else seed
        if interval_s < 1:
            raise ValueError("interval_s must be at least 1 second")
        self.interval_s = interval_s
        self.tz = ZoneInfo(tz) if isinstance(tz, str) else tz
        self.off = off  # days off (weekends, the site's holidays: Settings.calendar) run at weekend_factor
        self._profile = _profile(self.config.diurnal_amplitude)
        self.k = self.config.friction_loss_bar / self.config.mean_flow**2  # bar per (m³/h)²
        events = list(DEFAULT_EVENTS) if self.config.default_events else []
        self.events: list[SimEvent] = events + list(self.config.events)

    # --- the schedule --------------------------------------------------------------------------
    def start_time(self, start: datetime | None = None) -> datetime:
        if start is None:
            start = self.config.start or datetime.now(UTC)
        if start.tzinfo is None:
            raise ValueError("the simulation start must carry a time zone")
        return align(start, self.interval_s)

    def schedule(self, start: datetime | None = None) -> list[ScheduledEvent]:
        """The injected events in absolute event time, in order of start."""
        t0 = self.start_time(start)
        mean = self.config.mean_flow
        out = []
        for ev in self.events:
            s = t0 + timedelta(minutes=ev.at_minutes)
            if ev.kind == "spike":
                s = t0 + timedelta(seconds=math.ceil(ev.at_minutes * 60 / self.interval_s) * self.interval_s)
                end = s + timedelta(seconds=self.interval_s)
            else:
                end = s + timedelta(minutes=ev.duration_minutes)
            default = {"burst": 0.8 * mean, "leak": 0.1 * mean, "pressure_drop": 1.5, "spike": 3.0}.get(ev.kind, 0.0)
            signal = "pressure" if ev.kind == "pressure_drop" else ("both" if ev.kind == "gap" else ev.signal)
            if ev.kind in ("burst", "leak"):
                signal = "flow_rate"
            out.append(ScheduledEvent(ev.kind, signal, s, end, default if ev.magnitude is None else ev.magnitude))
        return sorted(out, key=lambda e: e.start)

    # --- the stream ----------------------------------------------------------------------------
    def samples(self, start: datetime | None = None, n: int | None = None) -> Iterator[SimSample]:
        """``n`` interval steps from ``start`` (endless when None); gap steps yield nothing."""
        cfg = self.config
        t0 = self.start_time(start)
        sched = self.schedule(t0)
        rng = np.random.default_rng(self.seed)
        phi = math.exp(-self.interval_s / 600.0)  # noise correlated over ~10 minutes
        innov = math.sqrt(1 - phi * phi)
        ar = 0.0
        frozen: dict[tuple[int, str], float] = {}
        last = {"flow_rate": cfg.mean_flow, "pressure": cfg.source_head_bar - cfg.friction_loss_bar}
        step = timedelta(seconds=self.interval_s)
        i = 0
        while n is None or i < n:
            ts = t0 + i * step
            i += 1
            z = rng.standard_normal(3)
            ar = phi * ar + innov * z[0]
            local = ts.astimezone(self.tz)
            demand = cfg.mean_flow * self._profile[local.hour * 60 + local.minute]
            if self.off(local.date()):
                demand *= cfg.weekend_factor
            flow = demand * (1 + cfg.noise * ar) + demand * cfg.noise * 0.3 * z[1]
            active: list[str] = []
            gap = False
            for ev in sched:
                if ev.kind == "leak" and ts >= ev.start:
                    span = (ev.end - ev.start).total_seconds()
                    frac = 1.0 if span <= 0 else min(1.0, (ts - ev.start).total_seconds() / span)
                    flow += ev.magnitude * frac
                    active.append("leak")
                elif ev.kind == "burst" and ev.active(ts):
                    flow += ev.magnitude
                    active.append("burst")
            flow = max(0.0, flow)
            pressure = cfg.source_head_bar - self.k * flow * flow + cfg.pressure_noise_bar * z[2]
            values = {"flow_rate": flow, "pressure": pressure}
            for j, ev in enumerate(sched):
                if not ev.active(ts):
                    continue
                if ev.kind == "pressure_drop":
                    values["pressure"] -= ev.magnitude
                    active.append("pressure_drop")
                elif ev.kind == "spike":
                    values[ev.signal] *= ev.magnitude
                    active.append("spike")
                elif ev.kind == "flatline":
                    values[ev.signal] = frozen.setdefault((j, ev.signal), last[ev.signal])
                    active.append("flatline")
                elif ev.kind == "gap":
                    gap = True
            values["pressure"] = max(0.0, values["pressure"])
            if gap:
                continue
            last = dict(values)
            yield SimSample(ts, round(values["flow_rate"], 4), round(values["pressure"], 4), tuple(sorted(set(active))))

    def readings(
        self,
        start: datetime | None = None,
        n: int | None = None,
        *,
        site: str = "site1",
        meter: str = "meter1",
        first_seq: int = 0,
        limits: RangeLimits | None = None,
    ) -> Iterator[Reading]:
        """The stream as :class:`shared.messages.Reading` (flagged 'simulated' and range-checked)."""
        from services.collector.quality import range_flags

        lim = limits or RangeLimits()
        for k, s in enumerate(self.samples(start, n)):
            flags = ("simulated", *range_flags(s.flow_rate, s.pressure, lim))
            yield Reading(site=site, meter=meter, ts=s.ts, seq=first_seq + k, flow_rate=s.flow_rate, pressure=s.pressure, quality=flags, source="simulator")

    def frame(self, start: datetime | None = None, n: int = 1440):
        """``n`` steps as a pandas DataFrame (UTC index ``ts``; flow_rate, pressure, events)."""
        import pandas as pd

        rows = list(self.samples(start, n))
        return pd.DataFrame(
            {"flow_rate": [r.flow_rate for r in rows], "pressure": [r.pressure for r in rows], "events": [",".join(r.events) for r in rows]},
            index=pd.DatetimeIndex([r.ts for r in rows], name="ts"),
        )
