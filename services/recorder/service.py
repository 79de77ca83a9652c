"""The recorder: the central tier's store of what the sites send (readings, anomalies, forecasts,
thresholds: the central dashboards draw each meter's bands from them).

One persistent MQTT session on the central broker (user ``recorder``, read-only ACL), the shared
inbox in batches, one store write per batch, then the acknowledgement: a message leaves the central
broker's queue only once it is stored, so a recorder or central broker restart loses nothing.
The store writes are idempotent (a reading identical to a stored one is counted, not added), so the
copies a bridge resends after a reconnect are harmless.

It decides nothing: detection ran on the box. Every message passes the same checks as on a box (the
site and meter of the payload are those of its topic; the central ACL lets a site publish only under
its own id, so a site cannot write another's data; plausible time; ``limits.max_meters_per_site``).
"""

from __future__ import annotations

import logging

from shared.bus import Bus
from shared.inbox import Delivery
from shared.messages import Anomaly, Forecast, Reading, Thresholds
from shared.service import Service
from shared.settings import Settings
from shared.store import Store, open_store

logger = logging.getLogger(__name__)

BATCH_MAX = 500


class RecorderService(Service):
    name = "recorder"

    def __init__(self, settings: Settings, *, bus: Bus | None = None, store: Store | None = None) -> None:
        super().__init__(settings, bus=bus)
        self.store: Store | None = store
        self._owns_store = store is None
        t = self.topics
        for kind, model in (("reading", Reading), ("anomaly", Anomaly), ("forecast", Forecast), ("thresholds", Thresholds)):
            self.bus.subscribe(t.all_meters(kind), model, None)
        self.inbox.set_batch_handler(self._handle, BATCH_MAX)

    def setup(self) -> None:
        if self.store is None:
            self.store = open_store(self.settings)

    def teardown(self) -> None:
        if self._owns_store and self.store is not None:
            self.store.close()

    def _handle(self, batch: list[Delivery]) -> None:
        readings: list[Reading] = []
        anomalies: list[Anomaly] = []
        forecasts: list[Forecast] = []
        thresholds: list[Thresholds] = []
        for d in batch:
            obj = d.obj
            if isinstance(obj, Reading):
                if self.inbox.guard(d, lambda r=obj: self.admit(r)):
                    readings.append(obj)
            elif isinstance(obj, Anomaly):
                anomalies.append(obj)
            elif isinstance(obj, Forecast):
                forecasts.append(obj)
            elif isinstance(obj, Thresholds):
                thresholds.append(obj)
        self.retry(lambda: self._write(readings, anomalies, forecasts, thresholds), "recorder store write")
        c = self.counters
        if readings:
            c.inc("readings_stored", len(readings))
            self.last_event = max(r.ts for r in readings)
        if anomalies:
            c.inc("anomalies_stored", len(anomalies))
        if forecasts:
            c.inc("forecasts_stored", len(forecasts))
        if thresholds:
            c.inc("thresholds_stored", len(thresholds))
        c.inc("batches")

    def _write(self, readings: list[Reading], anomalies: list[Anomaly], forecasts: list[Forecast],
               thresholds: list[Thresholds]) -> None:
        if readings:
            self.store_readings(readings)
        if anomalies:
            self.store.write_anomalies(anomalies)
        for f in forecasts:
            self.store.write_forecast(f)
        for t in thresholds:  # keyed by computed_at: a copy resent by the bridge replaces itself
            self.store.write_thresholds(t)
