"""Issue 15's done-when, all in one stack of real processes (tests/stack.py) through a real Mosquitto
and a real SQLite store: two Modbus RTU meters on one pseudo-terminal RS485 bus (a pymodbus server
answering for unit ids 1 and 2) and a flow-only meter with 15-minute readings (a replayed AMR
export), read by one collector, with the detector, forecaster and exporter running.

- every reading stored: per meter, the readings stored equal the readings the collector produced
  (its spool's sequence counters), each sequence number once, and the spool ends empty;
- a burst on one meter (unit 2's flow register up 80 %) alerts that meter only;
- forecasts per meter, flow only for the flow-only meters, and each meter's files for the device;
- no alert about a signal a meter does not have.

The collector's clock is set back to just before an hour (``Stack.start(clock_offset_s=...)``) so
the live Modbus meters cross an hour of event time, where the forecaster issues, within a minute.
"""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from services.collector.registers import encode
from shared.store.sqlite import SqliteStore
from tests.exporter_check import verify
from tests.harness import wait_for
from tests.meters import ModbusBus, PtyBridge
from tests.stack import Stack

pytestmark = pytest.mark.slow

SITE = "site1"
T_AMR = datetime(2026, 3, 2, tzinfo=UTC)
N_AMR = 96  # one day of 15-minute readings
LEAD_S = 50  # the collector's clock starts this long before an hour
EVER = (datetime(2000, 1, 1, tzinfo=UTC), datetime(2100, 1, 1, tzinfo=UTC))

# unit 1 (inlet): flow in hundredths of m³/h, pressure in hundredths of a bar; unit 2 (outlet): flow only, float32
INLET_MAP = [
    {"name": "flow_rate", "address": 0, "data_type": "uint16", "scale": 0.01},
    {"name": "pressure", "address": 1, "data_type": "int16", "scale": 0.01},
]
OUTLET_MAP = [{"name": "flow_rate", "address": 0, "data_type": "float32"}]
OUTLET_FLOW, BURST = 50.0, 1.8  # +80 %


def write_amr_csv(path: Path) -> None:
    """15-minute flow readings without pressure (the column is empty, as in an AMR export)."""
    lines = ["timestamp,flow_rate,pressure"]
    lines += [f"{T_AMR + timedelta(minutes=15 * i):%Y-%m-%dT%H:%M:%SZ},{40 + (i % 8):.1f}," for i in range(N_AMR)]
    path.write_text("\n".join(lines) + "\n")


def produced(spool: Path) -> tuple[dict[str, int], int]:
    """Readings the collector produced per meter (its next sequence numbers: the first meter's key is
    ``next_seq``) and the rows still in its spool."""
    db = sqlite3.connect(spool)
    try:
        meta = dict(db.execute("SELECT key, value FROM meta"))
        left = db.execute("SELECT count(*) FROM spool").fetchone()[0]
    finally:
        db.close()
    return {"inlet": meta["next_seq"], "outlet": meta["next_seq/outlet"], "amr": meta["next_seq/amr"]}, left


def test_silent_counts_in_each_meters_own_interval() -> None:
    """A 15-minute meter on a box whose default interval is 1 s: silent after 5 x 15 minutes."""
    from services.detector.engine import DetectionEngine
    from shared.settings import DetectorSettings

    spec = {"fast": (("flow_rate",), 1.0), "amr": (("flow_rate",), 900.0)}
    e = DetectionEngine(DetectorSettings(silent_intervals=5), "UTC", interval_s=1, meter_spec=spec.__getitem__)
    t = T_AMR.timestamp()
    for m in spec:
        e.process_values(SITE, m, t, 40.0, None)
    now = datetime.fromtimestamp(t + 600, UTC)
    seen = {(SITE, m): t for m in spec}
    assert [(a.meter, a.kind, a.signal) for a in e.check_silent(now, seen)] == [("fast", "silent", "flow_rate")]
    later = datetime.fromtimestamp(t + 5 * 900 + 1, UTC)
    assert [(a.meter, a.kind) for a in e.check_silent(later, seen)] == [("amr", "silent")]


def test_two_modbus_meters_and_a_flow_only_meter_in_one_stack(tmp_path: Path, fresh_broker) -> None:
    bridge = PtyBridge()
    units = {1: [12000, 400], 2: encode(OUTLET_FLOW, "float32")}
    bus = ModbusBus(units, serial_port=bridge.a.port).start()
    csv = tmp_path / "amr.csv"
    write_amr_csv(csv)
    stack = Stack(tmp_path, fresh_broker, n_readings=1, rate_per_s=1, extra={
        "site": SITE,
        "collector": {"source": "modbus-rtu", "interval_s": 1, "speed": 0, "reopen_min_s": 0.5, "reopen_max_s": 3.0,
                      "modbus": {"port": bridge.b.port, "timeout_s": 0.5, "retries": 0, "registers": INLET_MAP}},
        "meters": [
            {"id": "inlet", "modbus": {"unit_id": 1}},
            {"id": "outlet", "signals": ["flow_rate"], "modbus": {"unit_id": 2, "registers": OUTLET_MAP}},
            {"id": "amr", "signals": ["flow_rate"], "interval_s": 900, "source": "replay", "replay": {"file": str(csv)}},
        ],
        # a 30-second burst baseline (30 one-second readings) instead of 5 minutes, so the test is short
        "detector": {"burst_baseline_minutes": 0.5},
    })
    db_path = stack.data / "flowwatch.db"

    def store() -> SqliteStore | None:
        return SqliteStore(db_path) if db_path.exists() else None

    def counts() -> dict[str, int]:
        st = store()
        if st is None:
            return {}
        try:
            return {m: len(st.read_readings(SITE, m, *EVER)) for m in ("inlet", "outlet", "amr")}
        finally:
            st.close()

    def anomalies(meter: str):
        st = store()
        try:
            return st.read_anomalies(SITE, meter, *EVER)
        finally:
            st.close()

    def forecasts(meter: str):
        st = store()
        try:
            return st.read_forecasts(SITE, meter, *EVER)
        finally:
            st.close()

    try:
        for name in ("detector", "forecaster", "exporter"):
            stack.start(name)
        assert wait_for(lambda: all(f"{n} ready" in stack.log(n) for n in ("detector", "forecaster", "exporter")), 90), stack.all_logs()
        now = datetime.now(UTC).timestamp()
        hour = now - now % 3600
        stack.start("collector", clock_offset_s=hour - LEAD_S - now)  # LEAD_S before the last hour
        # the replay to its end, and a baseline of the outlet for the burst rule (30 s and more)
        assert wait_for(lambda: (c := counts()) and c["amr"] == N_AMR and c["outlet"] >= 40 and c["inlet"] >= 40, 120), (
            counts(), stack.all_logs())

        # a burst on the outlet: its flow register up 80 % until the detector alerts
        units[2][:] = encode(OUTLET_FLOW * BURST, "float32")

        def burst_on_outlet() -> bool:
            a = anomalies("outlet")
            return bool((a["kind"] == "burst").any())

        assert wait_for(burst_on_outlet, 60, every=0.5), (anomalies("outlet"), stack.all_logs())
        units[2][:] = encode(OUTLET_FLOW, "float32")

        # forecasts per meter: the live meters crossed the hour, the replay a day of them
        def forecast_signals() -> dict[str, set[str]]:
            return {m: set(forecasts(m)["signal"]) for m in ("inlet", "outlet", "amr")}

        want = {"inlet": {"flow_rate", "pressure"}, "outlet": {"flow_rate"}, "amr": {"flow_rate"}}
        assert wait_for(lambda: forecast_signals() == want, 90, every=0.5), (forecast_signals(), stack.all_logs())
        for m in ("inlet", "outlet"):  # issued at the hour the live meters crossed, 10-minute bins
            f = forecasts(m)
            assert set(f["issued_at"]) == {datetime.fromtimestamp(hour, UTC)}, f
            assert sorted(set(f["target_time"] - f["issued_at"])) == [timedelta(minutes=10 * k) for k in range(1, 7)]
        amr_f = forecasts("amr")  # a day replayed: 15-minute bins, an hour ahead
        assert len(set(amr_f["issued_at"])) >= 20 and sorted(set(amr_f["target_time"] - amr_f["issued_at"])) == [
            timedelta(minutes=15 * k) for k in range(1, 5)]
        out = stack.data / "exports" / SITE
        files = [out / m / f for m in want for f in ("server.txt", "forecast.txt")]
        assert wait_for(lambda: all(p.exists() for p in files), 30), [p for p in files if not p.exists()]
        for p in files:
            assert verify(p.read_bytes()), p

        # the collector stops (its spool flushed on the detector's receipts): every reading produced is stored
        assert wait_for(lambda: produced(stack.data / "spool.db")[1] == 0, 60), produced(stack.data / "spool.db")
        assert stack.stop("collector") == 0, stack.log("collector")
        made, left = produced(stack.data / "spool.db")
        assert made["amr"] == N_AMR and made["inlet"] >= 40 and made["outlet"] >= 40, made
        assert wait_for(lambda: counts() == made, 60), (made, counts(), left)
        st = store()
        try:
            for m, n in made.items():  # each sequence number once: 0 .. n-1
                assert st.read_readings(SITE, m, *EVER)["seq"].tolist() == list(range(n)), m
        finally:
            st.close()

        # the burst alerted the outlet only; no alert about a signal a meter does not have
        out_a, in_a, amr_a = anomalies("outlet"), anomalies("inlet"), anomalies("amr")
        for m, a in (("outlet", out_a), ("inlet", in_a), ("amr", amr_a)):  # shown with -s
            print(m, made[m], "readings;", a[["kind", "signal", "severity", "state"]].to_dict("records"))
        assert set(out_a[out_a["kind"] == "burst"]["signal"]) == {"flow_rate"}
        assert not (in_a["kind"] == "burst").any() and not (amr_a["kind"] == "burst").any(), (in_a, amr_a)
        for a in (out_a, amr_a):
            assert not a["signal"].isin(["pressure", "both"]).any(), a
        # the replay ended a minute ago: silent comes after 5 of *its* 15-minute intervals, not the box's 1 s
        assert not (amr_a["kind"] == "silent").any(), amr_a
        assert not (in_a["severity"] == "critical").any(), in_a
        logs = stack.log("forecaster") + stack.log("detector") + stack.log("exporter")
        assert "Traceback" not in logs, logs[-4000:]
        assert all(stack.alive(n) for n in ("detector", "forecaster", "exporter")), stack.all_logs()
    finally:
        stack.stop_all()
        bus.stop()
        bridge.close()
