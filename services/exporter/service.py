"""The exporter service: readings, anomalies and forecasts in; alert.txt, server.txt, forecast.txt,
their MQTT mirror and the daily archive out. Everything fires in event time (reading timestamps).

- every reading: ``alert.txt`` is recomposed for the minute of the latest event; an anomaly update
  recomposes it at once. A file is written (and mirrored) only when its bytes change, so it changes
  once a minute while readings flow, and at once when an alert opens or closes;
- a reading that crosses a 10-minute boundary ``b`` writes ``server.txt`` for ``[b - 10 min, b)``;
- a forecast writes ``forecast.txt``: every step of the meter's latest forecast;
- a one-shot event (spike, gap) stays in ``alert.txt`` for ``exporter.event_hold_minutes``;
- a reading past ``D+1 00:00`` local (plus ``exporter.archive_lag_minutes``) archives day ``D`` once.
  Days missed before it are archived too, at most ``exporter.archive_catchup_days`` per reading.

With one meter configured, its files are ``<out_dir>/alert.txt`` (``server.txt``, ``forecast.txt``);
with several, each configured meter's are in ``<out_dir>/<site>/<meter>/``, and so are those of any
other meter seen on the bus.

At start the state is back-filled from the store (the last closed and the open window's readings,
recent anomalies, forecasts targeted from the last closed window on) and the files are recomposed;
they are rewritten only if their bytes differ, so a restart changes nothing.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path

from services.exporter import protocol
from services.exporter.archive import Archiver
from services.exporter.state import MeterState
from services.exporter.writer import atomic_write, read_or_none, remove_stale_temps
from shared.bus import Bus
from shared.eventtime import BoundaryClock, floor
from shared.messages import AlertState, Anomaly, ExportRecord, Forecast, Reading, finite_or_none
from shared.service import Service
from shared.settings import Settings
from shared.store import Store, open_store

logger = logging.getLogger(__name__)

FILES = ("alert", "server", "forecast")
FORECAST_LOOKAHEAD = timedelta(days=8)  # forecasts reach at most 7 days ahead


class ExporterService(Service):
    name = "exporter"

    def __init__(self, settings: Settings, *, bus: Bus | None = None, store: Store | None = None) -> None:
        super().__init__(settings, bus=bus)
        self.cfg = settings.exporter
        self.tz = settings.tz
        self.out_dir = settings.path(self.cfg.out_dir)
        self.store: Store | None = store
        self._owns_store = store is None
        self.archiver: Archiver | None = None
        self.meters: dict[tuple[str, str], MeterState] = {}
        self.clock = BoundaryClock(self.tz)
        self._written: dict[Path, bytes] = {}
        # Subscribe before the bus connects: a persistent session's queued messages are delivered
        # right after CONNACK and must find their handler. The inbox worker that runs the handlers
        # starts with the connection, after ``setup`` back-filled the state.
        t = self.topics
        self.bus.subscribe(t.all_meters("reading"), Reading, self._on_reading)
        self.bus.subscribe(t.all_meters("anomaly"), Anomaly, self._on_anomaly)
        self.bus.subscribe(t.all_meters("forecast"), Forecast, self._on_forecast)
        self.bus.subscribe(t.notifier_state(), AlertState, self._on_alert_state)
        self.alert_state: AlertState | None = None  # acknowledgements and silences (the notifier's, retained)

    # --- paths ------------------------------------------------------------------------------
    def path_for(self, site: str, meter: str, file: str) -> Path:
        """``<out_dir>/<file>.txt`` for the configured meter, ``<out_dir>/<site>/<meter>/<file>.txt`` otherwise."""
        if (site, meter) == (self.settings.site, self.settings.meter) and len(self.settings.meters) == 1:
            return self.out_dir / f"{file}.txt"
        for part in (site, meter):
            if part in (".", ".."):
                raise ValueError(f"site/meter id {part!r} cannot name a folder")
        return self.out_dir / site / meter / f"{file}.txt"

    # --- lifecycle --------------------------------------------------------------------------
    def setup(self) -> None:
        if self.store is None:
            self.store = open_store(self.settings)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        n = remove_stale_temps(self.out_dir)
        if n:
            logger.info("removed %d temporary file(s) left by an interrupted write in %s", n, self.out_dir)
        if self.cfg.archive:
            self.archiver = Archiver(
                self.store, self.settings.path(self.cfg.archive_dir), self.tz, self.cfg.archive_days,
                timedelta(minutes=self.cfg.archive_lag_minutes), self.counters, self.cfg.archive_catchup_days,
            )
        self._backfill()

    def teardown(self) -> None:
        if self.store is not None and self._owns_store:
            self.store.close()

    def _backfill(self) -> None:
        assert self.store is not None
        keys = set(self.store.meters()) | {(self.settings.site, m) for m in self.settings.meter_ids}
        latest: datetime | None = None
        for site, meter in sorted(keys):
            last = self.store.last_reading_time(site, meter)
            if last is None:
                continue
            ms = self._state(site, meter)
            window_start = floor(last, ms.period, self.tz) - ms.window
            for r in self.store.read_reading_records(site, meter, window_start, last + timedelta(seconds=1)):
                ms.put_reading(r.ts, finite_or_none(r.flow_rate), finite_or_none(r.pressure))
            since = last - timedelta(days=self.cfg.backfill_anomaly_days)
            for a in self.store.read_anomaly_records(site, meter, since, last + timedelta(seconds=1)):
                if a.state == "open" or (a.end is not None and a.end >= window_start):
                    ms.add_anomaly(a)
            horizon = timedelta(minutes=self.settings.forecaster.horizon_minutes)
            for signal, issued, target, value, _model in self.store.read_forecast_points(site, meter, window_start - horizon,
                                                                                        last + FORECAST_LOOKAHEAD):
                v = finite_or_none(value)
                if v is not None:
                    ms.add_prediction(signal, target, issued, v)
            self.clock.seed(last, key=(site, meter))
            self.time_guard.seed((site, meter), last)
            logger.info(
                "back-filled %s/%s up to %s: %d reading(s), %d anomaly(ies), %d forecast point(s)",
                site, meter, last.isoformat(), len(ms.readings), len(ms.anomalies), len(ms.predictions),
            )
            self._emit_server(ms, window_start, force_publish=True)
            self._emit_alert(ms, force_publish=True)
            self._emit_forecast(ms, force_publish=True)
            latest = last if latest is None or last > latest else latest
        if latest is not None:
            self.last_event = latest
            if self.archiver is not None:
                self.archiver.on_event_time(latest)

    # --- handlers (the inbox worker) ---------------------------------------------------------
    def _state(self, site: str, meter: str) -> MeterState:
        ms = self.meters.get((site, meter))
        if ms is None:
            self.path_for(site, meter, "alert")  # refuse ids that cannot name a folder, before any state
            ms = self.meters[(site, meter)] = MeterState(site, meter, self.tz, hold=timedelta(minutes=self.cfg.event_hold_minutes),
                                                         interval_s=self.settings.interval_of(meter))
        return ms

    def _on_reading(self, topic: str, r: Reading) -> None:
        self.admit(r)
        ms = self._state(r.site, r.meter)
        crossed = self.clock.advance(r.ts, (ms.period,), key=(r.site, r.meter))
        ms.add_reading(r)
        self.counters.inc("readings")
        if ms.period in crossed:
            self._emit_server(ms, crossed[ms.period] - ms.window)
        self._emit_alert(ms)
        if self.archiver is not None:
            self.archiver.on_event_time(r.ts)
        if self.last_event is None or r.ts > self.last_event:
            self.last_event = r.ts

    def _on_anomaly(self, topic: str, a: Anomaly) -> None:
        ms = self._state(a.site, a.meter)
        ms.add_anomaly(a)
        self.counters.inc("anomalies")
        self._emit_alert(ms)

    def _on_alert_state(self, topic: str, st: AlertState) -> None:
        self.alert_state = st
        for ms in self.meters.values():
            self._emit_alert(ms)

    def _on_forecast(self, topic: str, f: Forecast) -> None:
        ms = self._state(f.site, f.meter)
        ms.add_forecast(f)
        self.counters.inc("forecasts")
        self._emit_forecast(ms)

    # --- output -----------------------------------------------------------------------------
    def _emit_alert(self, ms: MeterState, *, force_publish: bool = False) -> None:
        data = ms.compose_alert(self.alert_state)
        as_of = ms.alert_as_of()
        if data is not None and as_of is not None:
            self._emit(ms, "alert", data, as_of, force_publish)

    def _emit_forecast(self, ms: MeterState, *, force_publish: bool = False) -> None:
        out = ms.compose_forecast()
        if out is not None:
            self._emit(ms, "forecast", out[1], out[0], force_publish)

    def _emit_server(self, ms: MeterState, window_start: datetime, *, force_publish: bool = False) -> None:
        self._emit(ms, "server", ms.compose_server(window_start), window_start + ms.window, force_publish)

    def _emit(self, ms: MeterState, file: str, data: bytes, ts: datetime, force_publish: bool) -> None:
        """Write ``data`` atomically if it differs from the file, then mirror it (retained)."""
        path = self.path_for(ms.site, ms.meter, file)
        if path not in self._written:
            old = read_or_none(path)
            if old is not None:
                self._written[path] = old
        changed = self._written.get(path) != data
        if changed:
            # A disk error is retried here (the state change above is not redone); a stop meanwhile
            # leaves the message unacknowledged, and the restart back-fills and rewrites the file.
            self.retry(lambda: atomic_write(path, data), f"writing {path}")
            self._written[path] = data
            self.counters.inc(f"{file}_written")
        if self.cfg.mirror and (changed or force_publish):
            record = ExportRecord(
                site=ms.site, meter=ms.meter, file=file, ts=ts.astimezone(UTC),  # type: ignore[arg-type]
                protocol_version=protocol.PROTOCOL_VERSION, content=data.decode("ascii"),
            )
            self.bus.publish(self.topics.export(ms.site, ms.meter, file), record, qos=1, retain=True)
