"""Meter sources behind one small interface: ``open()``, ``read(timeout)``, ``close()``.

``read`` returns a :class:`Sample`, or None when nothing arrived within ``timeout``; it raises
:class:`~services.collector.frames.FrameError` for a frame that does not parse (the collector
counts and dead-letters it and reads on), :class:`SourceIOError` (or ``OSError``) when the port
or connection failed (the collector closes and reopens with backoff), and :class:`EndOfSource`
when a finite source (replay) is exhausted. Hardware libraries are imported where used.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from datetime import datetime

from shared.settings import Settings


class SourceIOError(OSError):
    """The port or connection failed; reopen it."""


class EndOfSource(Exception):
    """A finite source has nothing more."""


@dataclass(frozen=True)
class Sample:
    """Values in canonical units (flow m³/h, pressure bar); ``ts`` only when the source carries event time."""

    flow_rate: float | None
    pressure: float | None
    ts: datetime | None = None
    flags: tuple[str, ...] = ()
    raw: bytes = b""


class Source(ABC):
    name: str = "source"
    #: The collector calls read() once per interval (the source asks the meter). Otherwise the
    #: meter talks on its own and read() is called continuously.
    polled: bool = False
    #: Samples carry their own event time (simulator, replay); the collector paces them by speed.
    timed: bool = False

    @abstractmethod
    def open(self) -> None: ...

    @abstractmethod
    def read(self, timeout: float) -> Sample | None: ...

    @abstractmethod
    def close(self) -> None: ...

    def describe(self) -> str:
        return self.name


def make_source(settings: Settings) -> Source:
    """The source named by ``collector.source``."""
    c = settings.collector
    if c.source == "serial":
        from services.collector.sources.serial import SerialSource

        return SerialSource(c.serial)
    if c.source in ("modbus-rtu", "modbus-tcp"):
        from services.collector.sources.modbus import ModbusSource

        return ModbusSource(c.modbus, rtu=c.source == "modbus-rtu")
    if c.source == "replay":
        from services.collector.sources.replay import ReplaySource

        return ReplaySource(c.replay, settings.limits)
    from services.collector.sources.simulator import SimulatorSource

    return SimulatorSource(c.simulator, interval_s=c.interval_s, tz=settings.timezone)
