"""The message contract: one pydantic model per MQTT payload kind.

Every payload carries ``schema_version``; timestamps are timezone-aware and normalised to UTC;
unknown fields are refused (``extra="forbid"``) so a typo on the wire is an error, not silence.
NaN and infinity are refused too: JSON has no NaN, and a missing value is ``null``.

Units: flow rate in m³/h, pressure in bar.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

from shared.topics import LEVEL_MAX_LENGTH, LEVEL_PATTERN

SCHEMA_VERSION = 1

SIGNALS = ("flow_rate", "pressure")
MAX_EXTRA = 16  # extra values per reading (Reading.extra): a register map's totalizer, battery, temperature, ...
Signal = Literal["flow_rate", "pressure"]

# A site or meter id is one MQTT topic level: no wildcards, no separators, no spaces. The settings'
# site / meter use this same type (shared.settings.root), so config and messages cannot disagree.
Ident = Annotated[str, Field(min_length=1, max_length=LEVEL_MAX_LENGTH, pattern=LEVEL_PATTERN)]


def _to_utc(value: datetime) -> datetime:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError("timestamp must carry a time zone (ISO 8601 with Z or an offset)")
    return value.astimezone(UTC)


UtcDatetime = Annotated[datetime, AfterValidator(_to_utc)]

# Quality flags a reading can carry. Out-of-range values are flagged, never silently dropped.
QualityFlag = Literal[
    "flow_rate_missing",
    "pressure_missing",
    "flow_rate_out_of_range",
    "pressure_out_of_range",
    "checksum_failed",
    "backfilled",
    "simulated",
]


class Message(BaseModel):
    """Base of every payload."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False, defer_build=True)

    schema_version: Literal[1] = SCHEMA_VERSION

    def to_json(self) -> bytes:
        return self.model_dump_json().encode()


class MeterMessage(Message):
    site: Ident
    meter: Ident


class Reading(MeterMessage):
    """One reading of the meter, timestamped by the source clock aligned to the interval."""

    ts: UtcDatetime = Field(description="Event time of the reading (UTC).")
    seq: int = Field(ge=0, description="Sequence number assigned by the collector.")
    flow_rate: float | None = Field(default=None, description="Flow rate in m³/h; null when missing.")
    pressure: float | None = Field(default=None, description="Pressure in bar; null when missing.")
    quality: tuple[QualityFlag, ...] = Field(default=(), description="Quality flags.")
    source: str = Field(default="unknown", max_length=32, description="serial, modbus, simulator, replay, import.")
    extra: dict[Ident, float] | None = Field(
        default=None, max_length=MAX_EXTRA,
        description="The meter's extra values by name (totalizer, battery, temperature, status word: its register "
        "map's other registers), finite numbers; absent (not sent) when the meter has none.",
    )

    @field_validator("quality")
    @classmethod
    def _sorted_unique(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(sorted(set(v)))

    @field_validator("extra")
    @classmethod
    def _extra_names(cls, v: dict[str, float] | None) -> dict[str, float] | None:
        if v is not None:
            clash = [k for k in v if k in SIGNALS]
            if clash:
                raise ValueError(f"extra value {clash[0]!r} is a signal; it belongs in its own field")
        return v or None

    def to_json(self) -> bytes:
        # Without extra values the payload is what it always was: readers of schema version 1 that
        # refuse unknown fields still take it.
        return (self.model_dump_json(exclude=_NO_EXTRA) if self.extra is None else self.model_dump_json()).encode()


_NO_EXTRA = {"extra"}


AnomalyKind = Literal[
    "invalid",  # NaN / missing / negative flow / out of physical range
    "flatline",
    "spike",
    "gap",
    "silent",  # meter silent (wall clock)
    "threshold",
    "night_flow",  # minimum night flow above baseline: leak suspected
    "burst",
    "pressure_loss",
    "forecast_deviation",
    "pressure_drop",  # pressure fell against its own recent level without a flow step: supply side
]
Severity = Literal["info", "warning", "critical"]
SEVERITY_RANK: dict[str, int] = {"info": 0, "warning": 1, "critical": 2}  # the one order of severities


class Anomaly(MeterMessage):
    """An alert event. Identity: (site, meter, kind, signal, start); an update overwrites itself."""

    kind: AnomalyKind
    signal: Literal["flow_rate", "pressure", "both"]
    severity: Severity
    state: Literal["open", "closed"]
    start: UtcDatetime
    end: UtcDatetime | None = None
    ts: UtcDatetime = Field(description="Event time of this update (the reading that caused it).")
    value: float | None = None
    threshold: float | None = None
    message: str = Field(default="", max_length=500)

    @model_validator(mode="after")
    def _end_consistent(self) -> Anomaly:
        if self.state == "closed" and self.end is None:
            raise ValueError("a closed anomaly needs an end")
        if self.end is not None and self.end < self.start:
            raise ValueError("end is before start")
        return self


class Forecast(MeterMessage):
    """A forecast for one signal issued at ``issued_at``: values[i] is for issued_at + (i+1)*step."""

    signal: Signal
    issued_at: UtcDatetime
    step_minutes: int = Field(gt=0, le=1440)
    values: tuple[float, ...] = Field(min_length=1, max_length=7 * 24 * 60)
    model: str = Field(min_length=1, max_length=64, description="Model version, or 'seasonal-naive'.")

    def targets(self) -> list[datetime]:
        from datetime import timedelta

        return [self.issued_at + timedelta(minutes=self.step_minutes * (i + 1)) for i in range(len(self.values))]


class Band(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False, defer_build=True)

    hour: int = Field(ge=0, le=23)
    daytype: Literal["weekday", "weekend"]
    lower: float
    upper: float


class Thresholds(MeterMessage):
    """Anomaly thresholds for one signal, per hour of day and day type. Published retained."""

    signal: Signal
    computed_at: UtcDatetime
    method: Literal["static", "learned"]
    bands: tuple[Band, ...] = Field(max_length=48)
    sample_days: float = Field(default=0, ge=0)

    def band_for(self, hour: int, weekend: bool) -> Band | None:
        daytype = "weekend" if weekend else "weekday"
        for b in self.bands:
            if b.hour == hour and b.daytype == daytype:
                return b
        return None


class ModelInfo(MeterMessage):
    """A trained model version. Published retained when a version is promoted."""

    signal: Signal
    version: Ident  # also a folder name: models/<signal>/<version>/
    created_at: UtcDatetime
    promoted: bool
    reason: str = Field(default="", max_length=500)
    metrics: dict[str, float] = Field(default_factory=dict)


# What can keep an online service from working (ServiceStatus.failing): the broker unreachable (its
# bus not connected), the store or disk failing (writes retried), the meter silent (collector).
FailureKind = Literal["broker", "store", "meter"]


class Failing(BaseModel):
    """A failure state of a service and since when it holds (wall clock). One that lasts longer than
    ``limit_s`` makes the service unhealthy (``flowwatch health``, shared/health.py)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False, defer_build=True)

    since: UtcDatetime = Field(description="Wall-clock time it began (for a silent meter: the last reading, or the start).")
    limit_s: float = Field(gt=0, description="How long it may last before the service is unhealthy (from the settings).")
    detail: str = Field(default="", max_length=300, description="What fails, for the operator.")


class ServiceStatus(Message):
    """Retained per service; the last will publishes state='offline'. The same, written to the
    heartbeat file every few seconds, is what the health check reads."""

    service: Ident
    state: Literal["online", "offline"]
    ts: UtcDatetime = Field(description="Wall-clock time of this status.")
    started_at: UtcDatetime | None = None
    counters: dict[str, float] = Field(default_factory=dict)
    last_event: UtcDatetime | None = Field(default=None, description="Event time of the last item handled.")
    detail: str = Field(default="", max_length=500)
    failing: dict[FailureKind, Failing] = Field(
        default_factory=dict,
        description="Failure states that hold now, each with since when and how long it may last: broker (not "
        "connected), store (store or disk writes failing and retried), meter (collector: no reading from its meter).",
    )


class ExportRecord(MeterMessage):
    """The content of an export file, mirrored on MQTT. ``content`` is the file, byte for byte."""

    file: Literal["alert", "server", "forecast"]
    ts: UtcDatetime = Field(description="Event time the file was composed for.")
    protocol_version: int = Field(ge=1)
    content: str = Field(max_length=1_000_000)


class Stored(MeterMessage):
    """The detector's receipt to the collector: these readings of the meter are in the store (or were
    dead-lettered there). The collector removes them from its spool only then (end-to-end delivery)."""

    ranges: tuple[tuple[int, int, UtcDatetime, UtcDatetime], ...] = Field(
        min_length=1, max_length=10_000, description="(first seq, last seq, first ts, last ts) of each run of consecutive readings.")


def stored_ranges(readings: list) -> list[tuple[int, int, datetime, datetime]]:
    """Runs of consecutive sequence numbers (sorted by seq) as ``Stored.ranges``."""
    out: list[list] = []
    for r in sorted(readings, key=lambda r: r.seq):
        if out and r.seq == out[-1][1] + 1 and r.ts >= out[-1][3]:
            out[-1][1], out[-1][3] = r.seq, r.ts
        else:
            out.append([r.seq, r.seq, r.ts, r.ts])
    return [tuple(x) for x in out]


class Command(MeterMessage):
    """An on-demand request to a service (``flowwatch train``, ``flowwatch thresholds recalibrate``)."""

    action: Literal["train", "recalibrate"]
    requested_at: UtcDatetime
    signal: Signal | None = None


class DeadLetter(Message):
    """A payload that could not be handled, with the reason. Never itself validated on receipt."""

    service: str = Field(max_length=64)
    topic: str = Field(max_length=1024)
    reason: str = Field(max_length=2000)
    ts: UtcDatetime
    payload_hex: str = Field(default="", description="The raw payload (hex), cut at 64 KiB.")
    payload_truncated: bool = False


MAX_DEADLETTER_PAYLOAD = 64 * 1024


def dead_letter(service: str, topic: str, reason: str, payload: bytes) -> DeadLetter:
    cut = payload[:MAX_DEADLETTER_PAYLOAD]
    return DeadLetter(
        service=service[:64],
        topic=topic[:1024],
        reason=reason[:2000],
        ts=datetime.now(UTC),
        payload_hex=cut.hex(),
        payload_truncated=len(payload) > len(cut),
    )


def finite_or_none(x: Any) -> float | None:
    """A float, or None for missing / NaN / infinite / non-numeric input."""
    if x is None:
        return None
    try:
        f = float(x)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def alert_id(site: str, meter: str, kind: str, signal: str, start: datetime) -> str:
    """The short, stable id of an alert (an anomaly's identity): what ``flowwatch alerts ack`` takes."""
    import hashlib

    key = f"{site}/{meter}/{kind}/{signal}/{int(start.timestamp())}"
    return hashlib.sha256(key.encode()).hexdigest()[:10]


class AlertAction(Message):
    """An acknowledgement or a silence (``flowwatch alerts``, or the device on the notifier's command
    topic). Stored (``alert_actions``) so the notifier, Grafana and alert.txt see it.

    - ``ack``: ``alert_id`` is acknowledged: it is not escalated any more (its close is still sent);
    - ``silence``: nothing is sent for ``site``/``meter`` (and ``kind``, when given) until ``until``;
    - ``unsilence``: ends the silences of that ``site``/``meter``/``kind`` now.
    """

    id: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$", description="Unique id of this action (a redelivery is one action).")
    action: Literal["ack", "silence", "unsilence"]
    ts: UtcDatetime = Field(description="Wall-clock time of the action.")
    alert_id: str | None = Field(default=None, max_length=64, description="ack: the alert acknowledged.")
    site: Ident | None = None
    meter: Ident | None = Field(default=None, description="silence: the meter silenced.")
    kind: AnomalyKind | None = Field(default=None, description="silence: only this kind (none: every kind).")
    until: UtcDatetime | None = Field(default=None, description="silence: when it ends.")
    by: str = Field(default="", max_length=64, description="Who did it.")
    note: str = Field(default="", max_length=300)

    @model_validator(mode="after")
    def _complete(self) -> AlertAction:
        if self.action == "ack" and not self.alert_id:
            raise ValueError("an ack needs alert_id")
        if self.action in ("silence", "unsilence") and (self.site is None or (self.meter is None and self.kind is None)):
            raise ValueError(f"a {self.action} needs site and a meter or a kind")
        if self.action == "silence" and self.until is None:
            raise ValueError("a silence needs until")
        return self


class AlertState(Message):
    """The acknowledgements and silences in force, published retained by the notifier whenever they
    change; the exporter shows them in alert.txt."""

    ts: UtcDatetime = Field(description="Wall-clock time of this state.")
    acked: tuple[str, ...] = Field(default=(), max_length=5000, description="Ids of the acknowledged alerts (newest kept).")
    silences: tuple[AlertAction, ...] = Field(default=(), max_length=1000, description="Silences in force now.")
