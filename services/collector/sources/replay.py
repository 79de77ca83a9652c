"""Replay of a readings CSV (``timestamp,flow_rate,pressure``) through the live path (timed)."""

from __future__ import annotations

import math

from services.collector.frames import FrameError
from services.collector.sources import EndOfSource, Sample, Source, SourceIOError
from shared.readings_csv import CsvFormatError, read_all
from shared.settings import RangeLimits, ReplaySettings


class ReplaySource(Source):
    name = "replay"
    timed = True

    def __init__(self, cfg: ReplaySettings, limits: RangeLimits) -> None:
        self.cfg = cfg
        self.limits = limits
        self._rows: list[tuple] | None = None
        self._rejects: list = []
        self._pos = 0

    def describe(self) -> str:
        return f"replay {self.cfg.file}"

    def open(self) -> None:
        if self._rows is not None:
            return
        try:
            frame, rejects = read_all(self.cfg.file, self.limits, self.cfg.naive_timezone, source="replay")
        except CsvFormatError as exc:
            raise SourceIOError(f"collector.replay.file: {exc}") from exc
        self._rejects = list(rejects)
        self._rows = list(zip(frame.index.to_pydatetime(), frame["flow_rate"].tolist(), frame["pressure"].tolist(), strict=True))

    def read(self, timeout: float) -> Sample | None:
        assert self._rows is not None
        if self._rejects:
            r = self._rejects.pop(0)
            raise FrameError(f"{self.cfg.file} line {r.line}: {r.reason}", r.raw.encode())
        if self._pos >= len(self._rows):
            raise EndOfSource(f"replay of {self.cfg.file} finished ({len(self._rows)} readings)")
        ts, flow, pres = self._rows[self._pos]
        self._pos += 1
        nan = lambda v: v is None or (isinstance(v, float) and math.isnan(v))  # noqa: E731
        return Sample(None if nan(flow) else float(flow), None if nan(pres) else float(pres), ts=ts)

    def close(self) -> None:
        pass
