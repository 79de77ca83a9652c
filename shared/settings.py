"""Configuration: one YAML file plus ``FLOWWATCH_*`` environment overrides.

Nested keys use ``__`` in the environment: ``FLOWWATCH_MQTT__HOST=broker`` sets ``mqtt.host``.
The environment wins over the file. Every model refuses unknown keys, so a typo is an error.

There is no settings singleton: ``load_settings()`` is called in ``main()`` and the result is
passed down, so tests build their own. ``flowwatch config check`` validates a file.
"""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from shared.topics import DEFAULT_PREFIX

ENV_PREFIX = "FLOWWATCH_"
CONFIG_ENV = "FLOWWATCH_CONFIG"
PLACEHOLDER_SECRETS = {"", "changeme", "change-me", "password", "secret", "admin", "flowwatch", "token"}


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def _check_secret(value: SecretStr | None, name: str) -> SecretStr | None:
    if value is not None and value.get_secret_value().strip().lower() in PLACEHOLDER_SECRETS:
        raise ValueError(
            f"{name} is a placeholder; leave it unset so flowwatch generates one on first start, "
            "or set a real secret"
        )
    return value


def read_secret(value: SecretStr | None, file: Path | None) -> str | None:
    """A secret given directly, or read from a file (Docker secrets), or None."""
    if value is not None:
        return value.get_secret_value()
    if file is not None:
        try:
            return file.read_text().strip()
        except OSError as exc:
            raise RuntimeError(f"cannot read secret file {file}: {exc}") from exc
    return None


class MqttSettings(Section):
    host: str = Field(default="127.0.0.1", description="Broker host name or address.")
    port: int = Field(default=1883, ge=1, le=65535, description="Broker port (8883 for TLS).")
    username: str | None = Field(default=None, description="MQTT user; one per service in production.")
    password: SecretStr | None = Field(default=None, description="MQTT password (prefer password_file).")
    password_file: Path | None = Field(default=None, description="File holding the MQTT password.")
    tls: bool = Field(default=False, description="Connect with TLS.")
    ca_file: Path | None = Field(default=None, description="CA certificate for TLS; system CAs when unset.")
    keepalive_s: int = Field(default=30, ge=5, le=3600, description="MQTT keepalive in seconds.")
    topic_prefix: str = Field(default=DEFAULT_PREFIX, description="First topic levels of every topic.")
    client_id_prefix: str = Field(
        default="flowwatch", description="Client ids are '<prefix>-<service>'; fixed so sessions persist."
    )
    reconnect_min_s: float = Field(default=0.5, gt=0, description="First reconnect delay.")
    reconnect_max_s: float = Field(default=30.0, gt=0, description="Longest reconnect delay (backoff cap).")
    max_payload_bytes: int = Field(
        default=256 * 1024, ge=1024, description="Larger incoming payloads are dead-lettered unparsed."
    )

    _v_pw = field_validator("password")(lambda cls, v: _check_secret(v, "mqtt.password"))

    def secret(self) -> str | None:
        return read_secret(self.password, self.password_file)


class SqliteSettings(Section):
    path: Path = Field(default=Path("flowwatch.db"), description="Database file; relative paths are under data_dir.")
    busy_timeout_ms: int = Field(default=5000, ge=0, description="How long SQLite waits on a lock before retrying.")
    lock_retry_s: float = Field(
        default=600.0, ge=0, description="How long a write keeps retrying while another process holds the lock."
    )


class InfluxSettings(Section):
    url: str = Field(default="http://127.0.0.1:8086", description="InfluxDB base URL (1.x, 2.x or 3.x).")
    database: str = Field(default="flowwatch", description="Database (1.x) or bucket mapped by DBRP (2.x/3.x).")
    retention_policy: str | None = Field(default=None, description="Retention policy name; the default when unset.")
    token: SecretStr | None = Field(default=None, description="API token (2.x/3.x); sent as 'Token <token>'.")
    token_file: Path | None = Field(default=None, description="File holding the API token.")
    username: str | None = Field(default=None, description="User for 1.x authentication.")
    password: SecretStr | None = Field(default=None, description="Password for 1.x authentication.")
    create_database: bool = Field(default=True, description="CREATE DATABASE at start (1.x; ignored if refused).")
    batch_size: int = Field(default=50_000, ge=1, le=1_000_000, description="Points per /write request.")
    timeout_s: float = Field(default=30.0, gt=0, description="HTTP timeout per request.")
    retries: int = Field(default=8, ge=0, description="Retries with backoff on 5xx / timeouts before giving up.")
    apply_retention: bool = Field(
        default=True,
        description="At start, set the duration of the retention policy written to (retention_policy, else the database's "
        "default) to store.retention_days (1.x; 2.x/3.x keep the bucket's retention period). Turn off if the database "
        "holds other data.",
    )

    _v_tok = field_validator("token", "password")(lambda cls, v, info: _check_secret(v, f"store.influxdb.{info.field_name}"))

    def secret_token(self) -> str | None:
        return read_secret(self.token, self.token_file)


class StoreSettings(Section):
    backend: Literal["sqlite", "influxdb"] = Field(default="sqlite", description="Where data is stored.")
    retention_days: int = Field(default=365, ge=1, description="Data older than this is purged daily.")
    sqlite: SqliteSettings = Field(default_factory=SqliteSettings, description="SQLite adapter settings.")
    influxdb: InfluxSettings = Field(default_factory=InfluxSettings, description="InfluxDB adapter settings.")


class RangeLimits(Section):
    flow_rate_min: float = Field(default=0.0, description="Lowest physically valid flow rate (m³/h).")
    flow_rate_max: float = Field(default=2000.0, description="Highest physically valid flow rate (m³/h).")
    pressure_min: float = Field(default=0.0, description="Lowest physically valid pressure (bar).")
    pressure_max: float = Field(default=16.0, description="Highest physically valid pressure (bar).")

    @model_validator(mode="after")
    def _ordered(self) -> RangeLimits:
        if self.flow_rate_min >= self.flow_rate_max:
            raise ValueError("flow_rate_min must be below flow_rate_max")
        if self.pressure_min >= self.pressure_max:
            raise ValueError("pressure_min must be below pressure_max")
        return self


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
    flow_rate: FrameField = Field(default_factory=lambda: FrameField(index=0), description="Where the flow rate is and how it is scaled to m³/h.")
    pressure: FrameField = Field(default_factory=lambda: FrameField(index=1), description="Where the pressure is and how it is scaled to bar.")
    checksum: ChecksumSettings = Field(default_factory=ChecksumSettings, description="Optional checksum at the end of the frame.")
    terminator: str = Field(default="\n", min_length=1, description="End of a frame (line end); '\\r\\n' frames end with '\\n' too.")
    max_bytes: int = Field(default=512, ge=8, le=65536, description="Longer lines are rejected as frames (a garbled line that never ends).")

    @model_validator(mode="after")
    def _consistent(self) -> FrameFormat:
        import re

        if self.kind == "regex":
            if not self.regex:
                raise ValueError("frame.kind is 'regex' but frame.regex is not set; give a pattern with named groups")
            try:
                pattern = re.compile(self.regex)
            except re.error as exc:
                raise ValueError(f"frame.regex does not compile: {exc}") from None
            for name in ("flow_rate", "pressure"):
                group = getattr(self, name).group
                if not group:
                    raise ValueError(f"frame.{name}.group is required with a regex frame")
                if group not in pattern.groupindex:
                    raise ValueError(f"frame.{name}.group {group!r} is not a named group of frame.regex")
        else:
            for name in ("flow_rate", "pressure"):
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

    name: Literal["flow_rate", "pressure"] = Field(description="Which signal this register holds.")
    address: int = Field(ge=0, le=65535, description="Zero-based register address (protocol address, not the 3xxxx/4xxxx label).")
    function: Literal[3, 4] = Field(default=3, description="3 = read holding registers, 4 = read input registers.")
    data_type: Literal["int16", "uint16", "int32", "uint32", "float32"] = Field(default="float32", description="Register data type.")
    byte_order: Literal["big", "little"] = Field(default="big", description="Byte order inside each 16-bit register (big is the Modbus standard).")
    word_order: Literal["big", "little"] = Field(default="big", description="Order of the two registers of a 32-bit value (big = high word first, 'ABCD'; little = 'CDAB').")
    scale: float = Field(default=1.0, description="Canonical value = raw * scale + offset (m³/h or bar).")
    offset: float = Field(default=0.0, description="Added after scaling.")


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
        description="The register map: one entry for flow_rate and one for pressure (see docs/meters.md).",
    )

    @field_validator("registers")
    @classmethod
    def _both_signals(cls, v: list[RegisterSpec]) -> list[RegisterSpec]:
        names = [r.name for r in v]
        for name in ("flow_rate", "pressure"):
            if names.count(name) != 1:
                raise ValueError(f"the register map needs exactly one entry named {name!r} (has {names.count(name)})")
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
    source: Literal["simulator", "serial", "modbus-rtu", "modbus-tcp", "replay"] = Field(
        default="simulator", description="Where readings come from; the simulator when no meter is attached."
    )
    interval_s: int = Field(default=60, ge=1, le=3600, description="Seconds between readings (event time).")
    speed: float = Field(
        default=1.0, ge=0, description="Event time runs this many times faster than wall time (simulator, replay); 0 = as fast as possible."
    )
    spool_max_rows: int = Field(default=1_000_000, ge=100, description="Disk spool bound (readings) while the broker is away; the oldest are dropped beyond it, counted and logged.")
    spool_path: Path = Field(default=Path("spool.db"), description="Store-and-forward spool (SQLite); relative paths are under data_dir.")
    reopen_min_s: float = Field(default=1.0, gt=0, description="First delay before reopening a meter port that failed.")
    reopen_max_s: float = Field(default=60.0, gt=0, description="Longest delay between reopen attempts (backoff cap).")
    serial: SerialSettings = Field(default_factory=SerialSettings, description="Line-protocol meter on a serial port (source: serial).")
    modbus: ModbusSettings = Field(default_factory=ModbusSettings, description="Modbus meter (source: modbus-rtu or modbus-tcp).")
    simulator: SimulatorSettings = Field(default_factory=SimulatorSettings, description="Simulated meter (source: simulator).")
    replay: ReplaySettings = Field(default_factory=ReplaySettings, description="CSV replay (source: replay).")

    @model_validator(mode="after")
    def _source_needs(self) -> CollectorSettings:
        if self.source == "serial" and not self.serial.port:
            raise ValueError("collector.source is 'serial' but collector.serial.port is not set (e.g. /dev/ttyUSB0)")
        if self.source == "modbus-rtu" and not self.modbus.port:
            raise ValueError("collector.source is 'modbus-rtu' but collector.modbus.port is not set (e.g. /dev/ttyUSB0)")
        if self.source == "modbus-tcp" and not self.modbus.host:
            raise ValueError("collector.source is 'modbus-tcp' but collector.modbus.host is not set (the meter's IP address)")
        if self.source == "replay" and self.replay.file is None:
            raise ValueError("collector.source is 'replay' but collector.replay.file is not set (a timestamp,flow_rate,pressure CSV)")
        if self.reopen_min_s > self.reopen_max_s:
            raise ValueError("collector.reopen_min_s must not exceed collector.reopen_max_s")
        return self


class DetectorSettings(Section):
    """Rule parameters of the detector (services/detector). Durations are in event time."""

    interval_s: int | None = Field(
        default=None, ge=1, le=3600, description="Expected seconds between readings; collector.interval_s when unset."
    )
    # alert hygiene
    min_duration_minutes: float = Field(
        default=90, ge=0, description="A reading outside its threshold band must stay outside this long before a 'threshold' alert opens."
    )
    clear_after_minutes: float = Field(
        default=3, ge=0, description="An open alert closes once its condition has been clear this long."
    )
    hysteresis_pct: float = Field(
        default=5.0, ge=0, le=50, description="An open threshold alert clears only this far (% of the band width) inside the band."
    )
    # sensor faults
    flatline_minutes: float = Field(default=60, gt=0, description="A signal that does not change for this long is a flat-line fault.")
    flatline_tolerance: float = Field(default=1e-6, ge=0, description="Changes up to this size count as 'not changing' (flat-line).")
    spike_window: int = Field(default=31, ge=5, le=1441, description="Readings in the rolling median/MAD window of the spike rule.")
    spike_z: float = Field(default=8.0, gt=0, description="Robust z-score (|x - median| / (1.4826 MAD)) above which a reading is a spike.")
    spike_min_abs: dict[str, float] = Field(
        default_factory=lambda: {"flow_rate": 1.0, "pressure": 0.1},
        description="Per signal: a spike must also differ from the rolling median by at least this much (units of the signal).",
    )
    gap_factor: float = Field(default=2.5, gt=1, description="A time step longer than this many intervals is a gap in the timestamps.")
    silent_intervals: float = Field(
        default=5, gt=0, description="A meter is silent after this many intervals without a reading (wall clock; the only wall-clock rule)."
    )
    silent_check_s: float = Field(default=5.0, gt=0, description="How often (wall clock) the silent-meter check runs.")
    # thresholds
    recalibrate_period: Literal["week", "month", "quarter", "year"] = Field(
        default="quarter", description="Recalibrate the learned bands when event time crosses this boundary (and on demand)."
    )
    threshold_days: float = Field(default=28, gt=0, description="Learn the bands from this many days of recent readings.")
    threshold_min_days: float = Field(
        default=14, gt=0,
        description="Below this many days of data the static limits apply (retried daily until learned); two weeks, so each weekend hour band sees four days.",
    )
    threshold_quantiles: tuple[float, float] = Field(
        default=(0.005, 0.995), description="Lower and upper quantile of each hour-of-day / day-type band."
    )
    threshold_margin_pct: float = Field(
        default=50.0, ge=0, description="Widen each learned band by this % of its quantile spread on both sides."
    )
    threshold_min_spread: dict[str, float] = Field(
        default_factory=lambda: {"flow_rate": 1.0, "pressure": 0.2},
        description="Per signal: the smallest band half-margin (units of the signal), so a very steady signal is not over-alerted.",
    )
    static_limits: dict[str, tuple[float, float]] = Field(
        default_factory=lambda: {"flow_rate": (0.0, 1500.0), "pressure": (1.0, 10.0)},
        description="Per signal: lower and upper limit used until enough data exists to learn bands.",
    )
    pressure_loss_bar: float = Field(default=0.7, ge=0, description="Pressure below this (bar) is a critical pressure loss.")
    # minimum night flow
    night_start: str = Field(default="02:00", pattern=r"^\d{2}:\d{2}$", description="Night window start, local time HH:MM.")
    night_end: str = Field(
        default="04:00", pattern=r"^\d{2}:\d{2}$", description="Night window end, local HH:MM; before the start means it crosses midnight."
    )
    night_min_coverage: float = Field(
        default=0.5, gt=0, le=1, description="Fraction of the night window's readings needed to record its minimum."
    )
    night_baseline_nights: int = Field(default=28, ge=3, le=365, description="Baseline = median of up to this many previous nights.")
    night_by_daytype: bool = Field(
        default=True,
        description="Judge weekday and weekend nights against the median of earlier nights of the same day type (sigma pooled over both).",
    )
    night_min_baseline_nights: int = Field(default=7, ge=1, description="Nights needed before the leak rule judges a night.")
    night_sigma_min_pct: float = Field(
        default=3.0, gt=0, description="Smallest night-to-night spread (sigma) as % of the baseline, so a very steady meter is not over-alerted."
    )
    night_cusum_slack: float = Field(
        default=0.75, ge=0, description="CUSUM slack (sigmas): the excess per night that counts towards a leak is z minus this."
    )
    night_cusum_limit: float = Field(
        default=4.0, gt=0, description="'night_flow' (leak suspected) opens when the CUSUM of night excesses passes this many sigmas."
    )
    night_clear_z: float = Field(
        default=1.5, ge=0, description="An open 'night_flow' closes after two nights in a row at most this many sigmas above the baseline (repaired).",
    )
    night_single_z: float = Field(
        default=3.5, gt=0, description="One night this many sigmas above the baseline raises 'night_flow' at once (a medium or large leak)."
    )
    # burst
    burst_baseline_minutes: float = Field(
        default=5, gt=0, description="Burst baseline = median of this many minutes before the level (the median of the last 3 readings); short, so a demand ramp is not a step."
    )
    burst_window_minutes: float = Field(default=5, ge=0, description="The flow step and the pressure step must come within this many minutes.")
    burst_flow_jump_pct: float = Field(
        default=13.0, gt=0, description="A flow step: the level rises over the baseline by this % of the mean flow of the last day..."
    )
    burst_flow_jump_abs: float = Field(default=1.0, ge=0, description="...and by at least this much (m³/h).")
    burst_pressure_drop: float = Field(
        default=0.05, gt=0, description="A pressure step: the level falls below the baseline by this much (bar); the meter's noise is ~0.01."
    )
    # forecast deviation
    forecast_tolerance_pct: float = Field(default=30.0, gt=0, description="Readings further than this % from the forecast deviate...")
    forecast_tolerance_abs: dict[str, float] = Field(
        default_factory=lambda: {"flow_rate": 5.0, "pressure": 0.5},
        description="...and further than this much (units of the signal).",
    )
    forecast_sustain_minutes: float = Field(default=30, ge=0, description="Deviation must last this long to raise an alert.")
    # service
    backfill_hours: float = Field(
        default=26, gt=0, description="At start, replay this many hours of stored readings through the rules (covers the night window)."
    )
    batch_max: int = Field(default=500, ge=1, le=10_000, description="Most readings stored in one write (acks wait for the write).")

    @field_validator("threshold_quantiles")
    @classmethod
    def _quantiles(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not 0 <= v[0] < v[1] <= 1:
            raise ValueError("threshold_quantiles must be (low, high) with 0 <= low < high <= 1")
        return v

    @field_validator("static_limits")
    @classmethod
    def _static(cls, v: dict[str, tuple[float, float]]) -> dict[str, tuple[float, float]]:
        for sig, (lo, hi) in v.items():
            if sig not in ("flow_rate", "pressure"):
                raise ValueError(f"unknown signal {sig!r} in static_limits; use flow_rate or pressure")
            if lo >= hi:
                raise ValueError(f"static_limits.{sig}: lower must be below upper")
        return v

    @field_validator("spike_min_abs", "threshold_min_spread", "forecast_tolerance_abs")
    @classmethod
    def _per_signal(cls, v: dict[str, float]) -> dict[str, float]:
        for sig in v:
            if sig not in ("flow_rate", "pressure"):
                raise ValueError(f"unknown signal {sig!r}; use flow_rate or pressure")
        return v

    @field_validator("night_start", "night_end")
    @classmethod
    def _hhmm(cls, v: str) -> str:
        h, m = (int(x) for x in v.split(":"))
        if not (0 <= h <= 23 and 0 <= m <= 59):
            raise ValueError(f"{v!r} is not a time of day HH:MM")
        return v

    @model_validator(mode="after")
    def _window(self) -> DetectorSettings:
        if self.night_start == self.night_end:
            raise ValueError("night_start and night_end must differ")
        return self


class ForecasterSettings(Section):
    step_minutes: int = Field(default=10, ge=1, le=1440, description="Forecast resolution in minutes.")
    horizon_minutes: int = Field(default=60, ge=1, le=7 * 24 * 60, description="How far ahead to forecast (up to 7 days).")
    max_gap_minutes: int = Field(
        default=60, ge=0, le=24 * 60,
        description="Gaps up to this long are filled (linear; carried forward at the end); longer ones make "
        "the model fall back to seasonal naive. The trainer cleans its data the same way.",
    )
    threads: int = Field(default=1, ge=1, le=64, description="CPU threads of the LiteRT interpreter.")

    @model_validator(mode="after")
    def _divides(self) -> ForecasterSettings:
        if self.horizon_minutes % self.step_minutes:
            raise ValueError("horizon_minutes must be a multiple of step_minutes")
        return self


class ExporterSettings(Section):
    out_dir: Path = Field(default=Path("exports"), description="Folder of alert.txt / server.txt; relative to data_dir.")
    archive_days: int = Field(default=90, ge=1, description="Daily archives older than this are removed.")
    archive: bool = Field(default=True, description="Write the daily archive (previous day's readings, anomalies, forecasts as CSV).")
    archive_dir: Path = Field(
        default=Path("exports/archive"), description="Folder of the date-partitioned daily archive; relative to data_dir."
    )
    archive_lag_minutes: int = Field(
        default=5, ge=0, le=720,
        description="Archive day D once event time reaches D+1 00:00 local plus this, so its last minutes are stored.",
    )
    archive_catchup_days: int = Field(
        default=7, ge=1, le=366,
        description="Days missed (outage, restart, import) archived at most per reading; the rest on the next readings.",
    )
    mirror: bool = Field(default=True, description="Also publish each file's content retained on .../export/alert and .../export/server.")
    backfill_anomaly_days: int = Field(
        default=30, ge=1, description="At start, anomalies that started this many days before the last reading are read back from the store."
    )


class TrainerSettings(Section):
    first_training_days: float = Field(default=14, gt=0, description="Train first once this many days of data exist.")
    period: Literal["month", "quarter", "year"] = Field(default="year", description="Retrain when event time crosses this boundary.")
    max_days: int = Field(default=365, ge=1, description="Train on at most this many days of data.")
    threads: int = Field(default=1, ge=1, description="CPU threads TensorFlow may use.")
    nice: int = Field(default=10, ge=0, le=19, description="CPU priority decrease while training.")
    epochs: int = Field(default=20, ge=1, description="Most epochs (early stopping may end sooner).")
    models_dir: Path = Field(
        default=Path("models"), description="Model versions (models/<signal>/<version>/); relative to data_dir. The forecaster reads them."
    )
    window_steps: int = Field(default=36, ge=2, le=1008, description="Past bins (at forecaster.step_minutes) the model sees.")
    max_output_steps: int = Field(
        default=36, ge=1, le=1008,
        description="Most steps the model outputs at once; longer forecaster horizons are rolled forward.",
    )
    units: int = Field(default=32, ge=1, le=512, description="LSTM units.")
    batch_size: int = Field(default=256, ge=1, description="Largest training batch (smaller on little data, for >= ~64 updates per epoch); the exported model runs batch 1.")
    patience: int = Field(default=3, ge=1, description="Early stopping: epochs without validation improvement.")
    learning_rate: float = Field(default=0.003, gt=0, description="Adam learning rate.")
    validation_fraction: float = Field(
        default=0.15, gt=0, lt=0.5, description="Last part of the training period used for early stopping (time-ordered)."
    )
    holdout_days: float = Field(
        default=7, gt=0, description="Last days held out for the promotion test (at most 30 % of the data)."
    )
    min_improvement: float = Field(
        default=0.0, ge=0, lt=1,
        description="Relative held-out WAPE improvement a new model needs over seasonal naive and the current model.",
    )
    parity_tolerance: float = Field(
        default=1e-3, gt=0, description="Largest allowed |LiteRT - Keras| output difference (scaled units) on held-out windows."
    )
    seed: int = Field(default=42, description="Random seed (numpy, Python, TensorFlow) for reproducible training.")


class Settings(BaseSettings):
    """Top-level flowwatch configuration."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_nested_delimiter="__", extra="forbid", validate_default=True
    )

    site: str = Field(default="site1", pattern=r"^[A-Za-z0-9_.-]+$", description="Site id of this installation.")
    meter: str = Field(default="meter1", pattern=r"^[A-Za-z0-9_.-]+$", description="Meter id of the attached meter.")
    timezone: str = Field(default="Asia/Seoul", description="Local zone for day, hour and night-window boundaries.")
    data_dir: Path = Field(default=Path("var"), description="Folder for the database, spool, models and exports.")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(default="INFO", description="Log level.")
    limits: RangeLimits = Field(default_factory=RangeLimits, description="Physical validity limits.")
    mqtt: MqttSettings = Field(default_factory=MqttSettings, description="Broker connection.")
    store: StoreSettings = Field(default_factory=StoreSettings, description="Storage backend.")
    collector: CollectorSettings = Field(default_factory=CollectorSettings, description="Collector service.")
    detector: DetectorSettings = Field(default_factory=DetectorSettings, description="Detector service.")
    forecaster: ForecasterSettings = Field(default_factory=ForecasterSettings, description="Forecaster service.")
    exporter: ExporterSettings = Field(default_factory=ExporterSettings, description="Exporter service.")
    trainer: TrainerSettings = Field(default_factory=TrainerSettings, description="Trainer service.")

    @field_validator("timezone")
    @classmethod
    def _zone(cls, v: str) -> str:
        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {v!r}; use an IANA name such as 'Asia/Seoul' or 'UTC'") from None
        return v

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Environment beats the config file (passed as init kwargs).
        return env_settings, init_settings, file_secret_settings

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    def path(self, p: Path) -> Path:
        """A configured path, resolved under data_dir when relative."""
        return p if p.is_absolute() else self.data_dir / p

    def masked(self) -> dict[str, Any]:
        """The effective config as plain data, secrets shown as '**********'."""
        return self.model_dump(mode="json")  # SecretStr dumps masked in json mode


class ConfigFileError(ValueError):
    pass


def read_config_file(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigFileError(f"cannot read config file {path}: {exc.strerror or exc}") from exc
    try:
        data = yaml.safe_load(text) if text.strip() else {}
    except yaml.YAMLError as exc:
        raise ConfigFileError(f"{path} is not valid YAML: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigFileError(f"{path}: the top level must be a mapping of keys, not {type(data).__name__}")
    bad = [k for k in data if not isinstance(k, str)]
    if bad:  # e.g. '?' or '1: x' in YAML: a key that is empty or a number
        raise ConfigFileError(f"{path}: every top-level key must be a setting name (text), not {bad[0]!r}; see docs/configuration.md")
    return data


def load_settings(path: str | Path | None = None, **overrides: Any) -> Settings:
    """Build settings from a YAML file (or $FLOWWATCH_CONFIG) and the environment.

    Raises ``pydantic.ValidationError`` or ``ConfigFileError``.
    """
    if path is None and os.environ.get(CONFIG_ENV):
        path = os.environ[CONFIG_ENV]
    data = read_config_file(Path(path)) if path else {}
    data.update(overrides)
    return Settings(**data)


def format_errors(exc: Exception) -> list[str]:
    """One line per error: ``key.path: reason``."""
    from pydantic import ValidationError

    if isinstance(exc, ValidationError):
        lines = []
        for err in exc.errors():
            loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
            msg = err["msg"]
            if err["type"] == "extra_forbidden":
                msg = "unknown key (check the spelling; see docs/configuration.md)"
            lines.append(f"{loc}: {msg}")
        return lines
    return [str(exc)]
