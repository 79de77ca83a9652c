"""forecast_deviation: sustained distance from the latest forecast.

The forecast of a signal (from the forecaster, :meth:`ForecastDeviationRule.offer`) is read
linearly between its steps; a reading further from it than ``forecast_tolerance_pct`` of the
forecast value (at least ``forecast_tolerance_abs``) counts, and the alert opens once that has lasted
``forecast_sustain_minutes``. A forecast issued while a burst or a pressure loss was open is not
used (made from the anomaly, it would flag the recovery): the engine says so with ``tainted``.
"""

from __future__ import annotations

import bisect
from typing import TYPE_CHECKING

from services.detector.alerts import AlertState, Condition

if TYPE_CHECKING:
    from shared.settings import DetectorSettings


class ForecastDeviationRule:
    """One signal of one meter: the latest usable forecast (issued, target epochs, values)."""

    __slots__ = ("forecast", "minutes", "sig", "tol_abs", "tol_pct")

    kind = "forecast_deviation"

    def __init__(self, sig: str, cfg: DetectorSettings) -> None:
        self.sig = sig
        self.tol_pct, self.tol_abs = cfg.forecast_tolerance_pct, cfg.forecast_tolerance_abs.get(sig, 0.0)
        self.minutes = cfg.forecast_sustain_minutes
        self.forecast: tuple[float, list[float], list[float]] | None = None

    def offer(self, issued: float, targets: list[float], values: list[float], tainted: bool) -> None:
        """A new forecast: replaces the current one unless older; a tainted one drops the current one."""
        cur = self.forecast
        if cur is not None and cur[0] > issued:
            return
        self.forecast = None if tainted else (issued, targets, values)

    def check(self, t: float, x: float, alert: AlertState | None) -> Condition | None:
        fc = self.forecast
        if fc is None:
            return None
        issued, targets, values = fc
        if not issued < t <= targets[-1]:
            return None
        j = bisect.bisect_left(targets, t)
        if j == 0:
            fv = values[0]
        else:
            t0, t1 = targets[j - 1], targets[j]
            fv = values[j - 1] + (values[j] - values[j - 1]) * (t - t0) / (t1 - t0)
        tol = max(abs(fv) * self.tol_pct / 100.0, self.tol_abs)
        dev = abs(x - fv) > tol
        if dev or (alert is not None and (alert.is_open or alert.first_true is not None)):
            return Condition(dev, x, fv, f"{self.sig} {x:.3f} vs forecast {fv:.3f} (tolerance {tol:.3f}) "
                                         f"for {self.minutes:g} min or more")
        return None
