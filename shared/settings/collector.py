"""``collector``: where readings come from (simulator, serial line protocol, Modbus, CSV replay)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from shared.messages import Ident
from shared.settings.base import Section

SourceKind = Literal["simulator", "serial", "modbus-rtu", "modbus-tcp", "replay"]  # where a meter is read


class FrameField(Section):
    """Where one value sits in a serial frame and how it becomes a canonical unit."""

    index: int | None = Field(
        default=None, ge=0, description="Position of the field after splitting on frame.delimiter (0 = first); delimited frames only."
    )
    group: str | None = Field(default=None, description="Named group of frame.regex holding the value; regex frames only.")
    scale: float = Field(default=1.0, description="Canonical value = raw * scale + offset (e.g. 3.6 for L/s -> m³/h, 0.01 for kPa -> bar).")
    offset: float = Field(default=0.0, description="Added after scaling (canonical units).")


class ChecksumSettings(Section):
    kind: Literal["none", "xor8", "sum8", "crc16-modbus"] = Field(
        default="none", description="Checksum over the frame text before the separator: XOR or sum of the bytes mod 256, or CRC-16/MODBUS."
    )
    separator: str = Field(default="*", min_length=1, description="Text between the frame body and the hexadecimal checksum (e.g. 'F=12.3,P=4.5*5A').")


class FrameFormat(Section):
    """How a line-based ASCII frame is parsed: configured, not coded (services/collector/frames.py)."""

    kind: Literal["delimited", "regex"] = Field(default="delimited", description="Split on a delimiter, or match a regular expression with named groups.")
    delimiter: str = Field(default=",", min_length=1, description="Field separator of delimited frames.")
    regex: str | None = Field(default=None, description="Regular expression with named groups (e.g. '^F=(?P<flow>[-0-9.]+);P=(?P<pres>[-0-9.]+)$'); regex frames only.")
    encoding: str = Field(default="ascii", description="Text encoding of a frame; bytes that do not decode reject the frame.")
    strip: str = Field(default="\r\n \x02\x03", description="Characters stripped from both ends of a frame (line end, STX/ETX).")
    flow_rate: FrameField | None = Field(
        default_factory=lambda: FrameField(index=0), description="Where the flow rate is and how it is scaled to m³/h; null: the frame has none."
    )
    pressure: FrameField | None = Field(
        default_factory=lambda: FrameField(index=1),
        description="Where the pressure is and how it is scaled to bar; null: the frame has none (a flow-only meter).",
    )
    checksum: ChecksumSettings = Field(default_factory=ChecksumSettings, description="Optional checksum at the end of the frame.")
    terminator: str = Field(default="\n", min_length=1, description="End of a frame (line end); '\\r\\n' frames end with '\\n' too.")
    max_bytes: int = Field(default=512, ge=8, le=65536, description="Longer lines are rejected as frames (a garbled line that never ends).")

    @model_validator(mode="after")
    def _consistent(self) -> FrameFormat:
        names = [name for name in ("flow_rate", "pressure") if getattr(self, name) is not None]
        if not names:
            raise ValueError("frame.flow_rate and frame.pressure are both null; a frame needs at least one value")
        if self.kind == "regex":
            if not self.regex:
                raise ValueError("frame.kind is 'regex' but frame.regex is not set; give a pattern with named groups")
            try:
                pattern = re.compile(self.regex)
            except re.error as exc:
                raise ValueError(f"frame.regex does not compile: {exc}") from None
            for name in names:
                group = getattr(self, name).group
                if not group:
                    raise ValueError(f"frame.{name}.group is required with a regex frame")
                if group not in pattern.groupindex:
                    raise ValueError(f"frame.{name}.group {group!r} is not a named group of frame.regex")
        else:
            for name in names:
                if getattr(self, name).index is None:
                    raise ValueError(f"frame.{name}.index is required with a delimited frame")
        return self


class SerialSettings(Section):
    port: str | None = Field(default=None, description="Serial device of the RS485 adapter, e.g. /dev/ttyUSB0 (Linux) or COM3 (Windows).")
    baudrate: int = Field(default=9600, gt=0, description="Line speed in bit/s (the meter's setting; 9600 is common).")
    bytesize: Literal[5, 6, 7, 8] = Field(default=8, description="Data bits per character.")
    parity: Literal["N", "E", "O", "M", "S"] = Field(default="N", description="Parity: N(one), E(ven), O(dd), M(ark), S(pace).")
    stopbits: Literal[1, 1.5, 2] = Field(default=1, description="Stop bits.")
    timeout_s: float = Field(default=2.0, gt=0, le=60, description="How long one read waits for a complete line.")
    request: str | None = Field(
        default=None,
        description="Query sent once per interval for a meter that answers on request (escapes like \\r\\n allowed); unset for a meter that sends frames on its own.",
    )
    frame: FrameFormat = Field(default_factory=FrameFormat, description="How a frame (one line) is parsed.")


class RegisterSpec(Section):
    """One value in the meter's Modbus register map."""

    name: Ident = Field(
        description="What the register holds: flow_rate or pressure (the meter's signals), or any other name "
        "(totalizer, battery, temperature, status, ...): an extra value, published and stored with the reading."
    )
    address: int = Field(ge=0, le=65535, description="Zero-based register address (protocol address, not the 3xxxx/4xxxx label).")
    function: Literal[3, 4] = Field(default=3, description="3 = read holding registers, 4 = read input registers.")
    data_type: Literal["int16", "uint16", "int32", "uint32", "float32"] = Field(default="float32", description="Register data type.")
    byte_order: Literal["big", "little"] = Field(default="big", description="Byte order inside each 16-bit register (big is the Modbus standard).")
    word_order: Literal["big", "little"] = Field(default="big", description="Order of the two registers of a 32-bit value (big = high word first, 'ABCD'; little = 'CDAB').")
    scale: float = Field(default=1.0, description="Canonical value = raw * scale + offset (m³/h or bar).")
    offset: float = Field(default=0.0, description="Added after scaling.")
    scale_register: Ident | None = Field(
        default=None,
        description="Name of another register of the map holding a power-of-ten scale factor (SunSpec style, "
        "an int16 such as -2): value = raw * scale * 10^factor + offset. A register used as a factor is not published itself.",
    )


MAX_REGISTERS = 32  # values in one map: the signals, the extra values (shared.messages.MAX_EXTRA) and their factors


class ModbusSettings(Section):
    host: str | None = Field(default=None, description="Meter or gateway address (modbus-tcp).")
    tcp_port: int = Field(default=502, ge=1, le=65535, description="TCP port (modbus-tcp).")
    port: str | None = Field(default=None, description="Serial device of the RS485 adapter (modbus-rtu), e.g. /dev/ttyUSB0.")
    baudrate: int = Field(default=9600, gt=0, description="Line speed in bit/s (modbus-rtu).")
    bytesize: Literal[7, 8] = Field(default=8, description="Data bits (modbus-rtu).")
    parity: Literal["N", "E", "O"] = Field(default="N", description="Parity (modbus-rtu); the Modbus standard says E, many meters ship with N.")
    stopbits: Literal[1, 2] = Field(default=1, description="Stop bits (modbus-rtu).")
    unit_id: int = Field(default=1, ge=0, le=247, description="Modbus unit (slave) id of the meter.")
    timeout_s: float = Field(default=1.0, gt=0, le=60, description="Response timeout per request.")
    retries: int = Field(default=2, ge=0, le=10, description="Retries of a request before the reading is given up.")
    registers: list[RegisterSpec] = Field(
        default_factory=lambda: [
            RegisterSpec(name="flow_rate", address=0, function=4, data_type="float32"),
            RegisterSpec(name="pressure", address=2, function=4, data_type="float32"),
        ],
        max_length=MAX_REGISTERS,
        description="The register map: one entry for each signal of the meter (flow_rate, pressure), plus any extra "
        "values and scale-factor registers (see docs/meters.md).",
    )

    @field_validator("registers")
    @classmethod
    def _names(cls, v: list[RegisterSpec]) -> list[RegisterSpec]:
        names = [r.name for r in v]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"the register map names {twice[0]!r} twice; every register needs its own name")
        by_name = {r.name: r for r in v}
        for r in v:
            if r.scale_register is None:
                continue
            factor = by_name.get(r.scale_register)
            if factor is None or factor is r:
                raise ValueError(f"register {r.name!r}: scale_register {r.scale_register!r} is not another register of the map")
            if factor.data_type == "float32" or factor.scale_register is not None:
                raise ValueError(f"register {r.name!r}: its scale_register {factor.name!r} must be a plain integer register (int16, uint16, int32, uint32)")
        return v


class SimEvent(Section):
    """An event injected into the simulated stream."""

    kind: Literal["burst", "leak", "pressure_drop", "flatline", "spike", "gap"] = Field(description="What happens.")
    at_minutes: float = Field(ge=0, description="Start, in minutes of event time after the simulation start.")
    duration_minutes: float = Field(default=30, ge=0, description="How long it lasts (spike: ignored, one reading).")
    magnitude: float | None = Field(
        default=None,
        description="burst/leak: added flow in m³/h (default 80 % / 10 % of mean_flow); pressure_drop: bar (default 1.5); spike: factor on the value (default 3).",
    )
    signal: Literal["flow_rate", "pressure"] = Field(default="flow_rate", description="Signal affected by flatline and spike.")


class SimulatorSettings(Section):
    seed: int = Field(default=42, description="Random seed: the same seed gives the same stream.")
    start: datetime | None = Field(default=None, description="Event time of the first reading (ISO 8601 with zone); now, aligned to the interval, when unset.")
    mean_flow: float = Field(default=120.0, gt=0, description="Mean demand in m³/h.")
    diurnal_amplitude: float = Field(default=0.45, ge=0, le=0.95, description="Relative swing of the daily demand profile (night minimum to morning peak).")
    weekend_factor: float = Field(default=0.9, gt=0, description="Weekend demand relative to weekdays.")
    noise: float = Field(default=0.03, ge=0, le=0.5, description="Relative noise of flow readings.")
    source_head_bar: float = Field(default=5.0, gt=0, description="Pressure at zero flow (source head), bar.")
    friction_loss_bar: float = Field(default=0.8, ge=0, description="Friction loss at mean flow, bar; loss grows as k*Q².")
    pressure_noise_bar: float = Field(default=0.02, ge=0, description="Noise of pressure readings, bar.")
    default_events: bool = Field(default=True, description="Add the demo schedule (a burst 20 minutes in, then a spike, flat-line, pressure drop, gap and slow leak).")
    events: list[SimEvent] = Field(default_factory=list, description="More events (added to the demo schedule unless default_events is false).")


class ReplaySettings(Section):
    file: Path | None = Field(default=None, description="Readings CSV (timestamp,flow_rate,pressure) to replay.")
    naive_timezone: str = Field(default="UTC", description="Zone of timestamps written without an offset.")


class CollectorSettings(Section):
    source: SourceKind = Field(
        default="simulator", description="Where readings come from (of each meter without a source of its own); the simulator when no meter is attached."
    )
    interval_s: int = Field(default=60, ge=1, le=3600, description="Seconds between readings (event time) of each meter without an interval_s of its own.")
    speed: float = Field(
        default=1.0, ge=0, description="Event time runs this many times faster than wall time (simulator, replay); 0 = as fast as possible."
    )
    spool_max_rows: int = Field(default=1_000_000, ge=100, description="Disk spool bound (readings) while the broker is away; the oldest are dropped beyond it, counted and logged.")
    spool_path: Path = Field(default=Path("spool.db"), description="Store-and-forward spool (SQLite); relative paths are under data_dir.")
    reopen_min_s: float = Field(default=1.0, gt=0, description="First delay before reopening a meter port that failed.")
    reopen_max_s: float = Field(default=60.0, gt=0, description="Longest delay between reopen attempts (backoff cap).")
    unhealthy_after_intervals: float = Field(
        default=3.0, ge=2,
        description="The collector is unhealthy when no reading has come from one of its meters for longer than this many "
        "of the meter's intervals (wall clock; a meter that does not answer, a port that cannot be opened). Not after a replay ended.",
    )
    serial: SerialSettings = Field(default_factory=SerialSettings, description="Line-protocol meter on a serial port (source: serial).")
    modbus: ModbusSettings = Field(default_factory=ModbusSettings, description="Modbus meter (source: modbus-rtu or modbus-tcp).")
    simulator: SimulatorSettings = Field(default_factory=SimulatorSettings, description="Simulated meter (source: simulator).")
    replay: ReplaySettings = Field(default_factory=ReplaySettings, description="CSV replay (source: replay).")

    @model_validator(mode="after")
    def _reopen(self) -> CollectorSettings:
        if self.reopen_min_s > self.reopen_max_s:
            raise ValueError("collector.reopen_min_s must not exceed collector.reopen_max_s")
        return self


SECTION_OF: dict[str, str] = {"simulator": "simulator", "serial": "serial", "modbus-rtu": "modbus", "modbus-tcp": "modbus", "replay": "replay"}
_NEEDS: dict[str, tuple[str, str, str]] = {  # source -> (section, key, example)
    "serial": ("serial", "port", "e.g. /dev/ttyUSB0"),
    "modbus-rtu": ("modbus", "port", "e.g. /dev/ttyUSB0"),
    "modbus-tcp": ("modbus", "host", "the meter's IP address"),
    "replay": ("replay", "file", "a timestamp,flow_rate,pressure CSV"),
}


@dataclass(frozen=True)
class MeterSource:
    """Where one meter is read: the source kind and its section (collector's, with the meter's keys merged over it)."""

    kind: SourceKind
    cfg: SerialSettings | ModbusSettings | SimulatorSettings | ReplaySettings


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def meter_source(c: CollectorSettings, kind: SourceKind, overrides: dict[str, Any] | None, where: str, index: int = 0) -> MeterSource:
    """The source of one meter: ``collector.<section>`` with ``overrides`` merged over it, validated.

    ``where`` names the meter in errors (e.g. ``meters[1] (outlet)``); ``index`` is its position, which
    gives each simulated meter its own seed unless it sets one."""
    name = SECTION_OF[kind]
    section: Section = getattr(c, name)
    over = dict(overrides or {})
    if kind == "simulator" and index and "seed" not in over:
        over["seed"] = c.simulator.seed + index
    try:
        cfg = type(section).model_validate(_merge(section.model_dump(), over)) if over else section
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or '(section)'}: {e['msg']}" for e in exc.errors())
        raise ValueError(f"{where}: its {name} keys merged over collector.{name} are not valid: {problems}") from None
    need = _NEEDS.get(kind)
    if need is not None and not getattr(cfg, need[1]):
        sec, key, example = need
        if overrides is None and where == "collector":
            raise ValueError(f"collector.source is {kind!r} but collector.{sec}.{key} is not set ({example})")
        raise ValueError(f"{where}: source {kind!r} needs {sec}.{key}: set it in the meter's {sec} keys or in collector.{sec}.{key} ({example})")
    return MeterSource(kind, cfg)
