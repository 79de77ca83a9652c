"""``detector``: the rule parameters of the detector; durations in event time."""

from __future__ import annotations

import math
from typing import Literal

from pydantic import Field, field_validator, model_validator

from shared.settings.base import Section

#: The static band limits until a meter's bands are learned; flow's is its physical range (limits)
STATIC_LIMITS: dict[str, tuple[float, float]] = {"flow_rate": (0.0, 10000.0), "pressure": (1.0, 10.0)}


class DetectorSettings(Section):
    """Rule parameters of the detector (services/detector). Durations are in event time."""

    interval_s: int | None = Field(
        default=None, ge=1, le=3600, description="Expected seconds between readings; collector.interval_s when unset."
    )
    # alert hygiene
    min_duration_minutes: float = Field(
        default=90, ge=0, description="A reading outside its threshold band must stay outside this long before a 'threshold' alert opens."
    )
    clear_after_minutes: float = Field(
        default=3, ge=0, description="An open alert closes once its condition has been clear this long."
    )
    hysteresis_pct: float = Field(
        default=5.0, ge=0, le=50, description="An open threshold alert clears only this far (% of the band width) inside the band."
    )
    # sensor faults
    flatline_minutes: float = Field(default=60, gt=0, description="A signal that does not change for this long is a flat-line fault.")
    flatline_min_readings: int = Field(
        default=4, ge=2, le=1440,
        description="...and for at least this many readings (at an hourly interval, 60 minutes is one reading, which never changes).",
    )
    flatline_tolerance: float = Field(default=1e-6, ge=0, description="Changes up to this size count as 'not changing' (flat-line).")
    flatline_own_factor: float = Field(
        default=2.0, ge=0,
        description="...and for this many times the meter's own ordinary longest run (learned with the step thresholds: a coarse meter, "
        "pressure to 0.1 bar or flow in whole m³/h, repeats itself for an hour at night); 0: flatline_minutes alone.",
    )
    spike_window: int = Field(default=31, ge=5, le=1441, description="Readings in the rolling median/MAD window of the spike rule.")
    spike_z: float = Field(default=8.0, gt=0, description="Robust z-score (|x - median| / (1.4826 MAD)) above which a reading is a spike.")
    spike_min_abs: dict[str, float] = Field(
        default_factory=lambda: {"flow_rate": 1.0, "pressure": 0.1},
        description="Per signal: a spike must also differ from the rolling median by at least this much (units of the signal).",
    )
    gap_factor: float = Field(default=2.5, gt=1, description="A time step longer than this many intervals is a gap in the timestamps.")
    gap_min_minutes: float = Field(
        default=10.0, ge=0,
        description="...and longer than this: a minute meter whose clock jitters by seconds and drops one reading now and then "
        "has no gap worth an alert (on such a file, 6.6 info alerts per 30 days: python -m bench.field).",
    )
    silent_intervals: float = Field(
        default=5, gt=0, description="A meter is silent after this many intervals without a reading (wall clock; the only wall-clock rule)."
    )
    silent_check_s: float = Field(default=5.0, gt=0, description="How often (wall clock) the silent-meter check runs.")
    # thresholds
    recalibrate_period: Literal["week", "month", "quarter", "year"] = Field(
        default="quarter",
        description="Recalibrate the alarm-budget thresholds (burst and pressure-drop steps, forecast tolerance) when event time crosses "
        "this boundary (and on demand): their tails need a long, steady sample. The bands follow bands_period.",
    )
    bands_period: Literal["day", "week", "month", "quarter", "year"] = Field(
        default="week",
        description="Learn the hour-of-day bands again from the last threshold_days when event time crosses this boundary: demand "
        "drifts with the seasons, and bands a quarter old took a 30 % rise over four months for 10.8 threshold alerts per 30 days.",
    )
    threshold_days: float = Field(default=28, gt=0, description="Learn the bands from this many days of recent readings.")
    threshold_min_days: float = Field(
        default=14, gt=0,
        description="Below this many days of data the static limits apply (retried daily until learned); two weeks, so each weekend hour band sees four days.",
    )
    threshold_quantiles: tuple[float, float] = Field(
        default=(0.005, 0.995), description="Lower and upper quantile of each hour-of-day / day-type band."
    )
    threshold_margin_pct: float = Field(
        default=50.0, ge=0, description="Widen each learned band by this % of its quantile spread on both sides."
    )
    threshold_min_spread: dict[str, float] = Field(
        default_factory=lambda: {"flow_rate": 1.0, "pressure": 0.2},
        description="Per signal: the smallest band half-margin (units of the signal), so a very steady signal is not over-alerted.",
    )
    static_limits: dict[str, tuple[float, float]] = Field(
        default_factory=lambda: dict(STATIC_LIMITS),
        description="Per signal: lower and upper limit used until enough data exists to learn bands. Flow: the physical range "
        "by default (a district's flow is anything from a few to thousands of m³/h: its bands are learned); set a meter's own to be told sooner. "
        "A signal left out keeps its default.",
    )
    pressure_loss_bar: float = Field(default=0.7, ge=0, description="Pressure below this (bar) is a critical pressure loss.")
    # minimum night flow
    night_start: str = Field(default="02:00", pattern=r"^\d{2}:\d{2}$", description="Night window start, local time HH:MM.")
    night_end: str = Field(
        default="04:00", pattern=r"^\d{2}:\d{2}$", description="Night window end, local HH:MM; before the start means it crosses midnight."
    )
    night_min_coverage: float = Field(
        default=0.5, gt=0, le=1, description="Fraction of the night window's readings needed to record its minimum."
    )
    night_bin_minutes: float = Field(
        default=15.0, ge=0, le=60,
        description="The night flow is the lowest mean over this many minutes inside the night window (the usual MNF definition); 0 or a meter whose readings are this far apart or farther: the lowest reading.",
    )
    night_baseline_nights: int = Field(default=28, ge=3, le=365, description="Baseline = median of up to this many previous nights.")
    night_by_daytype: bool = Field(
        default=True,
        description="Judge weekday and weekend nights against the median of earlier nights of the same day type (sigma pooled over both).",
    )
    night_min_baseline_nights: int = Field(default=7, ge=1, description="Nights needed before the leak rule judges a night.")
    night_sigma_min_pct: float = Field(
        default=3.0, gt=0, description="Smallest night-to-night spread (sigma) as % of the baseline, so a very steady meter is not over-alerted."
    )
    night_sigma_long_nights: int = Field(
        default=28, ge=3,
        description="Once this many ordinary nights are kept, sigma is at least their spread over all kept nights (up to 3 x night_baseline_nights), not only the recent ones: a quiet few weeks do not narrow it.",
    )
    night_cusum_slack: float = Field(
        default=0.75, ge=0, description="CUSUM slack (sigmas): the excess per night that counts towards a leak is z minus this."
    )
    night_cusum_limit: float = Field(
        default=4.0, gt=0, description="'night_flow' (leak suspected) opens when the CUSUM of night excesses passes this many sigmas."
    )
    night_clear_z: float = Field(
        default=1.5, ge=0, description="An open 'night_flow' closes after two nights in a row at most this many sigmas above the baseline (repaired).",
    )
    night_single_z: float = Field(
        default=3.5, gt=0, description="One night this many sigmas above the baseline raises 'night_flow' at once (a medium or large leak)."
    )
    night_demand_nights: int = Field(
        default=7, ge=0,
        description="An open 'night_flow' whose last this many nights rose no more than the day's flow did, in proportion (the night's share of the day as usual), closes: a change of demand (season, new customers), not a leak; the baseline follows the new level. 0: never.",
    )
    night_critical_pct: float = Field(
        default=25.0, gt=0, description="A 'night_flow' whose excess is at least this % of the baseline night flow is critical (a large leak); smaller ones are warnings."
    )
    # burst
    burst_baseline_minutes: float = Field(
        default=5, gt=0, description="Burst baseline = median of this many minutes before the level (the median of the last 3 readings); short, so a demand ramp is not a step."
    )
    burst_window_minutes: float = Field(default=5, ge=0, description="The flow step and the pressure step must come within this many minutes.")
    burst_flow_jump_pct: float = Field(
        default=13.0, gt=0, description="A flow step: the level rises over the baseline by this % of the mean flow of the last day..."
    )
    burst_flow_jump_abs: float = Field(default=1.0, ge=0, description="...and by at least this much (m³/h).")
    burst_pressure_drop: float = Field(
        default=0.05, gt=0, description="A pressure step: the level falls below the baseline by this much (bar); the meter's noise is ~0.01."
    )
    # alarm budget and calibrated steps (burst, pressure_drop)
    alarm_budget_per_30d: float = Field(
        default=1.0, gt=0, le=100,
        description="Tolerable false alarms per 30 days per meter: the calibrated rules (burst, pressure_drop, forecast_deviation) set their thresholds from the meter's own history so ordinary data would have raised at most this many (shared between them); night_flow's limits are the configured ones at 1 and move with it (f times the false leaks at f).",
    )
    calibration_min_days: float = Field(
        default=1, gt=0,
        description="Days of history needed before the step thresholds are calibrated (until then the fixed burst_* / pressure_drop_* defaults apply, and alerts say so); a coarse meter keeps them until it has 200 steps (15-minute: ~2 days, hourly: ~8).",
    )
    pressure_drop_bar: float = Field(
        default=0.3, gt=0,
        description="pressure_drop: a fall of the pressure level below its recent baseline by at least this much (bar); calibrated thresholds never go below it.",
    )
    pressure_drop_baseline_minutes: float = Field(
        default=10, gt=0, description="pressure_drop: the baseline is the median pressure of this many minutes before the level (short: supply-side events are abrupt, and a demand ramp moves both)."
    )
    pressure_drop_critical_bar: float = Field(
        default=1.0, gt=0, description="A pressure_drop at least this large (bar), or one ending under pressure_loss_bar, is critical; smaller ones are warnings."
    )
    # forecast deviation
    forecast_tolerance_pct: float = Field(default=30.0, gt=0, description="Readings further than this % from the forecast deviate...")
    forecast_tolerance_abs: dict[str, float] = Field(
        default_factory=lambda: {"flow_rate": 5.0, "pressure": 0.5},
        description="...and further than this much (units of the signal).",
    )
    forecast_sustain_minutes: float = Field(default=30, ge=0, description="Deviation must last this long to raise an alert.")
    # service
    backfill_hours: float = Field(
        default=26, gt=0, description="At start, replay this many hours of stored readings through the rules (covers the night window)."
    )
    batch_max: int = Field(default=500, ge=1, le=10_000, description="Most readings stored in one write (acks wait for the write).")

    @field_validator("threshold_quantiles")
    @classmethod
    def _quantiles(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not 0 <= v[0] < v[1] <= 1:
            raise ValueError("threshold_quantiles must be (low, high) with 0 <= low < high <= 1")
        return v

    @field_validator("static_limits")
    @classmethod
    def _static(cls, v: dict[str, tuple[float, float]]) -> dict[str, tuple[float, float]]:
        for sig, (lo, hi) in v.items():
            if sig not in ("flow_rate", "pressure"):
                raise ValueError(f"unknown signal {sig!r} in static_limits; use flow_rate or pressure")
            if not (math.isfinite(lo) and math.isfinite(hi)):
                raise ValueError(f"static_limits.{sig}: both limits must be finite numbers")
            if lo >= hi:
                raise ValueError(f"static_limits.{sig}: lower must be below upper")
        return {**STATIC_LIMITS, **v}  # a signal left out keeps its default (every signal has bands)

    @field_validator("spike_min_abs", "threshold_min_spread", "forecast_tolerance_abs")
    @classmethod
    def _per_signal(cls, v: dict[str, float]) -> dict[str, float]:
        for sig in v:
            if sig not in ("flow_rate", "pressure"):
                raise ValueError(f"unknown signal {sig!r}; use flow_rate or pressure")
        return v

    @field_validator("night_start", "night_end")
    @classmethod
    def _hhmm(cls, v: str) -> str:
        h, m = (int(x) for x in v.split(":"))
        if not (0 <= h <= 23 and 0 <= m <= 59):
            raise ValueError(f"{v!r} is not a time of day HH:MM")
        return v

    @model_validator(mode="after")
    def _window(self) -> DetectorSettings:
        if self.night_start == self.night_end:
            raise ValueError("night_start and night_end must differ")
        return self
