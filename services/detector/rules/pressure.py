"""pressure_loss and pressure_drop: the pressure of the supply.

- pressure_loss: pressure under ``pressure_loss_bar`` (critical). Stateless.
- pressure_drop: a fall of the pressure *level* (median of the last ``LEVEL_N`` readings) below its
  own recent *baseline* (median of the ``pressure_drop_baseline_minutes`` before it) without a flow
  step up — a supply-side event (a pump trip, a closed valve, a failing regulator); a fall *with*
  a flow step is the burst signature and is left to the burst rule. The threshold is the one of the
  local hour learned from the meter's own pressure steps to the alarm budget (``rules/steps.py``),
  ``pressure_drop_bar`` until the history is long enough. The alert opens on the reading that shows
  the fall, keeps its baseline while open and closes once the pressure is back within half the
  threshold of it. Severity from the size: critical at ``pressure_drop_critical_bar`` or when the
  level is under ``pressure_loss_bar``, else warning. On a 15-minute or hourly meter (baseline
  stretched to three readings) the fixed threshold applies to the fall beyond the one at the same time
  a day earlier (the daily swing of pressure spans the windows), as for the burst rule.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from services.detector.alerts import AlertState, Condition
from services.detector.rules.steps import LEVEL_N, DayBefore, StepCalibration, StepWindow, base_readings, cell_name, stretched

if TYPE_CHECKING:
    from shared.settings import DetectorSettings


class PressureLossRule:
    __slots__ = ("limit",)

    kind = "pressure_loss"

    def __init__(self, cfg: DetectorSettings) -> None:
        self.limit = cfg.pressure_loss_bar

    def check(self, p: float, alert: AlertState | None) -> Condition | None:
        lim = self.limit
        if p < lim or (alert is not None and alert.is_open):
            return Condition(p < lim, p, lim, f"pressure {p:.3f} bar below {lim:g} bar (detector.pressure_loss_bar)")
        return None


class PressureDropRule:
    """One meter's pressure: the recent readings, the baseline frozen while a drop is open."""

    __slots__ = ("cal", "cfg", "day_before", "frozen", "has_flow", "keep_s", "q")

    kind = "pressure_drop"

    def __init__(self, cfg: DetectorSettings, interval_s: float, has_flow: bool = True) -> None:
        self.cfg, self.has_flow = cfg, has_flow
        self.cal: StepCalibration | None = None
        self.keep_s = (base_readings(cfg.pressure_drop_baseline_minutes * 60, interval_s) + LEVEL_N) * interval_s - interval_s / 2
        self.q = StepWindow(LEVEL_N)  # level + baseline readings
        self.frozen: tuple[float, float] | None = None  # (baseline, threshold) while open
        base_s = cfg.pressure_drop_baseline_minutes * 60
        self.day_before = DayBefore(interval_s) if stretched(base_s, interval_s) else None  # the falls of the last day

    def check(self, t: float, p: float, alert: AlertState | None, cell: int, flow_step: bool) -> Condition | None:
        """``cell``: the local hour * 2 + weekend; ``flow_step``: a flow step up was seen within the burst
        window (then it is not supply-side)."""
        q = self.q
        q.append(t, p)
        q.evict(t - self.keep_s)
        is_open = alert is not None and alert.is_open
        level, live = q.medians()
        if level is None or live is None:
            return Condition(False) if is_open or (alert is not None and alert.first_true is not None) else None
        before = self.day_before.add(t, live - level) if self.day_before is not None else None
        cfg = self.cfg
        if is_open and self.frozen is not None:
            base, thr = self.frozen
            active = base - level > thr / 2
        else:
            base = live
            learned = self.cal.pressure_drop[cell] if self.cal is not None else None
            thr = learned if learned is not None else cfg.pressure_drop_bar
            active = base - level > thr and not flow_step
            if active and learned is None and self.day_before is not None:  # stretched: beyond the day before's fall too
                active = before is not None and (base - level) - before > thr
            if active:
                self.frozen = (base, thr)
        if not (active or is_open or (alert is not None and alert.first_true is not None)):
            return None
        if not active:
            return Condition(False, level, base - thr)
        drop = base - level
        critical = drop >= cfg.pressure_drop_critical_bar or level < cfg.pressure_loss_bar
        cal = self.cal
        how = (f"threshold of {cell_name(cell)} {cal.learned_from(cfg.threshold_days)}"
               if cal is not None and cal.pressure_drop[cell] is not None else
               "detector.pressure_drop_bar: the meter's history is still too short to calibrate (detector.calibration_min_days)"
               + ("; beyond the fall at this time a day earlier" if self.day_before is not None else ""))
        what = "flow unchanged: supply side (pump, valve, regulator)?" if self.has_flow else "no flow signal on this meter"
        msg = (f"pressure {level:.3f} bar fell {drop:.2f} bar under its recent level {base:.3f} "
               f"(threshold {thr:.2f} bar, {how}); {what}")
        return Condition(True, level, base - thr, msg, "critical" if critical else "warning")

    def closed(self) -> None:
        self.frozen = None

    def reset(self) -> None:
        """Forget the recent readings (they came from a stuck sensor); an open drop keeps its baseline."""
        self.q.clear()
