"""Several meters on one collector, through a real Mosquitto to the real detector and a real SQLite
store: two Modbus RTU meters (unit ids 1 and 2) on one pseudo-terminal RS485 bus served by pymodbus,
and a flow-only meter with 15-minute readings (a replayed AMR export)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from app.broker import mqtt_settings
from services.collector.registers import encode
from services.collector.service import CollectorService
from services.detector.service import DetectorService
from shared.settings import Settings
from shared.store.sqlite import SqliteStore
from tests.harness import wait_for
from tests.meters import ModbusBus, PtyBridge

pytestmark = pytest.mark.slow

T_AMR = datetime(2026, 3, 2, tzinfo=UTC)
N_AMR = 96  # one day of 15-minute readings

# unit 1: both signals, flow as an integer with a SunSpec-style power-of-ten factor, pressure in
# hundredths of a bar, a totalizer (extra value); unit 2: a flow-only meter with its own map.
INLET_MAP = [
    {"name": "flow_rate", "address": 0, "data_type": "uint16", "scale_register": "flow_sf"},
    {"name": "flow_sf", "address": 1, "data_type": "int16"},
    {"name": "pressure", "address": 2, "data_type": "int16", "scale": 0.01},
    {"name": "totalizer", "address": 3, "data_type": "uint32", "scale": 0.1},
]
OUTLET_MAP = [{"name": "flow_rate", "address": 0, "data_type": "float32"}]


def write_amr_csv(path: Path) -> None:
    """15-minute flow readings without pressure (the column is empty, as in an AMR export)."""
    lines = ["timestamp,flow_rate,pressure"]
    lines += [f"{T_AMR + timedelta(minutes=15 * i):%Y-%m-%dT%H:%M:%SZ},{40 + (i % 8):.1f}," for i in range(N_AMR)]
    path.write_text("\n".join(lines) + "\n")


def stored(store: SqliteStore, meter: str):
    return store.read_readings("site1", meter, datetime(2000, 1, 1, tzinfo=UTC), datetime.now(UTC) + timedelta(days=1))


def test_two_modbus_units_on_one_bus_and_a_flow_only_meter_every_reading_stored(tmp_path: Path, fresh_broker) -> None:
    bridge = PtyBridge()
    inlet_regs = [12345, encode(-2, "int16")[0], 412, *encode(98765, "uint32")]
    bus = ModbusBus({1: inlet_regs, 2: encode(55.5, "float32")}, serial_port=bridge.a.port).start()
    csv = tmp_path / "amr.csv"
    write_amr_csv(csv)
    s = Settings(
        data_dir=tmp_path / "var",
        mqtt={**mqtt_settings(fresh_broker).model_dump(), "client_id_prefix": "meters", "reconnect_max_s": 1.0},
        collector={"source": "modbus-rtu", "interval_s": 1, "speed": 0, "reopen_min_s": 0.5, "reopen_max_s": 3.0,
                   "modbus": {"port": bridge.b.port, "timeout_s": 0.5, "retries": 0, "registers": INLET_MAP}},
        meters=[
            {"id": "inlet", "modbus": {"unit_id": 1}},
            {"id": "outlet", "signals": ["flow_rate"], "modbus": {"unit_id": 2, "registers": OUTLET_MAP}},
            {"id": "amr", "signals": ["flow_rate"], "interval_s": 900, "source": "replay", "replay": {"file": str(csv)}},
        ],
    )
    store = SqliteStore(tmp_path / "store.db")
    det = DetectorService(s, store=store)
    det_t = det.start_in_thread()
    assert det.ready.wait(30)
    col = CollectorService(s)
    col_t = col.start_in_thread()
    ch = {c.meter: c for c in col.channels}
    try:
        assert col.ready.wait(30)
        # every meter flows: the replay to its end, both units of the bus
        assert wait_for(lambda: len(stored(store, "amr")) == N_AMR and len(stored(store, "inlet")) >= 3
                        and len(stored(store, "outlet")) >= 3, 60), col.counters.snapshot()

        # unit 2 stops answering: unit 1 on the same port goes on, one reading a second
        bus.silent.add(2)
        asked = bus.requests[2]
        assert wait_for(lambda: bus.requests[2] > asked, 10)  # a poll of unit 2 went unanswered...
        before = ch["inlet"].seq
        silent_from = datetime.now(UTC)
        assert wait_for(lambda: ch["inlet"].seq >= before + 12, 60), col.counters.snapshot()
        span = (datetime.now(UTC) - silent_from).total_seconds()
        assert col.counters.get("no_response") >= 2 and ch["outlet"].misses >= 2
        outlet_silent = ch["outlet"].seq
        failing = col.failing().get("meter")  # the silent meter shows in the status, by name
        assert failing is not None and "unit 2" in failing.detail, failing  # the most overdue one
        # ...and is asked less and less while it stays silent (per-meter backoff): far fewer polls than seconds
        assert bus.requests[2] - asked < 0.7 * span, (bus.requests[2] - asked, span)

        # it answers again: its readings come back within the longest pause (reopen_max_s) and a poll
        bus.silent.discard(2)
        assert wait_for(lambda: ch["outlet"].seq > outlet_silent + 2, 30), col.counters.snapshot()

        # the bus goes quiet: nobody answers, so the port is reopened (the adapter may have gone)...
        bus.silent.update({1, 2})
        assert wait_for(lambda: col.counters.get("reopens") >= 1, 30), col.counters.snapshot()
        # ...and the detector's receipts, one filter for every meter, empty the spool
        assert wait_for(lambda: len(col.spool) == 0 and col.counters.get("stored") == sum(c.seq for c in ch.values()), 60), (
            len(col.spool), col.counters.snapshot())
    finally:
        col.stop()
        col_t.join(30)
        bus.stop()
        bridge.close()
    produced = {m: c.seq for m, c in ch.items()}  # a fresh spool: sequence numbers from 0, one per reading
    try:
        # every reading produced is stored by the detector, none twice (the store's identity is (meter, ts))
        assert wait_for(lambda: all(len(stored(store, m)) == n for m, n in produced.items()), 60), (
            produced, {m: len(stored(store, m)) for m in produced})
    finally:
        det.stop()
        det_t.join(30)
    assert not col_t.is_alive() and not det_t.is_alive()

    amr = stored(store, "amr")
    assert amr.index[0] == T_AMR and (amr.index[1:] - amr.index[:-1] == timedelta(minutes=15)).all()
    for m in ("amr", "outlet"):  # flow-only meters: pressure absent, and not flagged missing
        df = stored(store, m)
        assert df["pressure"].isna().all() and not df["quality"].str.contains("pressure").any(), df["quality"].unique()
    assert set(stored(store, "outlet")["flow_rate"]) == {55.5}
    inlet = stored(store, "inlet")
    assert inlet["flow_rate"].tolist() == pytest.approx([123.45] * len(inlet))  # 12345 * 10^-2
    assert inlet["pressure"].tolist() == pytest.approx([4.12] * len(inlet)) and (inlet["quality"] == "").all()
    extra = store.read_extra("site1", "inlet", datetime(2000, 1, 1, tzinfo=UTC), datetime.now(UTC) + timedelta(days=1))
    assert list(extra.columns) == ["totalizer"] and len(extra) == len(inlet)  # the factor register is not published
    assert extra["totalizer"].tolist() == pytest.approx([9876.5] * len(inlet))
    # each meter its own sequence: 0, 1, 2, ... without a hole
    for m in produced:
        assert stored(store, m)["seq"].tolist() == list(range(produced[m]))
    store.close()


def test_several_simulated_meters_each_on_its_own_topic_with_its_own_stream(tmp_path: Path, mqtt) -> None:
    """Simulated meters in one collector (one thread for them all): each publishes on its own topic,
    with its own sequence numbers from 0 and its own stream (seed, mean), paced by collector.speed."""
    import threading
    import time

    from shared.bus import Bus
    from shared.messages import Reading

    got: dict[str, list[Reading]] = {"a": [], "b": [], "small": []}
    lock = threading.Lock()

    arrived: dict[tuple[str, int], float] = {}

    def on_reading(topic, r):
        with lock:
            got[r.meter].append(r)
            arrived.setdefault((r.meter, r.seq), time.monotonic())

    lis = Bus(mqtt, "lis-sims")
    lis.subscribe(lis.topics.all_meters("reading"), Reading, on_reading)
    assert lis.connect(wait_s=10)
    start = "2026-03-02T00:00:00Z"
    s = Settings(data_dir=tmp_path / "var", site="simsite", mqtt=mqtt.model_dump(),
                 collector={"source": "simulator", "speed": 3000, "simulator": {"start": start, "default_events": False}},
                 meters=[{"id": "a"}, {"id": "b"}, {"id": "small", "signals": ["flow_rate"], "interval_s": 900,
                                                    "simulator": {"seed": 42, "mean_flow": 12.0}}])
    col = CollectorService(s)
    t = col.start_in_thread()
    try:
        assert col.ready.wait(30)
        # 3000x: a minute of event time in 20 ms; the 15-minute meter gets one reading per 0.3 s
        assert wait_for(lambda: min(len(v) for v in got.values()) >= 10, 60), {m: len(v) for m, v in got.items()}
    finally:
        col.stop()
        t.join(30)
        lis.close()
    with lock:
        a, b, small = (sorted(got[m], key=lambda r: r.seq) for m in ("a", "b", "small"))
    for rs in (a, b, small):
        assert [r.seq for r in rs[:10]] == list(range(10)) and rs[0].ts == datetime(2026, 3, 2, tzinfo=UTC)
    assert [r.flow_rate for r in a[:10]] != [r.flow_rate for r in b[:10]]  # seeds 42 and 43
    assert small[1].ts - small[0].ts == timedelta(minutes=15) and a[1].ts - a[0].ts == timedelta(minutes=1)
    assert all(r.pressure is None and "pressure_missing" not in r.quality for r in small)
    assert sum(r.flow_rate for r in small[:10]) < sum(r.flow_rate for r in a[:10]) / 4  # mean 12 vs 120 m³/h
    # paced: the 15-minute meter's readings 0 and 9 are 2.25 h of event time apart, 2.7 s at 3000x
    assert arrived[("small", 9)] - arrived[("small", 0)] >= 2.7 * 0.9
