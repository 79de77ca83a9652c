"""What the exporter remembers per meter, in event time (pure: no I/O, no clock).

A :class:`MeterState` holds the bounded recent past the three files need: the readings of the open
and the last closed 10-minute window, the anomalies that are open or closed recently, the
forecast points targeted at recent and future times, and every step of the latest forecast. It is fed by MQTT messages and, at start, by
the same items read back from the store, so a restart composes the same files.

Window semantics (docs/protocol.md): a reading whose timestamp crosses a 10-minute boundary ``b``
(previous reading < b <= this reading) closes the window ``[b - 10 min, b)``; ``server.txt`` is
then composed for that window. A meter read less often than every 10 minutes (or at an interval
that does not divide 10 minutes) has hourly windows with a row per interval (:func:`protocol.server_layout`). The row on the (local) hour carries the forecast value *targeted at
that hour* (from the latest forecast issued before it), so every column of a row describes the
same instant and the value was known long before the window closed (no race with the forecaster,
which issues its next forecast on the very reading that crosses the hour).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from services.exporter import protocol
from shared.eventtime import floor
from shared.messages import AlertState, Anomaly, Forecast, Reading

KEEP_CLOSED = timedelta(hours=1)
KEEP_FORECAST_PAST = timedelta(hours=1)

AnomalyKey = tuple[str, str, datetime]  # (kind, signal, start): the anomaly's identity


def minute_of(ts: datetime) -> datetime:
    """The minute a reading belongs to (UTC; minutes are the same in every zone we support)."""
    return ts.astimezone(UTC).replace(second=0, microsecond=0)


def row_of(ts: datetime, row_minutes: int, tz: ZoneInfo) -> datetime:
    """The start (UTC) of the server-file row ``ts`` belongs to: local time floored to ``row_minutes``."""
    if row_minutes == 1:
        return minute_of(ts)
    local = ts.astimezone(tz)
    return local.replace(minute=local.minute - local.minute % row_minutes, second=0, microsecond=0).astimezone(UTC)


@dataclass
class MeterState:
    site: str
    meter: str
    tz: ZoneInfo
    readings: dict[datetime, tuple[float | None, float | None]] = field(default_factory=dict)
    reading_ts: dict[datetime, datetime] = field(default_factory=dict)
    anomalies: dict[AnomalyKey, Anomaly] = field(default_factory=dict)
    # (signal, target time) -> (issued_at, value): the latest-issued forecast value for that target
    predictions: dict[tuple[str, datetime], tuple[datetime, float]] = field(default_factory=dict)
    # (signal, issued_at) -> {target: value}: every step of the latest forecast (forecast.txt)
    issued: dict[tuple[str, datetime], dict[datetime, float]] = field(default_factory=dict)
    hold: timedelta = timedelta(0)  # how long a one-shot event stays in alert.txt (exporter.event_hold_minutes)
    interval_s: int = 60  # the meter's reading interval: the server file's rows follow it

    def __post_init__(self) -> None:
        minutes, self.row_minutes = protocol.server_layout(self.interval_s)
        self.window = timedelta(minutes=minutes)
        self.period = "10min" if minutes == protocol.SERVER_WINDOW_MINUTES else "hour"  # the event-time boundary that closes one
    last_ts: datetime | None = None  # latest reading time seen
    last_event: datetime | None = None  # latest event time seen (readings or anomalies)

    # --- feeding ------------------------------------------------------------------------------
    def add_reading(self, r: Reading) -> None:
        """Remember a reading (a redelivery overwrites itself; the later timestamp in a minute wins)."""
        self.put_reading(r.ts, r.flow_rate, r.pressure)

    def put_reading(self, ts: datetime, flow_rate: float | None, pressure: float | None) -> None:
        m = row_of(ts, self.row_minutes, self.tz)
        prev = self.reading_ts.get(m)
        if prev is None or ts >= prev:
            self.readings[m] = (flow_rate, pressure)
            self.reading_ts[m] = ts
        if self.last_ts is None or ts > self.last_ts:
            self.last_ts = ts
        self._event(ts)
        self._prune()

    def add_anomaly(self, a: Anomaly) -> None:
        """Remember an anomaly update; the latest update (by ``ts``) of an identity wins."""
        key = (a.kind, a.signal, a.start)
        cur = self.anomalies.get(key)
        if cur is None or a.ts >= cur.ts:
            self.anomalies[key] = a
        self._event(a.ts)

    def add_forecast(self, f: Forecast) -> None:
        for target, value in zip(f.targets(), f.values, strict=True):
            self.add_prediction(f.signal, target, f.issued_at, value)

    def add_prediction(self, signal: str, target: datetime, issued_at: datetime, value: float) -> None:
        key = (signal, target.astimezone(UTC))
        cur = self.predictions.get(key)
        if cur is None or issued_at >= cur[0]:
            self.predictions[key] = (issued_at, float(value))
        issued_at = issued_at.astimezone(UTC)
        latest = max((t for _, t in self.issued), default=None)
        if latest is not None and issued_at < latest:
            return  # an older forecast (a redelivery): forecast.txt shows the latest only
        if latest is not None and issued_at > latest:
            self.issued.clear()
        self.issued.setdefault((signal, issued_at), {})[target.astimezone(UTC)] = float(value)

    def _event(self, ts: datetime) -> None:
        if self.last_event is None or ts > self.last_event:
            self.last_event = ts

    def _prune(self) -> None:
        if self.last_ts is None:
            return
        horizon = floor(self.last_ts, self.period, self.tz) - 3 * self.window  # the open window, the last closed one, slack
        for m in [m for m in self.readings if m < horizon]:
            del self.readings[m]
            self.reading_ts.pop(m, None)
        old = self.last_ts - KEEP_CLOSED - self.window  # an hourly window is composed up to an hour after its rows
        for k in [k for k, a in self.anomalies.items() if a.state == "closed" and a.end is not None and a.end < old]:
            del self.anomalies[k]
        past = self.last_ts - KEEP_FORECAST_PAST - self.window
        for k in [k for k in self.predictions if k[1] < past]:
            del self.predictions[k]

    # --- composing ----------------------------------------------------------------------------
    def alert_as_of(self) -> datetime | None:
        """The event time alert.txt is composed for: the minute of the latest event seen."""
        return minute_of(self.last_event) if self.last_event is not None else None

    def compose_alert(self, state: AlertState | None = None) -> bytes | None:
        as_of = self.alert_as_of()
        if as_of is None:
            return None
        return protocol.compose_alert(self.site, self.meter, as_of, self.anomalies.values(), self.tz, self.hold, state)

    def compose_forecast(self) -> tuple[datetime, bytes] | None:
        """``forecast.txt`` of the latest forecast and its issue time; None before any."""
        issued_at, rows = protocol.forecast_rows(self.issued)
        if issued_at is None:
            return None
        return issued_at, protocol.compose_forecast(self.site, self.meter, issued_at, rows, self.tz)

    def last_closed_window(self) -> datetime | None:
        """Start of the latest window that ended at or before the latest reading."""
        if self.last_ts is None:
            return None
        return floor(self.last_ts, self.period, self.tz) - self.window

    def compose_server(self, window_start: datetime) -> bytes:
        preds = {k: v for k, (_, v) in self.predictions.items()}
        rows = protocol.server_rows(window_start, self.readings, list(self.anomalies.values()), preds, self.tz,
                                    int(self.window.total_seconds() // 60), self.row_minutes)
        return protocol.compose_server(self.site, self.meter, window_start, rows, self.tz, int(self.window.total_seconds() // 60))
