"""Per-meter range limits (issue 15) on the service path: one collector replaying two meters, through a
real Mosquitto to the real detector and a real SQLite store. The same 60 m³/h is out of range on the
meter whose flow_rate_max is 50 (flagged, the invalid alert opens for that meter only) and a valid
reading of the meter with the box's limits."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

from app.broker import mqtt_settings
from services.collector.service import CollectorService
from services.detector.service import DetectorService
from shared.bus import Bus
from shared.messages import Anomaly, Reading
from shared.settings import Settings
from shared.store.sqlite import SqliteStore
from tests.harness import wait_for

SITE = "limsite"
T0 = datetime(2026, 3, 2, tzinfo=UTC)
N, AT, HIGH = 30, 10, 60.0  # readings per meter; the one at AT is HIGH m³/h, the others about 20
EVER = (datetime(2000, 1, 1, tzinfo=UTC), datetime(2100, 1, 1, tzinfo=UTC))


def write_csv(path: Path) -> None:
    rows = [f"{T0 + timedelta(minutes=i):%Y-%m-%dT%H:%M:%SZ},{HIGH if i == AT else 20 + (i % 5) / 10:.1f},{3 + (i % 3) / 100:.2f}"
            for i in range(N)]
    path.write_text("timestamp,flow_rate,pressure\n" + "\n".join(rows) + "\n")


def test_the_same_flow_is_out_of_range_only_on_the_meter_whose_range_excludes_it(tmp_path: Path, fresh_broker) -> None:
    for m in ("amr", "inlet"):
        write_csv(tmp_path / f"{m}.csv")
    s = Settings(
        data_dir=tmp_path / "var", site=SITE,
        mqtt={**mqtt_settings(fresh_broker).model_dump(), "client_id_prefix": "limits"},
        collector={"source": "replay", "speed": 0},
        meters=[{"id": "amr", "interval_s": 60, "replay": {"file": str(tmp_path / "amr.csv")}, "limits": {"flow_rate_max": 50}},
                {"id": "inlet", "interval_s": 60, "replay": {"file": str(tmp_path / "inlet.csv")}}],
    )
    published: dict[str, list[Reading]] = {"amr": [], "inlet": []}
    alerts: list[Anomaly] = []
    lock = threading.Lock()

    def on_reading(topic, r: Reading) -> None:
        with lock:
            published[r.meter].append(r)

    def on_anomaly(topic, a: Anomaly) -> None:
        with lock:
            alerts.append(a)

    watch = Bus(s.mqtt, "watch-limits", persistent=False)
    watch.subscribe(watch.topics.all_meters("reading"), Reading, on_reading)
    watch.subscribe(watch.topics.all_meters("anomaly"), Anomaly, on_anomaly)
    assert watch.connect(wait_s=10)
    store = SqliteStore(tmp_path / "store.db")
    det = DetectorService(s, store=store)
    det_t = det.start_in_thread()
    col = CollectorService(s)
    col_t = col.start_in_thread()
    try:
        assert det.ready.wait(30) and col.ready.wait(30)
        stored = lambda m: store.read_readings(SITE, m, *EVER)  # noqa: E731
        assert wait_for(lambda: all(len(stored(m)) == N for m in published), 60), col.counters.snapshot()
        assert wait_for(lambda: len(col.spool) == 0 and col.counters.get("stored") == 2 * N, 30), col.counters.snapshot()
        assert wait_for(lambda: any(a.kind == "invalid" for a in alerts), 10), alerts
    finally:
        col.stop()
        col_t.join(30)
        det.stop()
        det_t.join(30)
        watch.close()

    # every reading published is stored, once, for both meters
    with lock:
        assert {m: len(rs) for m, rs in published.items()} == {"amr": N, "inlet": N}
        assert {m: sorted(r.seq for r in rs) for m, rs in published.items()} == {"amr": list(range(N)), "inlet": list(range(N))}
        high = {m: next(r for r in rs if r.flow_rate == HIGH) for m, rs in published.items()}
        invalid = [(a.meter, a.signal, a.state, a.threshold) for a in alerts if a.kind == "invalid"]
    assert {m: c.seq for m, c in ((c.meter, c) for c in col.channels)} == {"amr": N, "inlet": N}
    assert high["amr"].quality == ("flow_rate_out_of_range",) and high["inlet"].quality == ()
    amr, inlet = stored("amr"), stored("inlet")
    assert len(amr) == len(inlet) == N
    ts = T0 + timedelta(minutes=AT)
    assert amr.loc[ts, "quality"] == "flow_rate_out_of_range" and amr.loc[ts, "flow_rate"] == HIGH
    assert inlet.loc[ts, "quality"] == "" and inlet.loc[ts, "flow_rate"] == HIGH  # stored as valid
    assert (amr.drop(ts)["quality"] == "").all() and (inlet["quality"] == "").all()
    # the range alert of the small meter only, at its own maximum
    assert invalid and all(a == ("amr", "flow_rate") for a in (i[:2] for i in invalid)) and invalid[0][2:] == ("open", 50.0), invalid
    anomalies = {m: store.read_anomalies(SITE, m, *EVER) for m in published}
    assert anomalies["amr"].query("kind == 'invalid'")["signal"].tolist() == ["flow_rate"]
    assert "meters[].limits.flow_rate_min/max" in anomalies["amr"].query("kind == 'invalid'")["message"].iloc[0]
    assert anomalies["inlet"].query("kind == 'invalid'").empty
    store.close()
