"""Import one year of minute readings (525,600 rows) into SQLite and into a real InfluxDB.

    python -m bench.import [--quick] [--runs N]

Measures the whole `flowwatch import` path (CSV parse + validate + write, in chunks) and the store
write alone (`write_reading_frame` of a ready frame), for each store, median of N runs, each into an
empty database. InfluxDB is Debian's influxdb 1.6.7 started on a free port in a temp dir.
Targets (brief §12): ≥ 300,000 rows/s into SQLite, ≥ 150,000 into InfluxDB. Seed project: ~2,000 rows/s.
"""

from __future__ import annotations

import argparse
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
import pandas as pd

from app.influxd import InfluxProcess
from bench.common import machine, median_of, table
from shared.readings_csv import import_chunks
from shared.settings import RangeLimits
from shared.store.influx import InfluxStore
from shared.store.sqlite import SqliteStore


def year_frame(rows: int) -> pd.DataFrame:
    idx = pd.date_range("2025-01-01", periods=rows, freq="1min", tz="UTC", name="ts")
    rng = np.random.default_rng(1)
    minutes = np.arange(rows)
    flow = 40 + 15 * np.sin(2 * np.pi * minutes / 1440) + rng.normal(0, 1, rows)
    pres = 4 - 0.0004 * flow**2 + rng.normal(0, 0.02, rows)
    return pd.DataFrame({"flow_rate": flow.round(3), "pressure": pres.round(4)}, index=idx)


def write_csv(df: pd.DataFrame, path: Path) -> None:
    out = df.copy()
    out.index = out.index.strftime("%Y-%m-%dT%H:%M:%SZ")
    out.to_csv(path, index_label="timestamp")


def run_import(path: Path, make_store) -> float:
    store = make_store()
    t = time.perf_counter()
    n = 0
    for chunk in import_chunks(path, RangeLimits(), parse_ahead=store.parse_ahead):
        n += store.write_reading_frame("site1", "meter1", chunk.frame)
    dt = time.perf_counter() - t
    store.close()
    return n / dt


def run_write(df: pd.DataFrame, make_store) -> float:
    store = make_store()
    t = time.perf_counter()
    n = store.write_reading_frame("site1", "meter1", df).total
    dt = time.perf_counter() - t
    store.close()
    return n / dt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="50,000 rows, 1 run")
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    rows = 50_000 if args.quick else 525_600
    runs = 1 if args.quick else args.runs
    tmp = Path(tempfile.mkdtemp(prefix="fw-bench-import-"))
    df = year_frame(rows)
    csv = tmp / "year.csv"
    write_csv(df, csv)
    influx = InfluxProcess(tmp / "influxd").start()
    try:
        def sqlite():
            return SqliteStore(tmp / f"{uuid.uuid4().hex}.db")

        def influxdb():
            return InfluxStore(influx.settings(database=f"b{uuid.uuid4().hex[:10]}"))

        results = []
        for name, make, target in (("SQLite", sqlite, 300_000), ("InfluxDB 1.6.7", influxdb, 150_000)):
            imp, imp_all = median_of(runs, lambda make=make: run_import(csv, make))
            wr, _ = median_of(runs, lambda make=make: run_write(df, make))
            results.append((name, f"{imp:,.0f}", f"{wr:,.0f}", f"≥ {target:,}", "met" if imp >= target else "NOT met"))
        print(f"import of {rows:,} minute readings; median of {runs} run(s); {machine()}")
        print(table(["store", "flowwatch import (rows/s)", "store write only (rows/s)", "target", "status"], results))
    finally:
        influx.stop()


if __name__ == "__main__":
    main()
