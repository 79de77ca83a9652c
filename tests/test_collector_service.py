"""The collector against real parts: pseudo-terminals, a pymodbus server, a real Mosquitto."""

from __future__ import annotations

import json
import threading
import time
from datetime import UTC, datetime

import pytest

from app.broker import free_port
from services.collector.registers import encode
from services.collector.service import CollectorService
from shared.bus import Bus
from shared.messages import DeadLetter, Reading, Stored, stored_ranges
from shared.settings import Settings
from tests.harness import wait_for
from tests.meters import ModbusMeter, PtyBridge, PtyPair

pytestmark = pytest.mark.slow


class Listener:
    """A subscriber on the reading and dead-letter topics of one meter."""

    def __init__(self, mqtt, meter: str, name: str, *, receipts: bool = False) -> None:
        self.receipts = receipts  # answer each reading with the detector's Stored receipt
        self.readings: list[Reading] = []
        self.dead: list[DeadLetter] = []
        self.lock = threading.Lock()
        self.bus = Bus(mqtt, name)
        self.deliveries: list[tuple[int, bool]] = []  # (seq, MQTT DUP flag) of each reading delivered
        original = self.bus.client.on_message

        def spy(client, userdata, msg):  # the DUP flag tells a broker redelivery from a second publish
            if msg.topic.endswith("/reading"):
                try:
                    self.deliveries.append((json.loads(msg.payload)["seq"], bool(msg.dup)))
                except (ValueError, KeyError, TypeError):
                    pass
            original(client, userdata, msg)

        self.bus.client.on_message = spy
        self.bus.subscribe(self.bus.topics.reading("site1", meter), Reading, self._reading)
        self.bus.subscribe(self.bus.topics.deadletter("collector"), DeadLetter, self._dead)
        assert self.bus.connect(wait_s=10)
        time.sleep(0.1)  # let the SUBACKs come back before the collector starts

    def _reading(self, topic, r):
        with self.lock:
            self.readings.append(r)
        if self.receipts:
            self.bus.publish(self.bus.topics.stored(r.site, r.meter), Stored(site=r.site, meter=r.meter, ranges=stored_ranges([r])))

    def _dead(self, topic, d):
        with self.lock:
            self.dead.append(d)

    def close(self):
        self.bus.close()


def collector_settings(tmp_path, mqtt, meter: str, **collector) -> Settings:
    return Settings(data_dir=tmp_path / "var", meter=meter, mqtt=mqtt.model_dump(), collector=collector)


def start(settings: Settings) -> tuple[CollectorService, threading.Thread]:
    svc = CollectorService(settings)
    t = svc.start_in_thread()
    assert svc.ready.wait(15)
    return svc, t


def stop(svc: CollectorService, t: threading.Thread) -> None:
    svc.stop()
    t.join(15)
    assert not t.is_alive()


def test_serial_polled_meter_on_a_pty(tmp_path, mqtt):
    """A meter that answers '?' with 'F=<L/s>;P=<kPa>*<xor>' on a pty; readings in m³/h and bar."""
    from services.collector.frames import checksum

    pty = PtyPair()
    values = iter([(10.0, 345.0), (12.5, 350.0), (11.0, 360.0)])
    asked = []

    def meter():
        while len(asked) < 3:
            if b"?" in pty.read(0.2):
                asked.append(1)
                f, p = next(values)
                body = f"F={f:.3f};P={p:.1f}"
                pty.write(f"{body}*{checksum('xor8', body.encode()):02X}\r\n".encode())

    th = threading.Thread(target=meter, daemon=True)
    th.start()
    frame = {
        "kind": "regex", "regex": r"^F=(?P<f>[^;]*);P=(?P<p>.*)$",
        "flow_rate": {"group": "f", "scale": 3.6}, "pressure": {"group": "p", "scale": 0.01},
        "checksum": {"kind": "xor8", "separator": "*"},
    }
    lis = Listener(mqtt, "serial-polled", "lis-serial-polled")
    s = collector_settings(tmp_path, mqtt, "serial-polled", source="serial", interval_s=1,
                           serial={"port": pty.port, "baudrate": 9600, "request": "?\\r\\n", "timeout_s": 1, "frame": frame})
    svc, t = start(s)
    try:
        assert wait_for(lambda: len(lis.readings) >= 3), svc.counters.snapshot()
    finally:
        stop(svc, t)
        lis.close()
        pty.close()
    got = lis.readings[:3]
    assert [r.flow_rate for r in got] == pytest.approx([36.0, 45.0, 39.6])
    assert [r.pressure for r in got] == pytest.approx([3.45, 3.50, 3.60])
    assert [r.seq for r in got] == [0, 1, 2]
    assert all(r.source == "serial" and r.quality == () for r in got)
    assert all(r.ts.second == 0 or r.ts.microsecond == 0 for r in got)  # aligned to the 1 s interval
    assert len({r.ts for r in got}) == 3 and got == sorted(got, key=lambda r: r.ts)


def test_serial_push_meter_bad_frames_are_dead_lettered_and_port_is_reopened(tmp_path, mqtt):
    """A meter that talks on its own; garbage is dead-lettered; the adapter is unplugged and replugged."""
    link = tmp_path / "ttyMETER"
    pty = PtyPair()
    link.symlink_to(pty.port)
    lis = Listener(mqtt, "serial-push", "lis-serial-push")
    s = collector_settings(tmp_path, mqtt, "serial-push", source="serial", interval_s=1, reopen_min_s=0.2, reopen_max_s=0.5,
                           serial={"port": str(link), "timeout_s": 0.5})
    svc, t = start(s)
    assert svc.source_opened.wait(10)
    try:
        bad = [b"garbage\n", b"1.0;2.0\n", b"\xff\xfe,\x80\n", b"nan,abc\n", b"1e999,3\n"]
        for frame in bad:
            pty.write(frame)
        assert wait_for(lambda: len(lis.dead) >= len(bad)), svc.counters.snapshot()
        assert svc.counters.get("rejected") == len(bad)
        assert [bytes.fromhex(d.payload_hex) for d in lis.dead] == bad
        assert all(d.topic.endswith("/serial-push/reading") and "bad frame" in d.reason for d in lis.dead)
        # a good frame arrives (repeat it until the interval slot lets it through)
        assert wait_for(lambda: (pty.write(b"100.5,4.25\r\n") or True) and any(r.flow_rate == 100.5 for r in lis.readings), 10)
        # NaN is a missing value, not a bad frame; out of range is flagged, not dropped
        assert wait_for(lambda: (pty.write(b"NaN,99\r\n") or True) and any(r.flow_rate is None for r in lis.readings), 10)
        r = next(r for r in lis.readings if r.flow_rate is None)
        assert set(r.quality) == {"flow_rate_missing", "pressure_out_of_range"} and r.pressure == 99
        # unplug: the pty disappears; the collector keeps retrying; replug on the same path
        errors = svc.counters.get("io_errors")
        pty.close()
        assert wait_for(lambda: svc.counters.get("io_errors") > errors, 10)
        pty2 = PtyPair()
        link.unlink()
        link.symlink_to(pty2.port)
        assert wait_for(lambda: (pty2.write(b"77.0,3.0\n") or True) and any(r.flow_rate == 77.0 for r in lis.readings), 15), svc.counters.snapshot()
        assert svc.counters.get("reopens") >= 1 and t.is_alive()
        pty2.close()
    finally:
        stop(svc, t)
        lis.close()
    seqs = [r.seq for r in lis.readings]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)


# A typical electromagnetic flow meter map: flow float32 (CDAB) in input registers,
# pressure int16 in hundredths of a bar in a holding register, a signed totaliser we ignore.
REGISTERS = [
    {"name": "flow_rate", "address": 0, "function": 4, "data_type": "float32", "word_order": "little"},
    {"name": "pressure", "address": 10, "function": 3, "data_type": "int16", "scale": 0.01},
]


def _meter_registers(flow: float, pressure_centibar: int) -> tuple[list[int], list[int]]:
    holding = [0] * 16
    holding[10] = encode(pressure_centibar, "int16")[0]
    return holding, encode(flow, "float32", word_order="little") + [0] * 6


@pytest.mark.parametrize("transport", ["tcp", "rtu"])
def test_modbus_meter(tmp_path, mqtt, transport):
    holding, inp = _meter_registers(123.25, 412)
    bridge = None
    if transport == "tcp":
        port = free_port()
        meter = ModbusMeter(unit_id=7, holding=holding, input=inp, tcp_port=port).start()
        modbus = {"host": "127.0.0.1", "tcp_port": port}
        source = "modbus-tcp"
    else:
        bridge = PtyBridge()
        meter = ModbusMeter(unit_id=7, holding=holding, input=inp, serial_port=bridge.a.port, baudrate=9600).start()
        modbus = {"port": bridge.b.port, "baudrate": 9600, "parity": "N"}
        source = "modbus-rtu"
    name = f"modbus-{transport}"
    lis = Listener(mqtt, name, f"lis-{name}")
    s = collector_settings(tmp_path, mqtt, name, source=source, interval_s=1,
                           modbus={**modbus, "unit_id": 7, "timeout_s": 1, "retries": 1, "registers": REGISTERS})
    svc, t = start(s)
    try:
        assert wait_for(lambda: len(lis.readings) >= 1), svc.counters.snapshot()
        meter.input[:2] = encode(-5.5, "float32", word_order="little")  # reverse flow: flagged
        meter.holding[10] = encode(-12, "int16")[0]  # signed
        assert wait_for(lambda: any(r.flow_rate == -5.5 for r in lis.readings)), svc.counters.snapshot()
    finally:
        stop(svc, t)
        lis.close()
        meter.stop()
        if bridge:
            bridge.close()
    first = lis.readings[0]
    assert (first.flow_rate, first.pressure, first.quality, first.source) == (123.25, pytest.approx(4.12), (), source)
    last = next(r for r in lis.readings if r.flow_rate == -5.5)
    assert last.pressure == pytest.approx(-0.12) and set(last.quality) == {"flow_rate_out_of_range", "pressure_out_of_range"}


def test_simulator_events_appear_where_scheduled(tmp_path, mqtt):
    from services.collector.simulator import Simulator
    from shared.settings import SimulatorSettings

    start_ts = datetime(2026, 3, 2, 0, 0, tzinfo=UTC)
    sim_cfg = {"seed": 5, "start": start_ts.isoformat()}
    lis = Listener(mqtt, "sim", "lis-sim")
    s = collector_settings(tmp_path, mqtt, "sim", source="simulator", speed=0, simulator=sim_cfg)
    svc, t = start(s)
    n = 9 * 60  # 9 hours of minutes: burst, spike, flat-line, pressure drop and gap
    try:
        assert wait_for(lambda: len(lis.readings) >= n - 15, 30), svc.counters.snapshot()
    finally:
        stop(svc, t)
        lis.close()
    got = {r.ts: r for r in lis.readings}
    sim = Simulator(SimulatorSettings(**sim_cfg), off=s.calendar)  # Mar 2 2026 is a holiday in Seoul: the service's calendar
    sched = {e.kind: e for e in sim.schedule(start_ts)}
    expected = {x.ts: x for x in sim.samples(start_ts, n)}
    for ts, x in expected.items():  # the stream is the model, reading for reading
        assert got[ts].flow_rate == x.flow_rate and got[ts].pressure == x.pressure
    burst = sched["burst"]
    before = [r.flow_rate for ts, r in got.items() if burst.start.replace(minute=0) <= ts < burst.start]
    during = [r.flow_rate for ts, r in got.items() if burst.active(ts)]
    assert min(during) > max(before) + 50  # flow jumps ...
    p_before = [r.pressure for ts, r in got.items() if burst.start.replace(minute=0) <= ts < burst.start]
    p_during = [r.pressure for ts, r in got.items() if burst.active(ts)]
    assert max(p_during) < min(p_before) - 0.5  # ... and pressure falls
    gap = sched["gap"]
    assert not [ts for ts in got if gap.active(ts)] and any(ts >= gap.end for ts in got)
    flat = sched["flatline"]
    assert len({r.pressure for ts, r in got.items() if flat.active(ts)}) == 1
    spike = sched["spike"]
    assert got[spike.start].flow_rate > 2 * got[spike.start.replace(minute=spike.start.minute - 1)].flow_rate
    assert all("simulated" in r.quality for r in got.values())


def test_replay_csv_as_fast_as_possible(tmp_path, mqtt):
    csv = tmp_path / "r.csv"
    csv.write_text("timestamp,flow_rate,pressure\n2026-03-02T00:00:00Z,10.5,3.1\n2026-03-02T00:01:00Z,abc,3.2\n"
                   "2026-03-02T00:02:00Z,,3.3\n2026-03-02T00:03:00Z,50000,3.4\n")
    lis = Listener(mqtt, "replay", "lis-replay")
    s = collector_settings(tmp_path, mqtt, "replay", source="replay", speed=0, replay={"file": str(csv)})
    svc, t = start(s)
    try:
        assert wait_for(lambda: len(lis.readings) == 3 and len(lis.dead) == 1 and svc.finished)
    finally:
        stop(svc, t)
        lis.close()
    assert [r.flow_rate for r in lis.readings] == [10.5, None, 50000]
    assert lis.readings[1].quality == ("flow_rate_missing",) and lis.readings[2].quality == ("flow_rate_out_of_range",)
    assert "line 3" in lis.dead[0].reason and bytes.fromhex(lis.dead[0].payload_hex).startswith(b"2026-03-02T00:01")
