"""The simulated meter as a source (timed: samples carry their own event time)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import date

from services.collector.simulator import SimSample, Simulator
from services.collector.sources import Sample, Source
from shared.eventtime import weekend
from shared.settings import SimulatorSettings


class SimulatorSource(Source):
    name = "simulator"
    timed = True

    def __init__(self, cfg: SimulatorSettings, *, interval_s: int, tz: str, start=None, off: Callable[[date], bool] = weekend) -> None:
        self.sim = Simulator(cfg, interval_s=interval_s, tz=tz, off=off)
        self.start = self.sim.start_time(start)
        self._it: Iterator[SimSample] | None = None

    def describe(self) -> str:
        return f"simulator seed {self.sim.seed} from {self.start.isoformat()}"

    def open(self) -> None:
        if self._it is None:  # reopening continues the stream where it was
            self._it = self.sim.samples(self.start)

    def read(self, timeout: float) -> Sample | None:
        assert self._it is not None
        s = next(self._it)
        return Sample(s.flow_rate, s.pressure, ts=s.ts, flags=("simulated",))

    def close(self) -> None:
        pass
