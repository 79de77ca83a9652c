"""Meter sources behind one small interface: ``open()``, ``read(timeout)``, ``close()``.

``read`` returns a :class:`Sample`, or None when nothing arrived within ``timeout``; it raises
:class:`~services.collector.frames.FrameError` for a frame that does not parse (the collector
counts and dead-letters it and reads on), :class:`SourceIOError` (or ``OSError``) when the port
or connection failed (the collector closes and reopens with backoff), and :class:`EndOfSource`
when a finite source (replay) is exhausted. Hardware libraries are imported where used.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

from shared.settings import Settings

logger = logging.getLogger(__name__)


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
    extra: Mapping[str, float | None] | None = None  # other registers of the map, by name (Modbus)


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

    def group(self) -> object:
        """Sources with the same group share one connection (Modbus meters on one RS485 port) and are
        read in turn by one thread; by default each source is its own."""
        return self


def make_source(settings: Settings, meter: str | None = None, links: dict | None = None) -> Source:
    """The source of ``meter`` (default: the first): ``collector.<section>`` with the meter's own keys
    merged over it. Modbus meters on one serial port (RTU) or one host (TCP) share one client, kept
    in ``links`` (pass one dict for all the meters of a collector)."""
    src = settings.meter_source(meter or settings.meter)
    kind, cfg = src.kind, src.cfg
    if kind == "serial":
        from services.collector.sources.serial import SerialSource

        return SerialSource(cfg)
    if kind in ("modbus-rtu", "modbus-tcp"):
        from services.collector.sources.modbus import ModbusLink, ModbusSource

        rtu = kind == "modbus-rtu"
        links = {} if links is None else links
        key = (kind, cfg.port if rtu else f"{cfg.host}:{cfg.tcp_port}")
        link = links.get(key)
        if link is None:
            link = links[key] = ModbusLink(cfg, rtu=rtu)
        elif rtu and link.line(cfg) != link.line(link.cfg):
            logger.warning("meter %s: port %s is opened with the line settings of the first meter on it (%s), not %s",
                           meter, cfg.port, link.line(link.cfg), link.line(cfg))
        return ModbusSource(cfg, rtu=rtu, link=link)
    if kind == "replay":
        from services.collector.sources.replay import ReplaySource

        return ReplaySource(cfg, settings.limits_of(meter or settings.meter))
    from services.collector.sources.simulator import SimulatorSource

    return SimulatorSource(cfg, interval_s=settings.interval_of(meter or settings.meter), tz=settings.timezone, off=settings.calendar)
