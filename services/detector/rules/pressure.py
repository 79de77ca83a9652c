"""pressure_loss: pressure under ``pressure_loss_bar`` (critical). Stateless."""

from __future__ import annotations

from typing import TYPE_CHECKING

from services.detector.alerts import AlertState, Condition

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
