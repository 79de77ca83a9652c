"""A meter that speaks a line-based ASCII protocol on a serial port (RS485 adapter), via pyserial."""

from __future__ import annotations

import codecs
import logging
import time

from services.collector.frames import FrameError, parse_frame
from services.collector.sources import Sample, Source, SourceIOError
from shared.settings import SerialSettings

logger = logging.getLogger(__name__)


def unescape(text: str) -> bytes:
    r"""Config text with escapes (``\r\n``, ``\x02``) as bytes."""
    return codecs.decode(text, "unicode_escape").encode("latin-1")


class SerialSource(Source):
    name = "serial"

    def __init__(self, cfg: SerialSettings) -> None:
        self.cfg = cfg
        self.polled = cfg.request is not None
        self._request = unescape(cfg.request) if cfg.request is not None else b""
        self._term = cfg.frame.terminator.encode()
        self._buf = bytearray()
        self._port = None

    def describe(self) -> str:
        c = self.cfg
        return f"serial {c.port} {c.baudrate} {c.bytesize}{c.parity}{c.stopbits}"

    def open(self) -> None:
        import serial  # pyserial

        c = self.cfg
        try:
            self._port = serial.serial_for_url(
                c.port, baudrate=c.baudrate, bytesize=c.bytesize, parity=c.parity, stopbits=c.stopbits, timeout=c.timeout_s
            )
        except (serial.SerialException, ValueError) as exc:
            raise SourceIOError(f"cannot open serial port {c.port} (collector.serial.port): {exc}") from exc
        self._buf.clear()

    def close(self) -> None:
        port, self._port = self._port, None
        if port is not None:
            try:
                port.close()
            except Exception as exc:  # noqa: BLE001 - a dead port may fail to close; it is gone anyway
                logger.debug("closing serial port: %s", exc)

    def read(self, timeout: float) -> Sample | None:
        import serial

        if self._port is None:
            raise SourceIOError("serial port is not open")
        try:
            if self.polled:
                self._port.reset_input_buffer()
                self._buf.clear()
                self._port.write(self._request)
                self._port.flush()
                timeout = max(timeout, self.cfg.timeout_s)
            line = self._line(timeout)
        except serial.SerialException as exc:
            raise SourceIOError(f"serial port {self.cfg.port} failed: {exc}") from exc
        if line is None:
            return None
        parsed = parse_frame(line, self.cfg.frame)
        return Sample(parsed.flow_rate, parsed.pressure, raw=line)

    def _line(self, timeout: float) -> bytes | None:
        deadline = time.monotonic() + timeout
        limit = self.cfg.frame.max_bytes
        while True:
            i = self._buf.find(self._term)
            if i >= 0:
                end = i + len(self._term)
                line = bytes(self._buf[:end])
                del self._buf[:end]
                return line
            if len(self._buf) > limit:
                raw = bytes(self._buf)
                self._buf.clear()
                raise FrameError(f"no frame terminator within frame.max_bytes={limit} bytes", raw)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            self._port.timeout = min(remaining, 0.5)
            chunk = self._port.read(max(1, min(self._port.in_waiting, 4096)))
            if chunk:
                self._buf += chunk
