"""Line-protocol frames: pure parsing of one ASCII line into canonical values.

The parser is configured (``collector.serial.frame``), not coded: a frame is split on a delimiter
or matched by a regular expression with named groups; each field is scaled into canonical units
(flow rate m³/h, pressure bar) as ``raw * scale + offset``; an optional checksum is verified.

``parse_frame`` either returns a :class:`ParsedFrame` or raises :class:`FrameError` carrying a
reason the operator can act on. It has no side effects and does no I/O.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from functools import lru_cache

from shared.crc import crc16_modbus
from shared.settings import FrameField, FrameFormat

# Values a meter might print for "no value": read as missing, not as a bad frame.
MISSING_TOKENS = frozenset({"", "nan", "-nan", "+nan", "null", "none", "n/a", "na", "---", "--"})


class FrameError(ValueError):
    """A frame that does not parse. ``reason`` says why; ``raw`` is the frame as received."""

    def __init__(self, reason: str, raw: bytes = b"") -> None:
        super().__init__(reason)
        self.reason = reason
        self.raw = raw


@dataclass(frozen=True)
class ParsedFrame:
    flow_rate: float | None  # m³/h, None when the meter sent no value
    pressure: float | None  # bar


@lru_cache(maxsize=16)
def _compile(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern)


def checksum(kind: str, body: bytes) -> int:
    """The checksum of ``body``: ``xor8``, ``sum8`` (mod 256) or ``crc16-modbus``."""
    if kind == "xor8":
        x = 0
        for b in body:
            x ^= b
        return x
    if kind == "sum8":
        return sum(body) & 0xFF
    if kind == "crc16-modbus":
        return crc16_modbus(body)
    raise ValueError(f"unknown checksum kind {kind!r}")


def _number(text: str, name: str, spec: FrameField) -> float | None:
    token = text.strip()
    if token.lower() in MISSING_TOKENS:
        return None
    if len(token) > 40:
        raise FrameError(f"{name} field is {len(token)} characters long, not a number")
    try:
        raw = float(token)
    except ValueError:
        raise FrameError(f"{name} field {token[:40]!r} is not a number") from None
    if math.isnan(raw):
        return None
    value = raw * spec.scale + spec.offset
    if not math.isfinite(value):
        raise FrameError(f"{name} field {token[:40]!r} is not a finite number")
    return value


def verify_checksum(fmt: FrameFormat, text: str) -> str:
    """Strip and check the checksum; return the frame body. Raises FrameError."""
    cs = fmt.checksum
    if cs.kind == "none":
        return text
    body, sep, given = text.rpartition(cs.separator)
    if not sep:
        raise FrameError(f"no checksum: separator {cs.separator!r} not found")
    given = given.strip()
    try:
        want = int(given, 16)
    except ValueError:
        raise FrameError(f"checksum {given[:16]!r} is not hexadecimal") from None
    got = checksum(cs.kind, body.encode(fmt.encoding, errors="strict"))
    if got != want:
        raise FrameError(f"checksum mismatch: frame says {want:X}, computed {cs.kind} {got:X}")
    return body


def parse_frame(raw: bytes, fmt: FrameFormat) -> ParsedFrame:
    """Parse one frame (a line, with or without its line end). Raises :class:`FrameError`."""
    try:
        return _parse(raw, fmt)
    except FrameError as exc:
        exc.raw = raw
        raise


def _parse(raw: bytes, fmt: FrameFormat) -> ParsedFrame:
    if len(raw) > fmt.max_bytes:
        raise FrameError(f"frame is {len(raw)} bytes, longer than frame.max_bytes={fmt.max_bytes}")
    try:
        text = raw.decode(fmt.encoding)
    except UnicodeDecodeError as exc:
        raise FrameError(f"not {fmt.encoding} text: byte 0x{raw[exc.start]:02x} at offset {exc.start}") from None
    except LookupError:
        raise FrameError(f"unknown frame.encoding {fmt.encoding!r}") from None
    text = text.strip(fmt.strip)
    if not text:
        raise FrameError("empty frame")
    if "\x00" in text:
        raise FrameError("frame contains NUL bytes")
    text = verify_checksum(fmt, text)
    names = [name for name in ("flow_rate", "pressure") if getattr(fmt, name) is not None]
    if fmt.kind == "regex":
        assert fmt.regex is not None  # settings validation guarantees it
        m = _compile(fmt.regex).fullmatch(text) or _compile(fmt.regex).search(text)
        if m is None:
            raise FrameError("frame does not match frame.regex")
        fields = {name: m.group(getattr(fmt, name).group) or "" for name in names}
    else:
        parts = text.split(fmt.delimiter)
        need = max(getattr(fmt, name).index or 0 for name in names) + 1
        if len(parts) < need:
            raise FrameError(f"frame has {len(parts)} field(s) split on {fmt.delimiter!r}, needs at least {need}")
        fields = {name: parts[getattr(fmt, name).index] for name in names}
    return ParsedFrame(  # a value the frame does not carry (frame.pressure: null) is None
        flow_rate=_number(fields["flow_rate"], "flow_rate", fmt.flow_rate) if "flow_rate" in fields else None,
        pressure=_number(fields["pressure"], "pressure", fmt.pressure) if "pressure" in fields else None,
    )
