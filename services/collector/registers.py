"""Modbus register maps: pure planning of reads and decoding of register values.

- :func:`plan_reads` groups the map into as few requests as possible, per function code, never
  more than 125 registers per request (the Modbus limit for function 3/4) and never splitting a
  value across two requests;
- :func:`decode` turns one value's registers into a number: int16 (signed), uint16, int32,
  uint32, float32, with byte order inside each register and word order between the two registers
  of a 32-bit value;
- :func:`scaled` applies ``raw * scale (* 10^factor) + offset``, the factor read from another
  register when the map says so (SunSpec-style scale factors); a float32 NaN is a missing value (None).
"""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from shared.settings import RegisterSpec

MAX_REGISTERS_PER_READ = 125  # Modbus application protocol, function codes 3 and 4

WIDTH = {"int16": 1, "uint16": 1, "int32": 2, "uint32": 2, "float32": 2}
_FORMAT = {"int16": ">h", "uint16": ">H", "int32": ">i", "uint32": ">I", "float32": ">f"}


class RegisterError(ValueError):
    """Registers that cannot be decoded (wrong count, value out of 16-bit range)."""


@dataclass(frozen=True)
class ReadBlock:
    function: int  # 3 holding, 4 input
    address: int
    count: int

    def covers(self, spec: RegisterSpec) -> bool:
        return spec.function == self.function and self.address <= spec.address and spec.address + WIDTH[spec.data_type] <= self.address + self.count


def plan_reads(specs: Sequence[RegisterSpec], max_count: int = MAX_REGISTERS_PER_READ) -> list[ReadBlock]:
    """Requests that cover every spec: contiguous or overlapping values are merged, up to ``max_count``."""
    if max_count < 2:
        raise ValueError("max_count must be at least 2 (a 32-bit value spans two registers)")
    blocks: list[ReadBlock] = []
    for function in sorted({s.function for s in specs}):
        spans = sorted((s.address, s.address + WIDTH[s.data_type]) for s in specs if s.function == function)
        start, end = spans[0]
        for lo, hi in spans[1:]:
            if lo <= end and max(end, hi) - start <= max_count:
                end = max(end, hi)
            else:
                blocks.append(ReadBlock(function, start, end - start))
                start, end = lo, hi
        blocks.append(ReadBlock(function, start, end - start))
    return blocks


def decode(registers: Sequence[int], data_type: str, byte_order: str = "big", word_order: str = "big") -> int | float:
    """One value from its registers (16-bit unsigned integers as read from the wire)."""
    width = WIDTH[data_type]
    if len(registers) != width:
        raise RegisterError(f"{data_type} needs {width} register(s), got {len(registers)}")
    words = list(registers)
    for w in words:
        if not 0 <= int(w) <= 0xFFFF:
            raise RegisterError(f"register value {w} is not a 16-bit unsigned integer")
    if width == 2 and word_order == "little":
        words.reverse()
    raw = b"".join(int(w).to_bytes(2, "big" if byte_order == "big" else "little") for w in words)
    return struct.unpack(_FORMAT[data_type], raw)[0]


def encode(value: int | float, data_type: str, byte_order: str = "big", word_order: str = "big") -> list[int]:
    """The inverse of :func:`decode` (used to build test fixtures and docs examples)."""
    raw = struct.pack(_FORMAT[data_type], value)
    words = [int.from_bytes(raw[i : i + 2], "big" if byte_order == "big" else "little") for i in range(0, len(raw), 2)]
    if len(words) == 2 and word_order == "little":
        words.reverse()
    return words


def scaled(raw: int | float, spec: RegisterSpec, factor: int | float | None = None) -> float | None:
    """``raw * scale * 10^factor + offset`` (``factor``: the value of the spec's scale-factor register);
    a NaN, or a result that is not finite, is a missing value (None)."""
    value = float(raw)
    if math.isnan(value):
        return None
    value = value * spec.scale
    if factor is not None:
        if not -20 <= factor <= 20:  # SunSpec's "not implemented" 0x8000, or a garbled factor
            return None
        value *= 10.0 ** int(factor)
    value += spec.offset
    return value if math.isfinite(value) else None


def values_from_blocks(specs: Sequence[RegisterSpec], data: Mapping[ReadBlock, Sequence[int]]) -> dict[str, float | None]:
    """Decode and scale every spec from the registers read per block. A register that is another's
    scale factor (``scale_register``) is applied to it and not returned itself."""
    raws: dict[str, int | float] = {}
    for spec in specs:
        block = next((b for b in data if b.covers(spec)), None)
        if block is None:
            raise RegisterError(f"no read covers {spec.name} at address {spec.address}")
        regs = data[block]
        i = spec.address - block.address
        raws[spec.name] = decode(regs[i : i + WIDTH[spec.data_type]], spec.data_type, spec.byte_order, spec.word_order)
    factors = {s.scale_register for s in specs if s.scale_register}
    return {s.name: scaled(raws[s.name], s, raws[s.scale_register] if s.scale_register else None)
            for s in specs if s.name not in factors}
