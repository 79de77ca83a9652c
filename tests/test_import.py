"""`flowwatch import` through the real CLI into a real SQLite file (and the parser in unit tests)."""

import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from shared.readings_csv import parse_chunk, read_all, read_chunks
from shared.readings_csv_rows import NotPlain, read_rows
from shared.settings import RangeLimits
from shared.store.sqlite import SqliteStore

ROOT = Path(__file__).resolve().parents[1]

CSV = """timestamp,flow_rate,pressure
2026-03-01T00:00:00Z,10.5,3.2
2026-03-01T00:01:00Z,11.0,3.1
2026-03-01T00:02:00+09:00,12.0,3.0
not-a-time,1,2
2026-03-01T00:04:00Z,abc,3.0
2026-03-01T00:05:00Z,,3.0
2026-03-01T00:06:00Z,nan,3.0
2026-03-01T00:07:00Z,99999,3.0
2026-03-01T00:08:00Z,1e400,3.0
2026-03-01T00:09:00,13.0,2.9
"""


def run_import(tmp_path, text, *extra):
    f = tmp_path / "r.csv"
    f.write_text(text)
    cfg = tmp_path / "fw.yaml"
    cfg.write_text(f"data_dir: {tmp_path / 'var'}\nsite: s1\nmeter: m1\n")
    r = subprocess.run([sys.executable, "-m", "app.cli", "import", str(f), "-c", str(cfg), "--quiet", *extra],
                       capture_output=True, text=True, cwd=ROOT)
    return r, SqliteStore(tmp_path / "var" / "flowwatch.db")


@pytest.mark.faults  # issue 14: a hostile or broken input, through the real parts
def test_import_good_and_bad_rows(tmp_path):
    r, store = run_import(tmp_path, CSV)
    assert r.returncode == 1, r.stderr  # some rows rejected
    assert "imported 6 rows" in r.stdout and "6 inserted, 0 identical" in r.stdout and "4 rejected" in r.stdout
    again, _ = run_import(tmp_path, CSV.replace("2026-03-01T00:09:00,13.0", "2026-03-01T00:09:00,14.0"))
    assert "0 inserted, 5 identical to the stored ones, 1 conflicting" in again.stdout, again.stdout
    for line, word in ((5, "timestamp"), (6, "flow_rate 'abc'"), (8, "flow_rate 'nan'"), (10, "flow_rate '1e400'")):
        assert f"line {line}: " in r.stderr and word in r.stderr, (line, r.stderr)
    rejects = pd.read_csv(tmp_path / "r.rejects.csv")
    assert rejects["line"].tolist() == [5, 6, 8, 10]
    df = store.read_readings("s1", "m1", datetime(2026, 2, 28, tzinfo=UTC), datetime(2026, 3, 2, tzinfo=UTC))
    assert len(df) == 6
    assert df.index[0] == pd.Timestamp("2026-02-28T15:02:00Z")  # +09:00 converted to UTC
    row = df.loc[pd.Timestamp("2026-03-01T00:05:00Z")]
    assert np.isnan(row["flow_rate"]) and row["quality"] == "flow_rate_missing"
    assert df.loc[pd.Timestamp("2026-03-01T00:07:00Z"), "quality"] == "flow_rate_out_of_range"
    assert pd.Timestamp("2026-03-01T00:09:00Z") in df.index  # naive read as UTC by default


def test_import_clean_file_exit_0_and_idempotent(tmp_path):
    text = "timestamp,flow_rate,pressure\n" + "".join(f"2026-03-01T00:{m:02d}:00Z,{m}.5,3.0\n" for m in range(60))
    r, store = run_import(tmp_path, text)
    assert r.returncode == 0, r.stderr
    r, store = run_import(tmp_path, text)  # again: nothing duplicated
    assert r.returncode == 0
    assert len(store.read_readings("s1", "m1", datetime(2026, 3, 1, tzinfo=UTC), datetime(2026, 3, 2, tzinfo=UTC))) == 60


def test_import_an_unknown_naive_tz_is_a_clear_error(tmp_path):
    r, _ = run_import(tmp_path, "timestamp,flow_rate,pressure\n2026-03-01 00:00:00,1,2\n", "--naive-tz", "Mars/Base")
    assert r.returncode == 2 and "--naive-tz: 'Mars/Base' is not a time zone" in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_import_bad_header(tmp_path):
    r, _ = run_import(tmp_path, "time,flow\n1,2\n")
    assert r.returncode == 2 and "missing column" in r.stderr


@pytest.mark.faults  # issue 14: a hostile or broken input, through the real parts
def test_import_site_id_follows_the_config_rule(tmp_path):
    # an id no message can carry is refused before anything is written, naming the option's key
    r, _ = run_import(tmp_path, "timestamp,flow_rate,pressure\n2026-03-01T00:00:00Z,1,2\n", "--site", "s" * 65)
    assert r.returncode == 2 and "site: String should have at most 64 characters" in r.stderr, r.stderr
    assert "imported" not in r.stdout


@pytest.mark.faults  # issue 14: a hostile or broken input, through the real parts
def test_a_row_with_too_many_fields_is_rejected_and_the_import_goes_on(tmp_path):
    # once: one extra field after 100,000 good rows aborted the import (exit 2, no word of the rows
    # written), and an extra field on the first row shifted every column of the file
    t0 = pd.Timestamp("2025-01-01T00:00:00Z")
    rows = [f"{(t0 + pd.Timedelta(minutes=i)).strftime('%Y-%m-%dT%H:%M:%SZ')},{i % 97}.5,3.0" for i in range(150_000)]
    rows[0] += ",9"  # line 2: the first data row
    rows[120_001] += ",oops"  # line 120,003: in the second chunk of 100,000 rows
    rows[120_005] = "not-a-time,1,2"  # line 120,007: its line is still right after the skipped one
    rows[-1] += ",1,2"  # line 150,001: the last row
    r, store = run_import(tmp_path, "timestamp,flow_rate,pressure\n" + "\n".join(rows) + "\n")
    assert r.returncode == 1, r.stderr  # as for any rejected row: the rest is imported
    assert "imported 149996 rows" in r.stdout and "4 rejected" in r.stdout, r.stdout
    for line, why in ((2, "4 fields where the header has 3"), (120_003, "4 fields where the header has 3"),
                      (120_007, "timestamp 'not-a-time'"), (150_001, "5 fields where the header has 3")):
        assert f"line {line}: {why}" in r.stderr, (line, r.stderr)
    rejects = pd.read_csv(tmp_path / "r.rejects.csv", dtype=str)
    assert rejects["line"].tolist() == ["2", "120003", "120007", "150001"]
    assert rejects["row"].iloc[1] == rows[120_001]  # the line as it is in the file
    df = store.read_readings("s1", "m1", t0.to_pydatetime(), (t0 + pd.Timedelta(days=200)).to_pydatetime())
    assert len(df) == 149_996
    assert df.loc[t0 + pd.Timedelta(minutes=1), "flow_rate"] == 1.5  # columns in their place
    assert df.loc[t0 + pd.Timedelta(minutes=120_002), "seq"] == 120_004  # seq is the file line


@pytest.mark.parametrize("body, good_lines, bad_lines", [
    (["g", "g", "L", "g", "g", "g", "g"], [2, 3, 5, 6, 7, 8], [4]),  # in a chunk
    (["L", "L", "g", "g", "g"], [4, 5, 6], [2, 3]),  # first rows: pandas would take their width
    (["g", "g", "g", "L"], [2, 3, 4], [5]),  # after a full chunk: read after the last row
    (["g", "g", "g", "L", "g"], [2, 3, 4, 6], [5]),  # on a chunk boundary
    (["", "L", "", "g", "L", "g", "g", "g"], [5, 7, 8, 9], [3, 6]),  # blank lines before the first row
    (["L", "L"], [], [2, 3]),
])
def test_too_many_fields_anywhere_every_line_accounted_for(tmp_path, body, good_lines, bad_lines):
    f = tmp_path / "r.csv"
    t0 = pd.Timestamp("2026-03-01T00:00:00Z")
    text = [("" if k == "" else f"{(t0 + pd.Timedelta(minutes=i)).isoformat()},{i},2" + (",x" if k == "L" else ""))
            for i, k in enumerate(body)]
    f.write_text("timestamp,flow_rate,pressure\n" + "\n".join(text) + "\n")
    chunks = list(read_chunks(f, RangeLimits(), chunk_rows=3))
    assert [int(s) for c in chunks for s in c.frame["seq"]] == good_lines
    rejects = [r for c in chunks for r in c.rejects]
    assert [r.line for r in rejects] == bad_lines and all("4 fields where the header has 3" in r.reason for r in rejects)
    assert [r.raw for r in rejects] == [text[n - 2] for n in bad_lines]
    assert sum(c.rows for c in chunks) == len(good_lines) + len(bad_lines)
    assert all((c.frame["flow_rate"] == c.frame["seq"] - 2).all() for c in chunks)  # every value in its column, on its line


def test_import_naive_tz(tmp_path):
    r, store = run_import(tmp_path, "timestamp,flow_rate,pressure\n2026-03-01T09:00:00,1,2\n", "--naive-tz", "Asia/Seoul")
    assert r.returncode == 0, r.stderr
    assert "--naive-tz" not in r.stderr  # told: no note
    df = store.read_readings("s1", "m1", datetime(2026, 2, 28, tzinfo=UTC), datetime(2026, 3, 2, tzinfo=UTC))
    assert df.index[0] == pd.Timestamp("2026-03-01T00:00:00Z")
    r, _ = run_import(tmp_path, "timestamp,flow_rate,pressure\n2026-03-01T10:00:00,1,2\n")  # not told: UTC, and a note says so
    assert r.returncode == 0 and "without a UTC offset are read as UTC" in r.stderr and "--naive-tz" in r.stderr, r.stderr
    r, _ = run_import(tmp_path, "timestamp,flow_rate,pressure\n2026-03-01T11:00:00+09:00,1,2\n")  # offsets: nothing to say
    assert r.returncode == 0 and "--naive-tz" not in r.stderr, r.stderr



def test_import_naive_tz_across_the_clock_changes(tmp_path):
    """A logger on local wall time (Berlin) writes 02:00-02:59 twice when the clocks go back: the first
    pass is summer time, the second winter time, every row placed half an hour after the one before.
    A wall time the clocks skipped in spring is rejected, saying so."""
    autumn = ["01:00", "01:30", "02:00", "02:30", "02:00", "02:30", "03:00"]
    text = "timestamp,flow_rate,pressure\n" + "".join(f"2026-10-25 {t}:00,{i},2\n" for i, t in enumerate(autumn))
    r, store = run_import(tmp_path, text, "--naive-tz", "Europe/Berlin")
    assert r.returncode == 0, r.stderr
    df = store.read_readings("s1", "m1", datetime(2026, 10, 24, tzinfo=UTC), datetime(2026, 10, 26, tzinfo=UTC))
    assert df.index.tolist() == list(pd.date_range("2026-10-24T23:00:00Z", periods=7, freq="30min"))
    assert df["flow_rate"].tolist() == [float(i) for i in range(7)]
    r, _ = run_import(tmp_path, "timestamp,flow_rate,pressure\n2026-03-29 01:30:00,1,2\n2026-03-29 02:30:00,1,2\n2026-03-29 03:00:00,1,2\n",
                      "--naive-tz", "Europe/Berlin")
    assert r.returncode == 1 and "line 3: " in r.stderr, r.stderr
    assert "'2026-03-29 02:30:00' does not exist in Europe/Berlin (--naive-tz): the clocks went forward" in r.stderr, r.stderr


cell = st.one_of(st.text(max_size=12), st.floats(allow_nan=True, allow_infinity=True).map(repr), st.just(""))


@hsettings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(cell, cell, cell), min_size=1, max_size=20))
def test_parse_never_crashes_and_accounts_for_every_row(rows):
    raw = pd.DataFrame(rows, columns=["timestamp", "flow_rate", "pressure"], dtype=object).astype(str)
    chunk = parse_chunk(raw, 2, RangeLimits())
    assert len(chunk.frame) + len(chunk.rejects) == len(rows)
    assert all(r.reason for r in chunk.rejects)
    vals = chunk.frame[["flow_rate", "pressure"]].to_numpy()
    assert not np.isinf(vals).any()


def test_read_all_later_duplicates_win(tmp_path):
    f = tmp_path / "d.csv"
    f.write_text("timestamp,flow_rate,pressure\n2026-03-01T00:00:00Z,1,2\n2026-03-01T00:00:00Z,5,2\n")
    df, rejects = read_all(f)
    assert len(df) == 1 and df["flow_rate"].iloc[0] == 5 and not rejects


def test_value_columns_parsed_as_numbers_keep_every_check(tmp_path):
    # the C parser reads an all-number column as floats: an empty field is still a missing reading,
    # an infinity (any spelling) still rejects its row, named as the file spells it
    f = tmp_path / "n.csv"
    f.write_text("timestamp,flow_rate,pressure\n2026-03-01T00:00:00Z,1.5,3\n2026-03-01T00:01:00Z,,3\n"
                 "2026-03-01T00:02:00Z,Infinity,3\n2026-03-01T00:03:00Z,2,-1e999\n2026-03-01T00:04:00Z,2.5,\n")
    chunks = list(read_chunks(f, RangeLimits()))
    frame = pd.concat([c.frame for c in chunks])
    rejects = [r for c in chunks for r in c.rejects]
    assert [(r.line, r.reason) for r in rejects] == [(4, "flow_rate 'Infinity' is not a finite number"),
                                                      (5, "pressure '-1e999' is not a finite number")]
    assert rejects[0].raw == "2026-03-01T00:02:00Z,Infinity,3.0"
    assert frame["seq"].tolist() == [2, 3, 6]
    assert frame["quality"].tolist() == ["", "flow_rate_missing", "pressure_missing"]


def test_a_file_ahead_of_the_clock_passes_row_by_row(tmp_path):
    # a simulated file running ahead of the clock is judged in bulk; a lone jump far ahead is not
    t0 = pd.Timestamp.now(tz="UTC").floor("min") + pd.Timedelta(days=2)
    rows = [f"{(t0 + pd.Timedelta(minutes=i)).strftime('%Y-%m-%dT%H:%M:%SZ')},1,2" for i in range(5000)]
    rows[3000] = f"{(t0 + pd.Timedelta(days=400)).strftime('%Y-%m-%dT%H:%M:%SZ')},1,2"
    f = tmp_path / "f.csv"
    f.write_text("timestamp,flow_rate,pressure\n" + "\n".join(rows) + "\n")
    limits = RangeLimits(max_ahead_s=3600, max_jump_s=3600)
    df, rejects = read_all(f, limits)
    assert [r.line for r in rejects] == [3002] and "ahead of this machine's clock" in rejects[0].reason
    assert len(df) == 4999


def test_several_meters_in_one_run(tmp_path):
    # one process, one meter per file (named by the file); a bad row in one file is rejected, the rest imported
    good = "timestamp,flow_rate,pressure\n" + "".join(f"2026-03-01T00:{m:02d}:00Z,{m}.5,3.0\n" for m in range(30))
    (tmp_path / "north-1.csv").write_text(good)
    (tmp_path / "south_2.csv").write_text(good.replace("00:07:00Z,7.5", "00:07:00Z,abc"))
    cfg = tmp_path / "fw.yaml"
    cfg.write_text(f"data_dir: {tmp_path / 'var'}\nsite: s1\nmeter: m1\n")
    cmd = [sys.executable, "-m", "app.cli", "import", "-c", str(cfg), "--quiet", "--meter-from-name"]
    r = subprocess.run([*cmd, str(tmp_path / "north-1.csv"), str(tmp_path / "south_2.csv")], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 1, r.stderr
    assert "for s1/north-1" in r.stdout and "for s1/south_2" in r.stdout and "line 9: flow_rate 'abc'" in r.stderr
    store = SqliteStore(tmp_path / "var" / "flowwatch.db")
    span = (datetime(2026, 3, 1, tzinfo=UTC), datetime(2026, 3, 2, tzinfo=UTC))
    assert len(store.read_readings("s1", "north-1", *span)) == 30 and len(store.read_readings("s1", "south_2", *span)) == 29
    assert (tmp_path / "south_2.rejects.csv").exists() and not (tmp_path / "north-1.rejects.csv").exists()
    (tmp_path / "bad name.csv").write_text(good)
    r = subprocess.run([*cmd, str(tmp_path / "bad name.csv")], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 2 and "'bad name' cannot be a meter id" in r.stderr


def test_meter_option_wins_over_a_configured_meters_list(tmp_path):
    # with `meters` configured, settings.meter is the first meter: --meter must still name the file's meter
    (tmp_path / "r.csv").write_text("timestamp,flow_rate,pressure\n" + "".join(f"2026-03-01T00:{m:02d}:00Z,{m}.5,3.0\n" for m in range(10)))
    cfg = tmp_path / "fw.yaml"
    cfg.write_text(f"data_dir: {tmp_path / 'var'}\nsite: s1\nmeters:\n  - id: inlet\n  - id: outlet\n")
    r = subprocess.run([sys.executable, "-m", "app.cli", "import", "-c", str(cfg), "--quiet", "--meter", "outlet", str(tmp_path / "r.csv")],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert "for s1/outlet" in r.stdout
    store = SqliteStore(tmp_path / "var" / "flowwatch.db")
    span = (datetime(2026, 3, 1, tzinfo=UTC), datetime(2026, 3, 2, tzinfo=UTC))
    assert len(store.read_readings("s1", "outlet", *span)) == 10 and store.read_readings("s1", "inlet", *span).empty


def test_each_files_meter_is_judged_against_its_own_range(tmp_path):
    # --meter-from-name: each file's rows against its meter's limits (meters[].limits over limits)
    rows = "timestamp,flow_rate,pressure\n" + "".join(f"2026-03-01T00:{m:02d}:00Z,{60 if m == 5 else 20}.0,3.0\n" for m in range(10))
    for name in ("amr", "inlet"):
        (tmp_path / f"{name}.csv").write_text(rows)
    cfg = tmp_path / "fw.yaml"
    cfg.write_text(f"data_dir: {tmp_path / 'var'}\nsite: s1\nmeters:\n  - id: inlet\n  - id: amr\n    limits: {{flow_rate_max: 50}}\n")
    r = subprocess.run([sys.executable, "-m", "app.cli", "import", "-c", str(cfg), "--quiet", "--meter-from-name",
                        str(tmp_path / "amr.csv"), str(tmp_path / "inlet.csv")], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr  # out of range is flagged, not rejected
    store = SqliteStore(tmp_path / "var" / "flowwatch.db")
    span = (datetime(2026, 3, 1, tzinfo=UTC), datetime(2026, 3, 2, tzinfo=UTC))
    amr, inlet = store.read_readings("s1", "amr", *span), store.read_readings("s1", "inlet", *span)
    assert len(amr) == len(inlet) == 10
    at = pd.Timestamp("2026-03-01T00:05:00Z")
    assert amr.loc[at, "quality"] == "flow_rate_out_of_range" and inlet.loc[at, "quality"] == ""
    assert (amr.drop(at)["quality"] == "").all() and (inlet["quality"] == "").all()


# --- small files: read row by row (no pandas) when clean, by pandas otherwise; the same readings either way ---

def _row_reader(path, tz="UTC", limits=None):
    """The row reader's readings as comparable tuples, or None where it leaves the file to pandas."""
    try:
        chunks = read_rows(path, limits or RangeLimits(), tz)
    except NotPlain:
        return None
    return [(t, s, f, p, q) for c in chunks for t, s, f, p, q in zip(c.ts, c.seq, c.flow_rate, c.pressure, c.quality, strict=True)]


def _pandas_reader(path, tz="UTC", limits=None):
    chunks = list(read_chunks(path, limits or RangeLimits(), tz))
    rejects = [r for c in chunks for r in c.rejects]
    frame = pd.concat([c.frame for c in chunks])
    rows = list(zip(frame.index.as_unit("s").asi8.tolist(), frame["seq"].tolist(), frame["flow_rate"].tolist(),
                    frame["pressure"].tolist(), frame["quality"].tolist(), strict=True))
    return rows, rejects


def _same(a, b):
    """Equal readings, NaN equal to NaN."""
    return len(a) == len(b) and all(x == y or (x != x and y != y) for ra, rb in zip(a, b, strict=True) for x, y in zip(ra, rb, strict=True))


CLEAN = """timestamp,flow_rate,pressure
2026-03-01T00:00:00Z,10.5,3.2
2026-03-01T00:15:00+09:00,11,3.1
2026-03-01 00:30:00,1e2,
2026-03-01T00:45:00.000Z,,2.9
2026-03-01T01:00:00-05:30,-0.5,+.5
2026-03-01T01:15:00Z,99999,3.0
"""


@pytest.mark.parametrize("text, tz", [
    (CLEAN, "UTC"),
    (CLEAN, "Europe/Berlin"),  # the naive row in the zone
    ("TimeStamp, Flow_Rate\n2026-03-01T00:00:00Z,1.5\n2026-03-01T01:00:00Z,2\n", "UTC"),  # a flow-only meter, any case and spacing
    ("timestamp,note,pressure,flow_rate\n2026-03-01T00:00:00Z,hello,3,1\n", "UTC"),  # columns in any order, others ignored
    ("timestamp,flow_rate,pressure\r\n2026-03-01T00:00:00Z,1,2\r\n", "UTC"),  # CRLF
    ("timestamp,flow_rate,pressure\n", "UTC"),  # a header alone: nothing to import
])
def test_the_row_reader_reads_clean_files_as_pandas_does(tmp_path, text, tz):
    f = tmp_path / "r.csv"
    f.write_text(text, newline="")
    rows = _row_reader(f, tz)
    assert rows is not None, "a clean file is read row by row"
    expected, rejects = _pandas_reader(f, tz)
    assert not rejects and _same(rows, expected), (rows, expected)


@pytest.mark.parametrize("text", [
    CSV,  # bad rows of every kind: pandas' reader names each
    "timestamp,flow_rate,pressure\n2026-03-01T00:00:00Z,1,2\n\n2026-03-01T00:01:00Z,1,2\n",  # a blank line
    "timestamp,flow_rate,pressure\n2026-03-01T00:00:00Z,1,2,3\n",  # a field too many
    "timestamp,flow_rate,pressure\n2026-03-01T00:00:00Z,1\n",  # one too few
    "timestamp,flow_rate,pressure\n2026-03-01,1,2\n",  # a date alone
    "timestamp,flow_rate,pressure\n2026-02-30T00:00:00Z,1,2\n",
    "timestamp,flow_rate,pressure\n2026-03-01T00:00:00.5Z,1,2\n",  # a fraction of a second
    "timestamp,flow_rate,pressure\n2026-03-01T00:00:00Z,1_000,2\n",  # Python's float would take these
    "timestamp,flow_rate,pressure\n2026-03-01T00:00:00Z,١٢,2\n",
    "timestamp,flow_rate,pressure\n2026-03-01T00:00:00Z,1.5 ,2\n",
    "timestamp,flow_rate,pressure\n2026-03-01T00:00:00Z,NaN,2\n",
    "timestamp,flow_rate,pressure\n2026-03-01T00:00:00Z,1e999,2\n",
    "timestamp,flow_rate,pressure\n1999-03-01T00:00:00Z,1,2\n",  # before limits.earliest
    "timestamp,flow_rate,pressure\n2126-03-01T00:00:00Z,1,2\n",  # far ahead of the clock
    'timestamp,flow_rate,pressure\n2026-03-01T00:00:00Z,"1\n2",2\n',  # a field across lines
    "time,flow\n2026-03-01T00:00:00Z,1\n",  # not our header: pandas' reader says so
    "",
])
def test_anything_unusual_is_left_to_pandas(tmp_path, text):
    f = tmp_path / "r.csv"
    f.write_text(text)
    assert _row_reader(f) is None


def test_a_local_time_that_occurs_twice_is_left_to_pandas(tmp_path):
    f = tmp_path / "r.csv"
    f.write_text("timestamp,flow_rate,pressure\n2026-10-25 02:30:00,1,2\n")  # Europe/Berlin: twice that night
    assert _row_reader(f, "Europe/Berlin") is None and _row_reader(f, "UTC") is not None


_stamp = st.one_of(
    st.datetimes(min_value=datetime(2020, 1, 1), max_value=datetime(2027, 12, 31)).map(lambda d: d.strftime("%Y-%m-%dT%H:%M:%SZ")),
    st.datetimes(min_value=datetime(2020, 1, 1), max_value=datetime(2027, 12, 31)).map(lambda d: d.strftime("%Y-%m-%d %H:%M:%S")),
    st.datetimes(min_value=datetime(2026, 3, 29), max_value=datetime(2026, 3, 30)).map(lambda d: d.strftime("%Y-%m-%dT%H:%M:%S")),
    st.sampled_from(["2026-03-01T00:00:00+09:00", "2026-03-01T00:00:00.000-03:30", "2026-03-01", "2026-3-1 00:00:00",
                     "2026-03-01T24:00:00Z", " 2026-03-01T00:00:00Z", "2026-03-01T00:00:00Z ", "20260301T000000Z"]),
)
_value = st.one_of(
    st.floats(-1e5, 1e5, allow_nan=False).map(repr), st.integers(-10**6, 10**6).map(str), st.just(""),
    st.decimals(-1000, 1000, places=3, allow_nan=False, allow_infinity=False).map(str),
    st.sampled_from(["1e3", "1E-3", "+.5", "5.", "-0", "1e999", "nan", "inf", "1_0", "1.2.3", "1e", "--1", " 7", "0x10", "١"]),
)


@hsettings(max_examples=400, deadline=None)
@given(st.lists(st.tuples(_stamp, _value, _value), min_size=1, max_size=12),
       st.sampled_from(["timestamp,flow_rate,pressure", "timestamp,flow_rate", "Timestamp,Pressure,Flow_Rate"]),
       st.sampled_from(["UTC", "Europe/Berlin", "Asia/Seoul"]))
def test_the_row_reader_never_differs_from_pandas(tmp_path_factory, rows, header, tz):
    # generated files, clean and not: where the row reader takes one, its readings are pandas'
    width = header.count(",") + 1
    f = tmp_path_factory.mktemp("p") / "r.csv"
    f.write_text(header + "\n" + "".join(",".join(r[:width]) + "\n" for r in rows))
    limits = RangeLimits(flow_rate_max=1000.0, pressure_min=-5.0)  # some values out of range: flagged alike
    got = _row_reader(f, tz, limits)
    if got is not None:
        expected, rejects = _pandas_reader(f, tz, limits)
        assert not rejects, rejects
        assert _same(got, expected), (got, expected)


def test_a_small_clean_file_is_imported_without_loading_pandas(tmp_path):
    # an hourly export of a year: the row reader; every reading stored as it is in the file
    t0 = datetime(2025, 1, 1, tzinfo=UTC)
    text = "timestamp,flow_rate,pressure\n" + "".join(
        f"{(t0 + pd.Timedelta(hours=i)).strftime('%Y-%m-%dT%H:%M:%SZ')},{i % 50 + 0.25},{3 + i % 7 / 10}\n" for i in range(8760))
    f = tmp_path / "r.csv"
    f.write_text(text)
    cfg = tmp_path / "fw.yaml"
    cfg.write_text(f"data_dir: {tmp_path / 'var'}\nsite: s1\nmeter: m1\n")
    code = ("import sys; from app.cli import main; rc = main(sys.argv[1:]); "
            "print('pandas loaded' if 'pandas' in sys.modules else 'no pandas', 'pydantic_settings' in sys.modules); sys.exit(rc)")
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("FLOWWATCH_")}
    r = subprocess.run([sys.executable, "-c", code, "import", str(f), "-c", str(cfg), "--quiet"], capture_output=True, text=True, cwd=ROOT, env=env)
    assert r.returncode == 0, r.stderr
    assert "imported 8760 rows" in r.stdout and "8760 inserted" in r.stdout, r.stdout
    assert "no pandas False" in r.stdout, r.stdout  # nor pydantic-settings: no FLOWWATCH_* variable to read
    stored = SqliteStore(tmp_path / "var" / "flowwatch.db").read_readings("s1", "m1", t0, t0 + pd.Timedelta(days=400))
    expected = pd.read_csv(f, parse_dates=["timestamp"]).set_index("timestamp")
    assert len(stored) == 8760 and (stored.index == expected.index).all()
    assert (stored["flow_rate"].to_numpy() == expected["flow_rate"].to_numpy()).all()
    assert (stored["pressure"].to_numpy() == expected["pressure"].to_numpy()).all()
    assert stored["seq"].tolist() == list(range(2, 8762)) and set(stored["quality"]) == {""}
    # the same file with one bad row: pandas' reader, which names it; the rest imported
    f.write_text(text.replace(",3.1\n", ",abc\n", 1))
    r = subprocess.run([sys.executable, "-c", code, "import", str(f), "-c", str(cfg), "--quiet"], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 1 and "pressure 'abc' is not a finite number" in r.stderr and "pandas loaded" in r.stdout, r.stdout
    assert "0 inserted, 8759 identical" in r.stdout, r.stdout


def test_both_readers_store_the_same_readings_in_either_store(tmp_path, store):
    # the row reader's lists and pandas' frame, each through the store's own write: the same rows stored
    f = tmp_path / "r.csv"
    t0 = datetime(2025, 6, 1, tzinfo=UTC)
    f.write_text("timestamp,flow_rate,pressure\n" + "".join(
        f"{(t0 + pd.Timedelta(minutes=15 * i)).strftime('%Y-%m-%dT%H:%M:%SZ')},{'' if i % 11 == 0 else i % 40 + 0.5},{3 + i % 9 / 10}\n"
        for i in range(500)))
    limits = RangeLimits(flow_rate_max=30.0)
    written = sum(c.write(store, "s1", "rows").total for c in read_rows(f, limits))
    written_pd = sum(c.write(store, "s1", "pandas").total for c in read_chunks(f, limits))
    assert written == written_pd == 500
    end = t0 + pd.Timedelta(days=10)
    a, b = store.read_readings("s1", "rows", t0, end), store.read_readings("s1", "pandas", t0, end)
    assert len(a) == len(b) == 500
    pd.testing.assert_frame_equal(a, b)
    flagged = sum(1 for i in range(500) if i % 11 == 0 or i % 40 + 0.5 > 30)  # missing (every 11th) or above 30 m³/h
    assert (a["quality"] != "").sum() == flagged == 155
    again = sum(c.write(store, "s1", "rows").total for c in read_rows(f, limits))  # idempotent
    assert again == 500 and len(store.read_readings("s1", "rows", t0, end)) == 500


def test_the_row_reader_reads_no_more_than_a_small_file(tmp_path, monkeypatch):
    # a file that grew past the size it was judged by is left to pandas' reader (read in chunks)
    import shared.readings_csv_rows as rows_mod

    f = tmp_path / "r.csv"
    f.write_text("timestamp,flow_rate,pressure\n" + "2026-03-01T00:00:00Z,1,2\n" * 3)
    assert _row_reader(f) is not None
    monkeypatch.setattr(rows_mod, "SMALL_FILE_BYTES", 40)
    assert _row_reader(f) is None


# --- several files: parsed by a worker process while this one writes; the same result as one by one ---

def _minute_file(path, rows, start="2025-03-01", seed=0):
    rng = np.random.default_rng(seed)
    t = pd.date_range(start, periods=rows, freq="1min", tz="UTC").strftime("%Y-%m-%dT%H:%M:%SZ")
    flow, pres = (20 + rng.normal(0, 2, rows)).round(3), (3 + rng.normal(0, 0.1, rows)).round(4)
    path.write_text("timestamp,flow_rate,pressure\n" + "".join(f"{a},{b},{c}\n" for a, b, c in zip(t, flow, pres, strict=True)))
    return path


def test_several_files_parsed_by_a_worker_are_stored_as_one_by_one(tmp_path):
    # more than the row reader's 4 MiB: pandas' reader, in a worker process; the importing process never
    # loads pandas, and what is stored, rejected and said is what importing the files one by one gives
    a = _minute_file(tmp_path / "a.csv", 60_000, seed=1)
    b = _minute_file(tmp_path / "b.csv", 60_000, seed=2)
    b.write_text(b.read_text().replace("\n2025-03-01T00:09:00Z,", "\n2025-03-01T00:09:00Z,abc,1,", 1)  # too many fields, text
                 .replace("\n2025-03-02T00:00:00Z,", "\nyesterday,", 1).replace("\n2025-03-03T00:00:00Z,", "\n2025-03-03T00:00:00Z,inf", 1))
    c = tmp_path / "c.csv"
    c.write_text("time,flow\n2025-03-01T00:00:00Z,1\n")  # no usable header: exit 2, the others imported
    d = _minute_file(tmp_path / "d.csv", 30_000, start="2025-04-01", seed=3)
    code = ("import sys; from app.cli import main; rc = main(sys.argv[1:]); "
            "print('pandas loaded' if 'pandas' in sys.modules else 'no pandas'); sys.exit(rc)")

    def run(data, *files):
        cfg = tmp_path / f"{data}.yaml"
        cfg.write_text(f"data_dir: {tmp_path / data}\nsite: s1\n")
        return subprocess.run([sys.executable, "-c", code, "import", "-c", str(cfg), "--quiet", "--meter-from-name", *map(str, files)],
                              capture_output=True, text=True, cwd=ROOT)

    together = run("together", a, b, c, d)
    assert together.returncode == 2, together.stderr
    if (os.cpu_count() or 1) > 1:  # the worker parsed every file (one core: this process, in turn)
        assert together.stdout.splitlines()[-1] == "no pandas", together.stdout
    rejects_together = {p.name: p.read_text() for p in (tmp_path / "b.rejects.csv",)}
    (tmp_path / "b.rejects.csv").unlink()
    alone = [run("alone", f) for f in (a, b, c, d)]
    assert [r.returncode for r in alone] == [0, 1, 2, 0]
    assert {p.name: p.read_text() for p in (tmp_path / "b.rejects.csv",)} == rejects_together
    assert rejects_together["b.rejects.csv"].count("\n") == 4  # the header and three rejected rows
    said = [line.split(" in ")[0] + line.split("rows/s):")[-1] for line in together.stdout.splitlines() if line.startswith("imported")]
    said_alone = [line.split(" in ")[0] + line.split("rows/s):")[-1] for r in alone for line in r.stdout.splitlines() if line.startswith("imported")]
    assert said == said_alone and len(said) == 3, (said, said_alone)
    assert together.stderr.replace("flowwatch import: ", "") == "".join(r.stderr for r in alone).replace("flowwatch import: ", "")
    span = (datetime(2025, 2, 1, tzinfo=UTC), datetime(2025, 6, 1, tzinfo=UTC))
    stored = [SqliteStore(tmp_path / data / "flowwatch.db") for data in ("together", "alone")]
    for meter, n in (("a", 60_000), ("b", 59_997), ("d", 30_000)):
        x, y = (s.read_readings("s1", meter, *span) for s in stored)
        assert len(x) == n
        pd.testing.assert_frame_equal(x, y)


def test_a_worker_that_dies_leaves_the_rest_to_the_importing_process(tmp_path):
    # killed after the first of file 0's three chunks: file 0 goes on from its second chunk here, and the
    # files after it too; every chunk as parsing here would give it, none twice, none missing
    files = [_minute_file(tmp_path / "m0.csv", 250_000, seed=0), *(_minute_file(tmp_path / f"m{i}.csv", 2_000, seed=i) for i in (1, 2))]
    code = f"""
import os, signal
from pathlib import Path
from app.import_csv import _Files
from shared.readings_csv import read_chunks
from shared.settings import RangeLimits
paths = [Path(p) for p in {[str(f) for f in files]!r}]
files = _Files(paths, [RangeLimits()] * 3, "UTC", small=False)
assert files.worker is not None
got = []
for i in range(3):
    got.append([])
    for chunk in files.chunks(i, False):
        got[i].append(chunk if hasattr(chunk, "ts") else chunk.columns())
        if files.worker is not None:
            os.kill(files.worker.pid, signal.SIGKILL)
            files.worker.join()
assert files.worker is None  # the rest parsed here
for path, chunks in zip(paths, got):
    direct = [c.columns() for c in read_chunks(path, RangeLimits())]
    assert [(c.ts, c.seq, c.flow_rate, c.pressure, c.quality, c.rows) for c in chunks] == [
        (c.ts, c.seq, c.flow_rate, c.pressure, c.quality, c.rows) for c in direct], path
print([len(g) for g in got])
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0 and r.stdout.strip() == "[3, 1, 1]", (r.stdout, r.stderr)


def test_a_file_left_half_read_does_not_shift_the_next_one(tmp_path):
    # a store error stops a file's import after its first chunk: the next file gets its own chunks
    files = [_minute_file(tmp_path / "m0.csv", 250_000, seed=0), _minute_file(tmp_path / "m1.csv", 2_000, seed=1)]
    code = f"""
from pathlib import Path
from app.import_csv import _Files
from shared.readings_csv import read_chunks
from shared.settings import RangeLimits
paths = [Path(p) for p in {[str(f) for f in files]!r}]
files = _Files(paths, [RangeLimits()] * 2, "UTC", small=False)
assert files.worker is not None
first = files.chunks(0, False)
next(first)
first.close()
got = list(files.chunks(1, False))
direct = [c.columns() for c in read_chunks(paths[1], RangeLimits())]
assert [(c.ts, c.flow_rate) for c in got] == [(c.ts, c.flow_rate) for c in direct]
assert files.worker is not None
files.close()
print("ok")
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0 and r.stdout.strip() == "ok", (r.stdout, r.stderr)


def test_ctrl_c_stops_the_import_cleanly_and_the_same_command_finishes_it(tmp_path):
    # interrupted in the second file: a clear message and exit 130, no traceback, no worker left behind;
    # the same command again stores every reading once
    import signal

    first = _minute_file(tmp_path / "first.csv", 2_000, seed=1)
    big = _minute_file(tmp_path / "big.csv", 600_000, start="2024-01-01", seed=2)
    cfg = tmp_path / "fw.yaml"
    cfg.write_text(f"data_dir: {tmp_path / 'var'}\nsite: s1\n")
    cmd = [sys.executable, "-m", "app.cli", "import", "-c", str(cfg), "--quiet", "--meter-from-name", str(first), str(big)]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}  # the line is flushed by the import itself
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env)
    assert p.stdout.readline().startswith("imported 2000 rows"), p.stderr.read()
    children = subprocess.run(["pgrep", "-P", str(p.pid)], capture_output=True, text=True).stdout.split()
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 130, (out, err)
    assert "interrupted; what was written before stays" in err and "Traceback" not in err, err
    assert not [c for c in children if Path(f"/proc/{c}").exists()], "the parsing worker outlived the import"
    again = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    assert again.returncode == 0, again.stderr
    store = SqliteStore(tmp_path / "var" / "flowwatch.db")
    span = (datetime(2023, 12, 1, tzinfo=UTC), datetime(2025, 6, 1, tzinfo=UTC))
    assert len(store.read_readings("s1", "first", *span)) == 2_000
    assert len(store.read_readings("s1", "big", *span)) == 600_000
