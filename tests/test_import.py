"""`flowwatch import` through the real CLI into a real SQLite file (and the parser in unit tests)."""

import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from shared.readings_csv import parse_chunk, read_all
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


def test_import_bad_header(tmp_path):
    r, _ = run_import(tmp_path, "time,flow\n1,2\n")
    assert r.returncode == 2 and "missing column" in r.stderr


def test_import_site_id_follows_the_config_rule(tmp_path):
    # an id no message can carry is refused before anything is written, naming the option's key
    r, _ = run_import(tmp_path, "timestamp,flow_rate,pressure\n2026-03-01T00:00:00Z,1,2\n", "--site", "s" * 65)
    assert r.returncode == 2 and "site: String should have at most 64 characters" in r.stderr, r.stderr
    assert "imported" not in r.stdout


def test_import_naive_tz(tmp_path):
    r, store = run_import(tmp_path, "timestamp,flow_rate,pressure\n2026-03-01T09:00:00,1,2\n", "--naive-tz", "Asia/Seoul")
    assert r.returncode == 0, r.stderr
    df = store.read_readings("s1", "m1", datetime(2026, 2, 28, tzinfo=UTC), datetime(2026, 3, 2, tzinfo=UTC))
    assert df.index[0] == pd.Timestamp("2026-03-01T00:00:00Z")


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
