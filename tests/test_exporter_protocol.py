"""The device protocol (pure): integrity check, formats, window and hour-row semantics."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from services.exporter import protocol
from services.exporter.state import MeterState
from shared.eventtime import BoundaryClock
from shared.messages import Anomaly, Forecast, Reading
from tests.exporter_check import crc16_modbus_bitwise, verify

TZ = ZoneInfo("Asia/Seoul")
M = timedelta(minutes=1)
T10 = datetime(2026, 3, 1, 10, 0, tzinfo=TZ).astimezone(UTC)  # 10:00 local
DOC = Path(__file__).resolve().parents[1] / "docs" / "protocol.md"
NUM = re.compile(r"^(-?\d{1,9}\.\d{3}|NULL)$")  # at most 14 characters


def reading(t: datetime, flow: float | None = 10.0, pressure: float | None = 3.0, seq: int = 0) -> Reading:
    return Reading(site="s1", meter="m1", ts=t, seq=seq, flow_rate=flow, pressure=pressure)


def forecast(issued: datetime, signal: str, values: list[float], step: int = 10) -> Forecast:
    return Forecast(site="s1", meter="m1", signal=signal, issued_at=issued, step_minutes=step, values=tuple(values), model="t")


def feed(ms: MeterState, clock: BoundaryClock, r: Reading) -> bytes | None:
    """What the service does with a reading: the server file of the window it closes, if any."""
    crossed = clock.advance(r.ts, ("10min",))
    ms.add_reading(r)
    if "10min" in crossed:
        return ms.compose_server(crossed["10min"] - timedelta(minutes=10))
    return None


def rows_of(data: bytes) -> list[list[str]]:
    return [line.split(",") for line in protocol.check(data) if line.startswith("ROW,")]


# --- the integrity check, against an independent implementation --------------------------------
def test_independent_crc_matches_the_standard_check_value():
    assert crc16_modbus_bitwise(b"123456789") == 0x4B37  # CRC-16/MODBUS catalogue check value
    assert protocol.crc16_modbus(b"123456789") == 0x4B37


def test_exporter_crc_agrees_with_the_independent_one():
    import random

    rng = random.Random(6)
    for n in [0, 1, 2, 255, 256, 1000]:
        data = bytes(rng.randrange(256) for _ in range(n))
        assert protocol.crc16_modbus(data) == crc16_modbus_bitwise(data)


@pytest.mark.parametrize("name", ["alert_clear", "alert_active", "server"])
def test_every_example_passes_the_independent_check(name):
    data = protocol.examples()[name]
    assert verify(data)
    data.decode("ascii")  # ASCII only


@pytest.mark.parametrize("name", ["alert_active", "server"])
def test_any_truncation_or_bit_flip_fails_the_check(name):
    data = protocol.examples()[name]
    for cut in range(len(data)):  # every torn prefix
        assert not verify(data[:cut]), cut
        with pytest.raises(protocol.IntegrityError):
            protocol.check(data[:cut])
    for i in range(0, len(data) - 12, 7):  # a flipped bit anywhere before the CRC line
        bad = bytearray(data)
        bad[i] ^= 0x10
        assert not verify(bytes(bad)), i


def test_line_format_crlf_tags_and_version():
    for data in protocol.examples().values():
        assert b"\n" not in data.replace(b"\r\n", b"")
        lines = data.split(b"\r\n")
        assert lines[-1] == b""
        assert lines[0] in tuple(b"FLOWWATCH,%s,%d" % (k, protocol.PROTOCOL_VERSION) for k in (b"ALERT", b"SERVER", b"FORECAST"))
        assert lines[-2].startswith(b"CRC,")
        assert re.fullmatch(rb"CRC,\d+,[0-9A-F]{4}", lines[-2])


# --- server.txt semantics ----------------------------------------------------------------------
def test_reading_at_10_00_fills_the_prediction_columns_and_10_01_does_not():
    ms, clock = MeterState("s1", "m1", TZ), BoundaryClock(TZ)
    # forecast issued at 09:00 (targets 09:10 .. 10:00) and one issued at 10:00 (targets 10:10 ..)
    ms.add_forecast(forecast(T10 - 60 * M, "flow_rate", [1, 2, 3, 4, 5, 42.5]))
    ms.add_forecast(forecast(T10 - 60 * M, "pressure", [1, 1, 1, 1, 1, 3.25]))
    ms.add_forecast(forecast(T10, "flow_rate", [99, 99, 99, 99, 99, 99]))
    out = [feed(ms, clock, reading(T10 - M + i * M, flow=20.0 + i)) for i in range(12)]  # 09:59 .. 10:10
    written = [o for o in out if o is not None]
    assert len(written) == 2  # 10:00 closes [09:50, 10:00); 10:10 closes [10:00, 10:10)
    assert out[1] is not None and out[11] is not None
    rows = rows_of(out[11])
    assert [r[1] for r in rows] == [f"2026-03-01T10:{m:02d}:00+09:00" for m in range(10)]
    assert rows[0][2:] == ["21.000", "3.000", "0", "42.500", "3.250", "0"]  # 10:00: the value targeted at 10:00
    assert rows[1][2:] == ["22.000", "3.000", "0", "NULL", "NULL", "0"]  # 10:01: no prediction
    assert all(r[5:7] == ["NULL", "NULL"] for r in rows[1:])
    # the window closed by 10:00 has no hour row: no prediction anywhere
    assert all(r[5:7] == ["NULL", "NULL"] for r in rows_of(out[1]))


def test_hour_row_takes_the_latest_issued_forecast_for_that_target():
    ms = MeterState("s1", "m1", TZ)
    ms.add_forecast(forecast(T10 - 120 * M, "flow_rate", [7.0] * 12))  # 08:00, 2 h horizon: 10:00 = 7
    ms.add_forecast(forecast(T10 - 60 * M, "flow_rate", [8.0] * 6))  # 09:00: 10:00 = 8 (newer)
    ms.add_forecast(forecast(T10 - 120 * M, "flow_rate", [7.0] * 12))  # redelivery of the older one
    rows = rows_of(ms.compose_server(T10))
    assert rows[0][5:7] == ["8.000", "NULL"]


def test_gap_gives_null_rows_never_missing_rows():
    ms, clock = MeterState("s1", "m1", TZ), BoundaryClock(TZ)
    feed(ms, clock, reading(T10 - M))
    feed(ms, clock, reading(T10 + 2 * M, flow=None, pressure=2.5))  # flow missing at 10:02
    data = feed(ms, clock, reading(T10 + 10 * M))  # 10:03 .. 10:09 never arrived
    rows = rows_of(data)
    assert len(rows) == 10
    assert rows[0][2:4] == ["NULL", "NULL"] and rows[1][2:4] == ["NULL", "NULL"]
    assert rows[2][2:4] == ["NULL", "2.500"]
    assert all(r[2:4] == ["NULL", "NULL"] for r in rows[3:])
    assert b",10,\r\n" not in data and b"WINDOW,2026-03-01T10:00:00+09:00,2026-03-01T10:10:00+09:00,10\r\n" in data


def test_long_gap_writes_the_latest_closed_window_all_null():
    ms, clock = MeterState("s1", "m1", TZ), BoundaryClock(TZ)
    feed(ms, clock, reading(T10))
    data = feed(ms, clock, reading(T10 + 35 * M))  # crosses 10:10, 10:20, 10:30: the latest is written
    assert b"WINDOW,2026-03-01T10:20:00+09:00,2026-03-01T10:30:00+09:00,10\r\n" in data
    assert all(r[2:4] == ["NULL", "NULL"] for r in rows_of(data))


def test_numbers_are_fixed_point_and_flags_are_bitmasks():
    ms = MeterState("s1", "m1", TZ)
    ms.add_reading(reading(T10, flow=1234.56789, pressure=-0.0000001))
    ms.add_reading(reading(T10 + M, flow=1e-9, pressure=16.0))
    ms.add_anomaly(Anomaly(site="s1", meter="m1", kind="spike", signal="flow_rate", severity="warning", state="closed",
                           start=T10 + M, end=T10 + M, ts=T10 + 2 * M))
    ms.add_anomaly(Anomaly(site="s1", meter="m1", kind="burst", signal="both", severity="critical", state="open",
                           start=T10 + M, ts=T10 + M))
    rows = rows_of(ms.compose_server(T10))
    assert rows[0][2:5] == ["1234.568", "0.000", "0"]
    assert rows[1][2:5] == ["0.000", "16.000", str(protocol.FLAG_BITS["spike"] | protocol.FLAG_BITS["burst"])]
    assert rows[2][4] == str(protocol.FLAG_BITS["burst"])  # the spike ended, the burst is still open
    for r in rows:
        assert all(NUM.match(v) for v in (r[2], r[3], r[5], r[6]))
        assert r[7] == "0"  # nothing withheld


@pytest.mark.parametrize("value, text, withheld", [
    (1e308, "NULL", True),  # once: a 309-digit field, no flag
    (-1e308, "NULL", True),
    (float("nan"), "NULL", True),
    (float("inf"), "NULL", True),
    (float("-inf"), "NULL", True),
    (1e9, "NULL", True),
    (999_999_999.9996, "NULL", True),  # rounds to ten digits
    (999_999_999.999, "999999999.999", False),
    (-999_999_999.999, "-999999999.999", False),
    (None, "NULL", False),  # missing: NULL, but nothing withheld
    (-0.0001, "0.000", False),
])
def test_a_number_the_format_cannot_carry_is_null_and_withheld(value, text, withheld):
    assert protocol.number(value) == (text, withheld)


def test_absurd_values_in_both_files_are_null_with_the_withheld_bit_and_keep_the_width():
    ms = MeterState("s1", "m1", TZ)
    ms.put_reading(T10, 1e308, 3.0)  # a meter gone wrong
    ms.put_reading(T10 + M, 12.0, -1e300)
    ms.put_reading(T10 + 2 * M, float("nan"), None)  # NaN cannot come over MQTT, a store read could
    ms.add_prediction("flow_rate", T10, T10 - 60 * M, 1e15)  # a model gone wrong
    ms.add_prediction("pressure", T10, T10 - 60 * M, 2.5)
    data = ms.compose_server(T10)
    rows = rows_of(data)
    assert rows[0][2:] == ["NULL", "3.000", "0", "NULL", "2.500", "5"]  # flow (1) + predicted flow (4)
    assert rows[1][2:] == ["12.000", "NULL", "0", "NULL", "NULL", "2"]
    assert rows[2][2:] == ["NULL", "NULL", "0", "NULL", "NULL", "1"]  # NaN withheld, None just missing
    assert all(r[7] == "0" for r in rows[3:])
    assert max(len(x) for x in data.split(b"\r\n")) < 120  # every line within its normal width
    a = Anomaly(site="s1", meter="m1", kind="invalid", signal="flow_rate", severity="warning", state="open",
                start=T10, ts=T10, value=1e308, threshold=2000.0)
    ms.add_anomaly(a)
    alert = protocol.check(ms.compose_alert())
    assert "ALERT,invalid,flow_rate,warning,2026-03-01T10:00:00+09:00,NULL,2000.000,1" in alert
    assert all(len(x) < 120 for x in alert)


def test_alert_states_clear_and_active():
    ms = MeterState("s1", "m1", TZ)
    ms.add_reading(reading(T10 + 30 * 1 * timedelta(seconds=1)))
    clear = protocol.check(ms.compose_alert())
    assert "STATUS,NONE,0" in clear and "ASOF,2026-03-01T10:00:00+09:00" in clear
    assert not [x for x in clear if x.startswith("ALERT,")]
    a = Anomaly(site="s1", meter="m1", kind="pressure_loss", signal="pressure", severity="warning", state="open",
                start=T10, ts=T10 + M, value=1.5, threshold=2.0)
    ms.add_anomaly(a)
    lines = protocol.check(ms.compose_alert())
    assert "STATUS,WARNING,1" in lines
    assert "ALERT,pressure_loss,pressure,warning,2026-03-01T10:00:00+09:00,1.500,2.000,0" in lines
    assert "ASOF,2026-03-01T10:01:00+09:00" in lines
    ms.add_anomaly(a.model_copy(update={"state": "closed", "end": T10 + 2 * M, "ts": T10 + 2 * M}))
    ms.add_anomaly(a)  # a late redelivery of the older "open" update does not reopen it
    assert "STATUS,NONE,0" in protocol.check(ms.compose_alert())


def test_local_offset_follows_dst():
    tz = ZoneInfo("Europe/Berlin")
    ms = MeterState("s1", "m1", tz)
    start = datetime(2026, 10, 25, 0, 55, tzinfo=UTC)  # 02:55 CEST; at 01:00 UTC clocks go back to 02:00 CET
    lines = protocol.check(ms.compose_server(start))
    rows = [x for x in lines if x.startswith("ROW,")]
    assert rows[0].startswith("ROW,2026-10-25T02:55:00+02:00") and rows[5].startswith("ROW,2026-10-25T02:00:00+01:00")


# --- docs/protocol.md shows exactly what the code writes ---------------------------------------
def test_protocol_doc_contains_the_generated_examples():
    doc = DOC.read_text(encoding="utf-8")
    for name, data in protocol.examples().items():
        text = data.decode("ascii").replace("\r\n", "\n")
        assert text in doc, f"docs/protocol.md is out of date for example {name!r}: regenerate with python -m services.exporter.protocol"
    assert f"version {protocol.PROTOCOL_VERSION}" in doc.lower()


def test_the_c_reference_in_the_doc_compiles_and_agrees(tmp_path):
    """The device-side C snippet of docs/protocol.md accepts a real file and rejects a torn one."""
    import shutil
    import subprocess

    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler on this machine")
    doc = DOC.read_text(encoding="utf-8")
    code = doc.split("```c\n", 1)[1].split("```", 1)[0]
    code += (
        "#include <stdio.h>\n"
        "int main(int argc, char **argv) { static uint8_t b[65536]; FILE *f = fopen(argv[1], \"rb\");\n"
        "  size_t n = fread(b, 1, sizeof b, f); fclose(f);\n"
        "  printf(\"%04X %d %d\\n\", crc16_modbus((const uint8_t *)\"123456789\", 9), flowwatch_file_ok(b, n),"
        " flowwatch_version(b, n)); return 0; }\n"
    )
    (tmp_path / "fw.c").write_text(code)
    subprocess.run([cc, "-std=c99", "-Wall", "-Werror", "-o", str(tmp_path / "fw"), str(tmp_path / "fw.c")], check=True)
    data = protocol.examples()["server"]
    v = protocol.PROTOCOL_VERSION
    lines = [ln + b"\r\n" for ln in protocol.examples()["forecast"].split(b"\r\n")[:-2]]
    lines[0] = b"FLOWWATCH,FORECAST,%d\r\n" % (v - 1)
    older = protocol._seal(lines)
    assert verify(older)  # intact, but of the previous version: the device refuses it
    cases = [("ok", data, f"4B37 1 {v}"), ("torn", data[:-5], f"4B37 0 {v}"), ("cut", data[:300], f"4B37 0 {v}"),
             ("forecast", protocol.examples()["forecast"], f"4B37 1 {v}"), ("older", older, f"4B37 0 {v - 1}")]
    for name, content, expect in cases:
        (tmp_path / name).write_bytes(content)
        out = subprocess.run([str(tmp_path / "fw"), str(tmp_path / name)], capture_output=True, text=True, check=True).stdout
        assert out.strip() == expect, name


# --- protocol 3: forecast.txt, one-shot events held in alert.txt ---------------------------------
def test_forecast_file_holds_every_step_of_the_latest_forecast():
    ms = MeterState("s1", "m1", TZ)
    assert ms.compose_forecast() is None  # no forecast yet: no file
    ms.add_forecast(forecast(T10 - 60 * M, "flow_rate", [5.0] * 6))
    ms.add_forecast(forecast(T10, "flow_rate", [1, 2, 3, 4, 5, 6]))
    ms.add_forecast(forecast(T10, "pressure", [3.0, 3.1, 3.2, 3.3, 3.4, 1e12]))
    ms.add_forecast(forecast(T10 - 60 * M, "pressure", [9.0] * 6))  # a late redelivery of an older one
    issued, data = ms.compose_forecast()
    assert issued == T10 and verify(data)
    lines = protocol.check(data)
    assert lines[0] == f"FLOWWATCH,FORECAST,{protocol.PROTOCOL_VERSION}"
    assert lines[2] == "ISSUED,2026-03-01T10:00:00+09:00,6"
    rows = [ln.split(",") for ln in lines if ln.startswith("ROW,")]
    assert [r[1][11:16] for r in rows] == ["10:10", "10:20", "10:30", "10:40", "10:50", "11:00"]
    assert [r[2] for r in rows] == ["1.000", "2.000", "3.000", "4.000", "5.000", "6.000"]
    assert rows[0][3:] == ["3.000", "0"] and rows[5][3:] == ["NULL", "2"]  # beyond the format: withheld


def test_flow_only_forecast_file_has_null_pressure_and_follows_the_step():
    ms = MeterState("s1", "m1", TZ)
    ms.add_forecast(forecast(T10, "flow_rate", [10.0, 11.0, 12.0, 13.0], step=15))
    rows = [ln.split(",") for ln in protocol.check(ms.compose_forecast()[1]) if ln.startswith("ROW,")]
    assert [r[1][11:16] for r in rows] == ["10:15", "10:30", "10:45", "11:00"]
    assert all(r[3] == "NULL" and r[4] == "0" for r in rows)


def _spike(start: datetime) -> Anomaly:
    return Anomaly(site="s1", meter="m1", kind="spike", signal="flow_rate", severity="info", state="closed",
                   start=start, end=start, ts=start, value=400.0, threshold=95.0)


def test_a_one_shot_event_stays_in_alert_txt_for_the_hold_time():
    ms = MeterState("s1", "m1", TZ, hold=10 * M)
    ms.add_reading(reading(T10))
    ms.add_anomaly(_spike(T10 + timedelta(seconds=30)))

    def status() -> str:
        return next(ln for ln in protocol.check(ms.compose_alert()) if ln.startswith("STATUS,"))

    assert status() == "STATUS,INFO,1"
    ms.add_reading(reading(T10 + 10 * M))  # 9.5 minutes after the spike: still held
    assert status() == "STATUS,INFO,1"
    ms.add_reading(reading(T10 + 11 * M))  # past the hold
    assert status() == "STATUS,NONE,0"
    closed = Anomaly(site="s1", meter="m1", kind="flatline", signal="pressure", severity="warning", state="closed",
                     start=T10, end=T10 + 11 * M, ts=T10 + 11 * M)
    ms.add_anomaly(closed)  # a state that closed is not held: only events are
    assert status() == "STATUS,NONE,0"
    no_hold = MeterState("s1", "m1", TZ)
    no_hold.add_anomaly(_spike(T10))
    assert b"STATUS,NONE,0" in no_hold.compose_alert()


@pytest.mark.parametrize("interval_s, window, row", [(1, 10, 1), (60, 10, 1), (120, 10, 2), (300, 10, 5), (900, 60, 15),
                                                     (1200, 60, 20), (3600, 60, 60), (420, 10, 10)])
def test_server_rows_follow_the_meter_interval(interval_s, window, row):
    assert protocol.server_layout(interval_s) == (window, row)


def test_a_15_minute_meter_gets_an_hourly_server_file_of_four_rows():
    ms, clock = MeterState("s1", "m1", TZ, interval_s=900), BoundaryClock(TZ)

    def feed15(r: Reading) -> bytes | None:
        crossed = clock.advance(r.ts, (ms.period,))
        ms.add_reading(r)
        return ms.compose_server(crossed[ms.period] - ms.window) if ms.period in crossed else None

    ms.add_forecast(forecast(T10 - 60 * M, "flow_rate", [1.0, 2.0, 3.0, 42.0], step=15))
    out = [feed15(reading(T10 + k * 15 * M + 20 * timedelta(seconds=1), flow=30.0 + k)) for k in range(5)]  # 10:00:20 .. 11:00:20
    assert out[:4] == [None] * 4 and out[4] is not None
    lines = protocol.check(out[4])
    assert lines[2] == "WINDOW,2026-03-01T10:00:00+09:00,2026-03-01T11:00:00+09:00,4"
    rows = rows_of(out[4])
    assert [r[1][11:16] for r in rows] == ["10:00", "10:15", "10:30", "10:45"]
    assert [r[2] for r in rows] == ["30.000", "31.000", "32.000", "33.000"]
    assert rows[0][5] == "42.000" and rows[1][5] == "NULL"  # the hour row: the value targeted at 10:00


def test_every_anomaly_kind_has_its_own_flag_bit():
    """A kind added to the message contract without a bit would be written as 0 in server.txt."""
    from typing import get_args

    from shared.messages import AnomalyKind

    kinds = set(get_args(AnomalyKind))
    assert kinds == set(protocol.FLAG_BITS), f"kinds without a flag bit: {kinds - set(protocol.FLAG_BITS)}"
    bits = list(protocol.FLAG_BITS.values())
    assert len(set(bits)) == len(bits) and all(b & (b - 1) == 0 for b in bits)
