"""Pure parts of the collector: register decoding, frame parsing, simulator, spool."""

from __future__ import annotations

import math
import struct
from datetime import UTC, datetime, timedelta

import pytest

from services.collector.frames import FrameError, ParsedFrame, checksum, parse_frame
from services.collector.quality import range_flags
from services.collector.registers import (
    MAX_REGISTERS_PER_READ,
    ReadBlock,
    RegisterError,
    decode,
    encode,
    plan_reads,
    scaled,
    values_from_blocks,
)
from services.collector.simulator import Simulator
from services.collector.spool import Spool
from shared.settings import FrameFormat, ModbusSettings, RangeLimits, RegisterSpec, Settings, SimEvent, SimulatorSettings

# --- registers ---------------------------------------------------------------------------------


def test_int16_is_signed_and_uint16_is_not():
    assert decode([0xFFFF], "int16") == -1
    assert decode([0x8000], "int16") == -32768
    assert decode([0x7FFF], "int16") == 32767
    assert decode([0xFFFF], "uint16") == 65535
    assert decode([0x0100], "int16", byte_order="little") == 1


@pytest.mark.parametrize(
    ("byte_order", "word_order", "regs"),
    [("big", "big", [0x1234, 0x5678]), ("big", "little", [0x5678, 0x1234]), ("little", "big", [0x3412, 0x7856]), ("little", "little", [0x7856, 0x3412])],
)
def test_uint32_each_byte_and_word_order(byte_order, word_order, regs):
    assert decode(regs, "uint32", byte_order, word_order) == 0x12345678
    assert encode(0x12345678, "uint32", byte_order, word_order) == regs


@pytest.mark.parametrize("byte_order", ["big", "little"])
@pytest.mark.parametrize("word_order", ["big", "little"])
def test_float32_and_int32_round_trip(byte_order, word_order):
    for v in (123.25, -0.5, 0.0, 1e30):
        assert decode(encode(v, "float32", byte_order, word_order), "float32", byte_order, word_order) == struct.unpack(">f", struct.pack(">f", v))[0]
    assert decode(encode(-123456, "int32", byte_order, word_order), "int32", byte_order, word_order) == -123456


def test_float32_abcd_known_bytes():
    assert decode([0x42F6, 0xE979], "float32") == pytest.approx(123.456, rel=1e-6)  # ABCD
    assert decode([0xE979, 0x42F6], "float32", word_order="little") == pytest.approx(123.456, rel=1e-6)  # CDAB


def test_scale_factor_registers_and_extra_values():
    """A SunSpec-style map: values as integers with a power-of-ten factor in another register; the
    factor registers are applied, not returned; any other name is an extra value."""
    specs = [RegisterSpec(name=n, **kw) for n, kw in [
        ("flow_rate", {"address": 0, "data_type": "uint16", "scale_register": "flow_sf"}),
        ("flow_sf", {"address": 1, "data_type": "int16"}),
        ("totalizer", {"address": 2, "data_type": "uint32", "scale_register": "tot_sf", "scale": 0.001}),
        ("tot_sf", {"address": 4, "data_type": "int16"}),
        ("battery", {"address": 5, "data_type": "uint16", "scale": 0.01}),
    ]]
    block = plan_reads(specs)
    assert block == [ReadBlock(3, 0, 6)]
    regs = [12345, encode(-2, "int16")[0], *encode(987654, "uint32"), 1, 361]
    values = values_from_blocks(specs, {block[0]: regs})
    assert values == {"flow_rate": pytest.approx(123.45), "totalizer": pytest.approx(9876.54), "battery": pytest.approx(3.61)}
    # SunSpec's "not implemented" factor (0x8000) makes the value missing, not 10^-32768
    regs[1] = 0x8000
    assert values_from_blocks(specs, {block[0]: regs})["flow_rate"] is None
    assert scaled(5, specs[0], factor=3) == 5000.0


def test_decode_refuses_bad_input():
    with pytest.raises(RegisterError):
        decode([1], "float32")
    with pytest.raises(RegisterError):
        decode([70000], "uint16")


def test_scale_offset_and_nan():
    spec = RegisterSpec(name="pressure", address=0, data_type="int16", scale=0.01, offset=-1.0)
    assert scaled(decode([encode(-250, "int16")[0]], "int16"), spec) == pytest.approx(-3.5)
    assert scaled(float("nan"), RegisterSpec(name="flow_rate", address=0)) is None


def test_plan_merges_neighbours_and_splits_at_125():
    specs = [RegisterSpec(name="flow_rate", address=0, function=4), RegisterSpec(name="pressure", address=2, function=4)]
    assert plan_reads(specs) == [ReadBlock(4, 0, 4)]
    specs = [RegisterSpec(name="flow_rate", address=0, function=3), RegisterSpec(name="pressure", address=10, function=4, data_type="int16")]
    assert plan_reads(specs) == [ReadBlock(3, 0, 2), ReadBlock(4, 10, 1)]
    # A long contiguous map: 100 float32 values = 200 registers, two reads, no value cut in half.
    many = [RegisterSpec(name="flow_rate", address=2 * i, function=3) for i in range(100)]
    blocks = plan_reads(many)
    assert all(b.count <= MAX_REGISTERS_PER_READ for b in blocks) and sum(b.count for b in blocks) == 200
    assert [(b.address, b.count) for b in blocks] == [(0, 124), (124, 76)]
    assert all(any(b.covers(s) for b in blocks) for s in many)
    # Gaps are not read across (they may be invalid addresses on the meter).
    assert len(plan_reads([RegisterSpec(name="flow_rate", address=0), RegisterSpec(name="pressure", address=300)])) == 2


def test_values_from_blocks():
    specs = [RegisterSpec(name="flow_rate", address=0, function=4, word_order="little"), RegisterSpec(name="pressure", address=3, function=4, data_type="uint16", scale=0.001)]
    data = {ReadBlock(4, 0, 4): [*encode(55.5, "float32", word_order="little"), 0, 4321]}
    assert values_from_blocks(specs, data) == {"flow_rate": 55.5, "pressure": pytest.approx(4.321)}


# --- frames ------------------------------------------------------------------------------------


def test_delimited_frame_with_scale():
    fmt = FrameFormat(delimiter=";", flow_rate={"index": 1, "scale": 3.6}, pressure={"index": 2, "scale": 0.01, "offset": 0.0})
    p = parse_frame(b"M1;10.0;345\r\n", fmt)
    assert (p.flow_rate, p.pressure) == (pytest.approx(36.0), pytest.approx(3.45))


def test_regex_frame_and_checksums():
    fmt = FrameFormat(kind="regex", regex=r"Q=(?P<q>\S+) P=(?P<p>\S+)", flow_rate={"group": "q"}, pressure={"group": "p"}, checksum={"kind": "sum8", "separator": "#"})
    body = b"Q=12.5 P=3.2"
    assert parse_frame(body + b"#%02X\n" % checksum("sum8", body), fmt).flow_rate == 12.5
    with pytest.raises(FrameError, match="checksum mismatch"):
        parse_frame(body + b"#00\n", fmt)
    with pytest.raises(FrameError, match="no checksum"):
        parse_frame(body + b"\n", fmt)
    assert checksum("crc16-modbus", b"123456789") == 0x4B37  # the standard check value


@pytest.mark.parametrize(
    ("raw", "reason"),
    [(b"", "empty"), (b"1.0\n", "field"), (b"x,2\n", "not a number"), (b"1e999,2\n", "finite"), (b"\xff,1\n", "not ascii"), (b"1" * 600, "max_bytes"), (b"1,\x002\n", "NUL")],
)
def test_bad_frames_have_reasons(raw, reason):
    with pytest.raises(FrameError, match=reason) as info:
        parse_frame(raw, FrameFormat())
    assert info.value.raw == raw


def test_nan_and_empty_fields_are_missing_values():
    p = parse_frame(b"NaN,\n", FrameFormat())
    assert (p.flow_rate, p.pressure) == (None, None)


def test_frame_config_is_validated():
    with pytest.raises(ValueError, match="named group"):
        FrameFormat(kind="regex", regex=r"(?P<a>\d+)", flow_rate={"group": "a"}, pressure={"group": "b"})
    with pytest.raises(ValueError, match="collector.serial.port"):
        Settings(collector={"source": "serial"})
    with pytest.raises(ValueError, match="signal 'pressure' has no register"):
        Settings(collector={"source": "modbus-tcp", "modbus": {"host": "10.0.0.7", "registers": [{"name": "flow_rate", "address": 0}]}})
    # a flow-only meter needs no pressure register; an extra value is any other name, each named once
    s = Settings(meters=[{"id": "inlet", "signals": ["flow_rate"]}],
                 collector={"source": "modbus-tcp", "modbus": {"host": "10.0.0.7", "registers": [
                     {"name": "flow_rate", "address": 0}, {"name": "totalizer", "address": 2, "data_type": "uint32"}]}})
    assert [r.name for r in s.meter_source("inlet").cfg.registers] == ["flow_rate", "totalizer"]
    with pytest.raises(ValueError, match="names 'flow_rate' twice"):
        ModbusSettings(registers=[{"name": "flow_rate", "address": 0}, {"name": "flow_rate", "address": 2}])
    with pytest.raises(ValueError, match="scale_register 'sf' is not another register"):
        ModbusSettings(registers=[{"name": "flow_rate", "address": 0, "scale_register": "sf"}])


def test_range_flags():
    lim = RangeLimits()
    assert range_flags(10, 3, lim) == ()
    assert range_flags(-1, 99, lim) == ("flow_rate_out_of_range", "pressure_out_of_range")
    assert range_flags(math.nan, None, lim) == ("flow_rate_missing", "pressure_missing")
    # a flow-only meter: its absent pressure is not missing, its flow still is
    assert range_flags(math.nan, None, lim, ("flow_rate",)) == ("flow_rate_missing",)
    assert range_flags(12.0, None, lim, ("flow_rate",)) == ()


# --- simulator ---------------------------------------------------------------------------------

T0 = datetime(2026, 3, 2, tzinfo=UTC)  # a Monday, 09:00 in Seoul


def test_simulator_is_deterministic_and_realistic():
    cfg = SimulatorSettings(default_events=False)
    a = list(Simulator(cfg, seed=1).samples(T0, 7 * 1440))
    assert a == list(Simulator(cfg, seed=1).samples(T0, 7 * 1440))
    assert a != list(Simulator(cfg, seed=2).samples(T0, 7 * 1440))
    tz = Simulator(cfg).tz
    night = [s.flow_rate for s in a if 2 <= s.ts.astimezone(tz).hour < 4]
    morning = [s.flow_rate for s in a if 7 <= s.ts.astimezone(tz).hour < 9]
    assert sum(night) / len(night) < 0.7 * sum(morning) / len(morning)
    # pressure = head - k Q²: higher flow, lower pressure
    hi = [s.pressure for s in a if s.flow_rate > 160]
    lo = [s.pressure for s in a if s.flow_rate < 90]
    assert max(hi) < min(lo)
    weekday = [s.flow_rate for s in a if s.ts.astimezone(tz).weekday() < 5]
    weekend = [s.flow_rate for s in a if s.ts.astimezone(tz).weekday() >= 5]
    assert sum(weekend) / len(weekend) < sum(weekday) / len(weekday)


def test_simulator_events_and_readings_api():
    cfg = SimulatorSettings(default_events=False, events=[SimEvent(kind="leak", at_minutes=60, duration_minutes=600, magnitude=20), SimEvent(kind="pressure_drop", at_minutes=30, duration_minutes=10)])
    sim = Simulator(cfg, seed=4)
    base = {s.ts: s for s in Simulator(SimulatorSettings(default_events=False), seed=4).samples(T0, 1440)}
    got = {s.ts: s for s in sim.samples(T0, 1440)}
    assert got[T0 + timedelta(minutes=59)].flow_rate == base[T0 + timedelta(minutes=59)].flow_rate
    assert got[T0 + timedelta(minutes=700)].flow_rate == pytest.approx(base[T0 + timedelta(minutes=700)].flow_rate + 20, abs=0.01)
    assert got[T0 + timedelta(minutes=35)].pressure < base[T0 + timedelta(minutes=35)].pressure - 1.4
    readings = list(sim.readings(T0, 10, site="s", meter="m", first_seq=5))
    assert [r.seq for r in readings] == list(range(5, 15)) and readings[0].ts == T0 and "simulated" in readings[0].quality
    fast = Simulator(cfg, seed=4, interval_s=1)
    assert len(list(fast.samples(T0, 120))) == 120


# --- spool -------------------------------------------------------------------------------------


def test_spool_is_durable_ordered_and_bounded(tmp_path, caplog):
    sp = Spool(tmp_path / "spool.db", max_rows=100)
    for i in range(130):
        sp.put("t", b"%d" % i, i + 1)
    assert len(sp) == 100 and sp.dropped == 30
    assert any("spool full" in r.message for r in caplog.records)
    rows = sp.after(0, 5)
    assert [r.payload for r in rows] == [b"30", b"31", b"32", b"33", b"34"]
    sp.remove([rows[0].id, rows[1].id])
    sp.close()
    again = Spool(tmp_path / "spool.db", max_rows=100)
    assert len(again) == 98 and again.next_seq() == 130
    assert again.after(0, 1)[0].payload == b"32"
    again.close()


# --- meters as a list ----------------------------------------------------------------------------


def test_a_flow_only_serial_meter_has_no_pressure_field():
    fmt = FrameFormat(pressure=None)
    assert parse_frame(b"12.5\n", fmt) == ParsedFrame(12.5, None)
    with pytest.raises(ValueError, match="both null"):
        FrameFormat(flow_rate=None, pressure=None)
    # the meter's signals must each have a field of the frame
    s = Settings(meters=[{"id": "amr", "signals": ["flow_rate"], "source": "serial", "serial": {"port": "/dev/ttyUSB1", "frame": {"pressure": None}}}])
    assert s.meter_source("amr").cfg.frame.pressure is None and s.meter_source("amr").cfg.port == "/dev/ttyUSB1"
    with pytest.raises(ValueError, match=r"meters\[0\] \(amr\): signal 'pressure' has no field"):
        Settings(meters=[{"id": "amr", "source": "serial", "serial": {"port": "/dev/ttyUSB1", "frame": {"pressure": None}}}])


def test_meters_get_their_own_source_keys_merged_over_the_collectors():
    s = Settings(collector={"source": "modbus-rtu", "modbus": {"port": "/dev/ttyUSB0", "baudrate": 19200}},
                 meters=[{"id": "a", "modbus": {"unit_id": 1}}, {"id": "b", "modbus": {"unit_id": 2}},
                         {"id": "c", "source": "modbus-tcp", "modbus": {"host": "10.0.0.7"}}, {"id": "sim", "source": "simulator"}])
    a, b, c = (s.meter_source(m).cfg for m in "abc")
    assert (a.unit_id, b.unit_id, a.port, b.port, b.baudrate) == (1, 2, "/dev/ttyUSB0", "/dev/ttyUSB0", 19200)
    assert s.meter_source("c").kind == "modbus-tcp" and c.host == "10.0.0.7"
    assert s.meter_source("sim").cfg.seed == s.collector.simulator.seed + 3  # its own stream
    # errors name the meter and the key
    with pytest.raises(ValueError, match=r"meters\[1\] \(b\): its modbus keys .* unit_id: Input should be less than or equal to 247"):
        Settings(collector={"source": "modbus-rtu", "modbus": {"port": "/dev/ttyUSB0"}}, meters=[{"id": "a"}, {"id": "b", "modbus": {"unit_id": 300}}])
    with pytest.raises(ValueError, match=r"meters\[0\] \(a\): source 'modbus-tcp' needs modbus.host"):
        Settings(meters=[{"id": "a", "source": "modbus-tcp"}])


def test_several_simulated_meters_have_their_own_streams():
    from services.collector.sources import make_source

    s = Settings(meters=[{"id": "a"}, {"id": "b"}, {"id": "c", "simulator": {"seed": 42, "mean_flow": 40}}],
                 collector={"simulator": {"start": "2026-03-02T00:00:00Z"}})
    srcs = {m: make_source(s, m) for m in s.meter_ids}
    for src in srcs.values():
        src.open()
    first = {m: [src.read(0).flow_rate for _ in range(5)] for m, src in srcs.items()}
    assert first["a"] != first["b"]  # seeds 42 and 43
    assert sum(first["c"]) < sum(first["a"]) / 2  # the same seed as a, a third of the demand


def test_meters_share_a_port_only_as_modbus_units_of_their_own():
    rtu = {"source": "modbus-rtu", "modbus": {"port": "/dev/ttyUSB0"}}
    with pytest.raises(ValueError, match=r"meters 'a' and 'b' are both unit 1 at /dev/ttyUSB0"):
        Settings(collector=rtu, meters=[{"id": "a"}, {"id": "b"}])
    with pytest.raises(ValueError, match=r"meters 'a' and 'b' both use serial port /dev/ttyUSB0"):
        Settings(collector=rtu, meters=[{"id": "a"}, {"id": "b", "source": "serial", "serial": {"port": "/dev/ttyUSB0"}}])
    with pytest.raises(ValueError, match=r"both unit 5 at 10.0.0.7:502"):
        Settings(meters=[{"id": m, "source": "modbus-tcp", "modbus": {"host": "10.0.0.7", "unit_id": 5}} for m in "ab"])
    Settings(collector=rtu, meters=[{"id": "a"}, {"id": "b", "modbus": {"unit_id": 2}},
                                    {"id": "c", "source": "modbus-tcp", "modbus": {"host": "10.0.0.7"}}])


def test_spool_keeps_each_meters_next_sequence_number(tmp_path):
    """Each meter's sequence goes on across restarts; a meter new to the spool starts from the spool's
    first key (a one-meter collector's spool: the meter that was there keeps counting up)."""
    path = tmp_path / "spool.db"
    sp = Spool(path, 100)
    sp.put_many("t/a", [(0, 1, b"a0"), (1, 2, b"a1")], 2)  # the first meter: key next_seq
    sp.put_many("t/b", [(0, 1, b"b0")], 1, "next_seq/b")
    sp.close()
    sp = Spool(path, 100)
    assert (sp.next_seq(), sp.next_seq("next_seq/b"), sp.next_seq("next_seq/c")) == (2, 1, 2)
    assert sp.remove_stored("t/b", [(0, 0, 1, 1)]) == 1 and len(sp) == 2  # receipts per meter's topic
    sp.close()


def test_the_simulated_meter_runs_a_public_holiday_like_a_weekend_day():
    # Monday Mar 2 2026 is a holiday in Korea (the substitute for March 1st); Tuesday is not.
    from shared.eventtime import DaysOff
    from shared.settings import Settings

    cfg = SimulatorSettings(default_events=False, noise=0.0)
    tz = Simulator(cfg).tz
    start = datetime(2026, 3, 1, 15, 0, tzinfo=UTC)  # Monday 00:00 local

    def daily(off) -> list[float]:
        s = list(Simulator(cfg, seed=1, off=off).samples(start, 2 * 1440))
        return [sum(x.flow_rate for x in s if x.ts.astimezone(tz).day == d) / 1440 for d in (2, 3)]

    (mon, tue), (mon_kr, tue_kr) = daily(DaysOff()), daily(Settings().calendar)
    assert mon == pytest.approx(tue, rel=0.02) and tue_kr == pytest.approx(tue, rel=0.02)
    assert mon_kr == pytest.approx(mon * cfg.weekend_factor, rel=0.02)
