"""night_flow: the minimum night flow (MNF) rising over its baseline, the standard utility leak indicator.

Each local night, the night flow — the lowest mean over ``night_bin_minutes`` (15) inside the night
window (default 02:00–04:00 local; a window whose end is before its start crosses midnight and
belongs to the day it starts on); a meter whose readings are that far apart: its lowest reading — is
recorded and judged against the earlier nights:

- baseline: the median of the earlier nights of the same day type (weekday / weekend, by the local
  date the window starts on, a public holiday a weekend day: ``shared.eventtime.DaysOff``; ``night_by_daytype``) among up to ``night_baseline_nights`` recent nights
  that were not suspect: weekend nights run higher than weekday ones (people up late), and a baseline
  that mixes them both sees every weekend as a rise and needs a wide sigma. The spread sigma =
  1.4826 x the median absolute deviation of every recent night from its own day type's median (pooled,
  so two weekend nights a week still give a stable sigma), at least ``night_sigma_min_pct`` % of the
  baseline: night minimums vary from night to night (weather) by several per cent. Until two nights of
  each type are known, all nights form one baseline. Once ``night_sigma_long_nights`` nights are
  kept, sigma is at least the same spread over all the kept ones (up to three baselines' worth);
- z = (night - baseline) / sigma; a one-sided CUSUM accumulates the excess, night after night:
  ``S = min(max(0, S + z - night_cusum_slack), 2 x night_cusum_limit)``. A leak adds a steady flow
  every night, so S grows; ordinary nights pull it back to 0.
- "night_flow" (leak suspected) opens when S passes ``night_cusum_limit`` or one night alone is
  ``night_single_z`` sigmas above the baseline (a large leak: raised the same night), and closes
  after two normal nights in a row (z at most ``night_clear_z``: the leak was repaired), which also resets S.
- The limits follow ``alarm_budget_per_30d``: the configured ``night_cusum_limit`` and
  ``night_single_z`` are those of a budget of 1 (chosen on the evaluation suites); another budget
  moves them along the CUSUM's run-length curve (Siegmund's approximation for the CUSUM, the normal
  tail for one night) so that ordinary nights cross them that many times as often: at 4, about
  four times the false leaks of 1, and leaks are seen a night or so sooner (:func:`budget_limits`).
- A night with no flow at all (a closed inlet, a meter not yet in service) is no baseline.
- Nights that raise or keep up the alarm (S over the limit, or one night over ``night_single_z``)
  and themselves add to S (z over the slack) are left out of the baseline, so a leak is not
  learned as the new normal; every other night counts, high ones included, so the spread is not
  underestimated, and normal nights after a repair renew the baseline.
"""

from __future__ import annotations

import itertools
import math
import statistics
from collections import OrderedDict
from collections.abc import Callable
from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from services.detector.alerts import AlertState, Condition
from shared.eventtime import weekend
from shared.settings import DetectorSettings


def parse_hhmm(text: str) -> time:
    h, m = text.split(":")
    return time(int(h), int(m))


def night_window(ts: datetime, start: time, end: time, tz: ZoneInfo) -> tuple[datetime, datetime, date]:
    """The night window that contains ``ts`` or, if none does, the next one: (start, end, day) with UTC ends."""
    crosses = end <= start
    d0 = ts.astimezone(tz).date()
    for k in (-1, 0, 1):
        d = d0 + timedelta(days=k)
        ws = datetime.combine(d, start, tzinfo=tz)
        we = datetime.combine(d + timedelta(days=1) if crosses else d, end, tzinfo=tz)
        if we > ts:
            return ws.astimezone(ZoneInfo("UTC")), we.astimezone(ZoneInfo("UTC")), d
    raise AssertionError("unreachable: a night window ends within two days")


class NightAccumulator:
    """Tracks the night flow of the current night window of one meter: the lowest mean flow over
    ``bin_s`` (bins from the window's start; a meter whose readings are that far apart or farther:
    the lowest reading). A night counts when at least ``min_coverage`` of its slots had a reading (a
    slot: a bin, or an interval where a reading is its own bin; so a meter that reads less often than
    its interval says, or loses readings here and there, still has its nights). Beside it, the mean
    flow of the day before the night (from the end of the night window before to the start of this
    one), with the same coverage: a night flow that rose with the day's flow is a change of demand,
    not a leak (:class:`NightLeakRule`)."""

    __slots__ = ("bin", "bin_n", "bin_s", "bin_sum", "day", "day_from", "day_n", "day_slot", "day_slots", "day_sum", "end",
                 "interval_s", "min_coverage", "minimum", "night_slot", "night_slots", "slot_s", "start", "tz", "we", "ws")

    def __init__(self, start: time, end: time, tz: ZoneInfo, interval_s: float, min_coverage: float, bin_s: float) -> None:
        self.start, self.end, self.tz = start, end, tz
        self.interval_s, self.min_coverage = interval_s, min_coverage
        self.bin_s = bin_s if bin_s > interval_s else 0.0  # 0: every reading is its own bin
        self.slot_s = self.bin_s or interval_s
        self.night_slot = self.day_slot = -math.inf  # when the next slot starts (epoch s)
        self.day_slots = 0
        self.ws = self.we = 0.0
        self.day: date | None = None
        self.minimum = float("inf")
        self.night_slots = 0
        self.bin, self.bin_sum, self.bin_n = -1, 0.0, 0
        self.day_from, self.day_sum, self.day_n = math.inf, 0.0, 0  # the day before the current window

    def _open(self, ts: float) -> None:
        ws, we, day = night_window(datetime.fromtimestamp(ts, ZoneInfo("UTC")), self.start, self.end, self.tz)
        # the day before the new window starts where the last one ended (nothing before a meter's first window)
        self.day_from = self.we if self.day is not None and self.we <= ws.timestamp() else math.inf
        self.day_sum, self.day_n, self.day_slots, self.day_slot = 0.0, 0, 0, -math.inf
        self.ws, self.we, self.day = ws.timestamp(), we.timestamp(), day
        self.minimum, self.night_slots, self.night_slot = float("inf"), 0, -math.inf  # the bin was closed (or never opened) before

    def _close_bin(self) -> None:
        if self.bin_n:
            self.minimum = min(self.minimum, self.bin_sum / self.bin_n)
        self.bin, self.bin_sum, self.bin_n = -1, 0.0, 0

    def _covered(self, slots: int, span_s: float) -> bool:
        return slots > 0 and slots >= self.min_coverage * round(span_s / self.slot_s)

    def add(self, ts: float, flow: float | None) -> tuple[date, float, float, float | None] | None:
        """Feed one reading; returns (day, window start epoch, night flow, the day before's mean flow or
        None) when a night window completed."""
        done = None
        if self.day is None:
            self._open(ts)
        elif ts >= self.we:
            self._close_bin()
            if self._covered(self.night_slots, self.we - self.ws):
                day_mean = self.day_sum / self.day_n if self._covered(self.day_slots, self.ws - self.day_from) else None
                done = (self.day, self.ws, self.minimum, day_mean)
            self._open(ts)
        if flow is not None:
            if self.day_from <= ts < self.ws:
                self.day_sum += flow
                self.day_n += 1
                if ts >= self.day_slot:  # the first reading of a new slot (day_slot: when the next one starts)
                    self.day_slots += 1
                    self.day_slot = self.day_from + (int((ts - self.day_from) // self.slot_s) + 1) * self.slot_s
            elif self.ws <= ts < self.we:
                if ts >= self.night_slot:
                    self.night_slots += 1
                    self.night_slot = self.ws + (int((ts - self.ws) // self.slot_s) + 1) * self.slot_s
                if not self.bin_s:
                    self.minimum = min(self.minimum, flow)
                else:
                    b = int((ts - self.ws) // self.bin_s)
                    if b != self.bin:
                        self._close_bin()
                        self.bin = b
                    self.bin_sum += flow
                    self.bin_n += 1
        return done


def _cusum_arl(slack: float, limit: float) -> float:
    """Nights until a one-sided CUSUM with this slack and limit (sigmas) first passes its limit on
    ordinary nights (z ~ N(0, 1)), on average: Siegmund's approximation."""
    b = limit + 1.166
    if slack <= 0:
        return b * b
    return (math.exp(2 * slack * b) - 2 * slack * b - 1) / (2 * slack * slack)


def budget_limits(cfg: DetectorSettings) -> tuple[float, float]:
    """(CUSUM limit, one-night z) at ``cfg.alarm_budget_per_30d``: the configured ones at a budget of
    1; at a budget of f, those that ordinary nights would cross f times as often."""
    f = cfg.alarm_budget_per_30d
    if f == 1:
        return cfg.night_cusum_limit, cfg.night_single_z
    target = _cusum_arl(cfg.night_cusum_slack, cfg.night_cusum_limit) / f
    lo, hi = 0.0, cfg.night_cusum_limit + 40.0  # the run length grows with the limit: bisect
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if _cusum_arl(cfg.night_cusum_slack, mid) < target else (lo, mid)
    normal = statistics.NormalDist()
    tail = min(0.5, (1 - normal.cdf(cfg.night_single_z)) * f)
    # never under the slack: a night that adds nothing to the CUSUM is no leak
    return max(hi, 0.5), max(normal.inv_cdf(1 - tail), cfg.night_cusum_slack + 0.5)


class NightLeakRule:
    """Judges each completed night of one meter against the baseline of earlier nights (CUSUM, see
    the module doc)."""

    kind = "night_flow"

    def __init__(self, cfg: DetectorSettings, off: Callable[[date], bool] = weekend) -> None:
        self.cfg = cfg
        self.off = off  # which local dates are days off: their nights are judged against the weekend nights
        self.limit, self.single_z = budget_limits(cfg)
        # day -> (value, suspect, weekend, the day before's mean flow or None)
        self.nights: OrderedDict[date, tuple[float, bool, bool, float | None]] = OrderedDict()
        self.cusum = 0.0
        self.normal_run = 0  # nights in a row with z <= night_clear_z
        self.last_day: date | None = None
        self.opened: date | None = None  # the night that opened the alert now open
        self.closing = ""  # why the alert just closed, when not by two normal nights

    def baseline(self, weekend: bool | None = None) -> tuple[float | None, float | None]:
        """(median, sigma) of the recent non-suspect nights; (None, None) while too few.

        With ``night_by_daytype`` and ``weekend`` given, the median is that of the recent nights of
        the same day type (weekday / weekend: night flow differs between them), and sigma is pooled
        over all recent nights, each taken against the median of its own day type. While fewer than
        two nights of that type are known, all recent nights count together. Once
        ``night_sigma_long_nights`` non-suspect nights are kept, sigma is at least the same spread
        over all of them (up to three baselines' worth): the MAD of a few weeks of nights swings
        with the sample, and a quiet stretch that narrows it made ordinary nights look like leaks."""
        kept = [(v, wk) for v, suspect, wk, _dm in self.nights.values() if not suspect]
        recent = kept[-self.cfg.night_baseline_nights :]
        if len(recent) < self.cfg.night_min_baseline_nights:
            return None, None
        med, mad = self._median_mad(recent, weekend)
        if len(kept) >= self.cfg.night_sigma_long_nights:
            mad = max(mad, self._median_mad(kept, weekend)[1])
        sigma = max(1.4826 * mad, abs(med) * self.cfg.night_sigma_min_pct / 100.0, 1e-6)
        return med, sigma

    def resolution(self, value: float) -> float:
        """The smallest difference between two distinct nights kept, ``value`` (tonight) included: the
        meter's resolution where it reads in whole units (0 where all are equal). Sigma is at least half
        of it: a meter that reads 2 m³/h every night and 3 one night has not leaked a third of its flow
        (the MAD of such nights is 0, and that one night was 17 sigmas above them)."""
        vals = sorted({v for v, _s, _wk, _dm in self.nights.values()} | {value})
        return min((b - a for a, b in itertools.pairwise(vals)), default=0.0)

    def _median_mad(self, nights: list[tuple[float, bool]], weekend: bool | None) -> tuple[float, float]:
        """The median of ``nights`` (of the day type ``weekend``, see :meth:`baseline`) and their
        median absolute deviation, each night against the median of its own day type."""
        meds: dict[bool, float] = {}
        if self.cfg.night_by_daytype and weekend is not None:
            for t in (False, True):
                vals = [v for v, wk in nights if wk == t]
                if len(vals) >= 2:
                    meds[t] = statistics.median(vals)
        if weekend is not None and len(meds) == 2:
            return meds[weekend], statistics.median(abs(v - meds[wk]) for v, wk in nights)
        med = statistics.median(v for v, _ in nights)
        return med, statistics.median(abs(v - med) for v, _ in nights)

    def judge(self, day: date, ws: float, value: float, day_mean: float | None = None) -> tuple[float, float | None, float | None] | None:
        """Record a night; returns (z, baseline, sigma) with :attr:`cusum` updated, or None for a
        night at or before the last judged (a replay) and while the baseline is still being learned
        (z = 0 then)."""
        if self.last_day is not None and day <= self.last_day:
            return None
        self.last_day = day
        cfg = self.cfg
        off = self.off(day)
        base, sigma = self.baseline(off)
        z = 0.0
        if base is not None and sigma is not None:
            sigma = max(sigma, self.resolution(value) / 2)
            z = (value - base) / sigma
            self.cusum = min(max(0.0, self.cusum + z - cfg.night_cusum_slack), 2 * self.limit)
            self.normal_run = self.normal_run + 1 if z <= cfg.night_clear_z else 0
        suspect = (self.cusum > self.limit or z > self.single_z) and z > cfg.night_cusum_slack
        # no district draws nothing at night: a closed inlet, a meter not yet in service or a dead one is
        # no baseline (five such nights at the start held every later night "high" for 80 nights)
        suspect = suspect or value <= 0
        self.nights[day] = (value, suspect, off, day_mean)
        while len(self.nights) > cfg.night_baseline_nights * 3:
            self.nights.popitem(last=False)
        return z, base, sigma

    def alarm(self, z: float, is_open: bool) -> bool:
        """Whether "night_flow" is (still) raised after the night just judged: it opens when the CUSUM
        passes its limit or one night alone passes ``night_single_z``; an open one closes after two
        normal nights in a row, which also resets the CUSUM."""
        self.closing = ""
        if is_open:
            if self.normal_run >= 2:
                self.cusum, self.opened = 0.0, None
                return False
            change = self._demand_change()
            if change is not None:
                self.closing, judged, factor = change
                self._follow_demand(judged, factor)
                return False
            return True
        if self.cusum > self.limit or z > self.single_z:
            self.opened = self.last_day
            return True
        return False

    def _since_opened(self) -> tuple[list[tuple[date, float, bool, float | None]], list[tuple[float, bool, float | None]]]:
        """(the nights since the open alert opened, up to ``night_baseline_nights`` nights before it):
        (day, value, weekend, day mean) and (value, weekend, day mean). The nights before count whether
        they raised an alarm or not: the ratio baseline of :meth:`_demand_change` left out the high
        ones, and its level and spread came out too low, so a change of demand never looked like one."""
        since = [(d, v, wk, dm) for d, (v, _s, wk, dm) in self.nights.items() if self.opened is not None and d >= self.opened]
        before = [(v, wk, dm) for d, (v, _s, wk, dm) in self.nights.items() if self.opened is None or d < self.opened]
        return since, before[-self.cfg.night_baseline_nights :]

    def _demand_change(self) -> tuple[str, set[date], float] | None:
        """While "night_flow" is open: whether its nights rose no more than the day's flow did, in
        proportion — a change of demand (a season, customers connected or a boundary valve opened), not a
        leak, which adds the same flow to the night and the day and so raises the night's share of the
        day. Judged over the last ``night_demand_nights`` nights once the alert has been open that long:
        each night's flow over the day before's mean flow (the ratio) against the ordinary nights' ratios
        of its day type (median, sigma as for the night flow): the mean of those z (clipped at ±3) at most
        0, and the last two nights each at most 1 (a leak that started within the week raises the latest
        nights' share). Returns what to tell the operator, the nights judged and the change of the day's
        mean flow (:meth:`_follow_demand`), or None while it does not."""
        k = self.cfg.night_demand_nights
        if not k or self.opened is None:
            return None
        since, before = self._since_opened()
        last = [(v, wk, dm) for _d, v, wk, dm in since[-k:] if dm is not None and dm > 0] if len(since) >= k else []
        usual = [(v, wk, dm) for v, wk, dm in before if dm is not None and dm > 0]
        ratios = [(v / dm, wk) for v, wk, dm in usual]
        if len(last) < (k + 1) // 2 or len(ratios) < self.cfg.night_min_baseline_nights:
            return None
        zs = []
        for v, wk, dm in last:
            med, mad = self._median_mad(ratios, wk)
            sigma = max(1.4826 * mad, abs(med) * self.cfg.night_sigma_min_pct / 100.0, 1e-9)
            zs.append(min(3.0, max(-3.0, (v / dm - med) / sigma)))
        if statistics.fmean(zs) > 0 or max(zs[-2:]) > 1.0:
            return None
        night = statistics.median(v for v, _wk, _dm in last) / statistics.median(v for v, _wk, _dm in before) - 1
        factor = statistics.median(dm for _v, _wk, dm in last) / statistics.median(dm for _v, _wk, dm in usual)
        note = (f"the night flow rose with the day's demand ({night:+.0%} at night, {factor - 1:+.0%} over the day, the night's "
                f"share of the day as usual over the last {len(last)} nights): a change of demand, not a leak; the baseline "
                f"follows the new level (detector.night_demand_nights)")
        return note, {d for d, *_ in since[-k:]}, factor

    def _follow_demand(self, judged: set[date], factor: float) -> None:
        """After :meth:`_demand_change`: the nights it judged become ordinary (not the earlier ones
        since the alert opened: a leak repaired since may have opened it), and the ones before the
        alert are scaled by ``factor``, the change of the day's mean flow, so the baseline keeps its
        nights and its spread at the new level."""
        for d, (v, s, wk, dm) in list(self.nights.items()):
            if d in judged:
                self.nights[d] = (v, False, wk, dm)
            elif d < self.opened:  # type: ignore[operator]  # set while an alert is open
                self.nights[d] = (v * factor, s, wk, None if dm is None else dm * factor)
        self.cusum, self.normal_run, self.opened = 0.0, 0, None

    def check(self, day: date, ws: float, value: float, alert: AlertState | None, day_mean: float | None = None) -> Condition | None:
        """Judge the night of ``day`` (window start ``ws``, minimum ``value``): the condition of the
        meter's "night_flow" alert, or None for a replayed night and while the baseline is learned."""
        judged = self.judge(day, ws, value, day_mean)
        if judged is None:
            return None
        z, base, sigma = judged
        if base is None:
            return None
        cfg = self.cfg
        is_open = alert is not None and alert.is_open
        lim = self.limit
        active = self.alarm(z, is_open)
        msg = ""
        if active and not is_open:
            budget = "" if cfg.alarm_budget_per_30d == 1 else f" at detector.alarm_budget_per_30d={cfg.alarm_budget_per_30d:g}"
            why = (f"one night {z:.1f} sigma above it (detector.night_single_z: {self.single_z:.2g}{budget})" if z > self.single_z
                   else f"the excess over recent nights adds up to {self.cusum:.1f} sigma (detector.night_cusum_limit: {lim:.2g}{budget})")
            excess = value - base
            msg = (f"leak suspected: about {excess:.2f} m³/h more than usual at night ({excess * 24:.0f} m³/day if it runs all day): "
                   f"minimum night flow {value:.3f} m³/h against a baseline of {base:.3f} "
                   f"(median of earlier nights, sigma {sigma:.3f}): {why}")
        severity = "critical" if active and base > 0 and (value - base) >= base * cfg.night_critical_pct / 100.0 else None
        return Condition(active, value, base + lim * sigma, msg, severity)
