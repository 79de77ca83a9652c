"""Import: `flowwatch import` timed as a whole process against a plain pandas + SQLite script.

    python -m bench.import [--quick] [--runs N]

1. Whole process, SQLite (the default store): `flowwatch import FILE --quiet` (start, settings,
   CSV parse, every check: plausible time, ranges, rejected rows with their line; the write)
   against bench/plain_import.py (pandas `read_csv` + `executemany`, no checks) on the same file,
   each a fresh process into an empty database. The runs alternate (plain, flowwatch, plain, ...)
   so both see the same load; the ratio is taken per run, and the median and spread of the runs
   are shown. Beside them, the plain script with ``--pydantic`` (it imports pydantic and defines one
   model first): the floor of any process whose settings are pydantic models. Files: two years of minute readings (1,051,200 rows), of 15-minute readings, of
   hourly readings, and five meters of two years of 15-minute readings into one database (one file
   per meter, as a readings file names no meter; both sides read the five in one process:
   `flowwatch import --meter-from-name m1.csv ... m5.csv`). Both run from compiled bytecode, as
   an installed package does. Beside the wall clock, the CPU seconds (user + system) of each side's
   processes: flowwatch parses in a second process, which the wall clock alone would hide.
2. Rows/s inside one process, both stores: the import path (`import_chunks` + `write_reading_frame`)
   and the store write alone, one year of minute readings (InfluxDB 1.6.7 on a free port).
   Targets (brief §12): ≥ 300,000 rows/s into SQLite, ≥ 150,000 into InfluxDB.
"""

from __future__ import annotations

import argparse
import compileall
import resource
import statistics
import subprocess
import sys
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

ROOT = Path(__file__).resolve().parents[1]
TARGET_RATIO = 1.3
START = "2024-01-01"  # two years that end in the past: no row is ahead of the clock


def readings_frame(rows: int, freq: str = "1min", seed: int = 1) -> pd.DataFrame:
    idx = pd.date_range(START, periods=rows, freq=freq, tz="UTC", name="ts")
    rng = np.random.default_rng(seed)
    phase = np.arange(rows) * (pd.Timedelta(freq).total_seconds() / 86400)
    flow = 40 + 15 * np.sin(2 * np.pi * phase) + rng.normal(0, 1, rows)
    pres = 4 - 0.0004 * flow**2 + rng.normal(0, 0.02, rows)
    return pd.DataFrame({"flow_rate": flow.round(3), "pressure": pres.round(4)}, index=idx)


def write_csv(df: pd.DataFrame, path: Path) -> Path:
    out = df.copy()
    out.index = out.index.strftime("%Y-%m-%dT%H:%M:%SZ")
    out.to_csv(path, index_label="timestamp")
    return path


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def _timed(cmd: list[str], cpu: list[float] | None = None) -> float:
    """Wall seconds of ``cmd``; its CPU seconds (user + system, its own processes included) into ``cpu``."""
    c, t = _children_cpu(), time.perf_counter()
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False)
    dt = time.perf_counter() - t
    if cpu is not None:
        cpu.append(_children_cpu() - c)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:4])} failed ({r.returncode}): {r.stderr[-1500:]}")
    return dt


def process_runs(files: list[Path], work: Path, runs: int) -> tuple[list[float], list[float], list[float], list[float], list[float]]:
    """Seconds of each run: (plain, plain + pydantic floor, flowwatch, plain CPU, flowwatch CPU), every
    file of a run into one fresh database, one process each (flowwatch's parsing worker included in its CPU)."""
    plain, floor, fw, plain_cpu, fw_cpu = [], [], [], [], []
    for _ in range(runs):
        for out, flag, cpu in ((plain, [], plain_cpu), (floor, ["--pydantic"], None)):
            db = work / f"plain-{uuid.uuid4().hex[:8]}.db"
            out.append(_timed([sys.executable, "-m", "bench.plain_import", *flag, str(db), *map(str, files)], cpu))
        data = work / f"fw-{uuid.uuid4().hex[:8]}"
        meter = ["--meter-from-name"] if len(files) > 1 else ["--meter", "m1"]
        fw.append(_timed([sys.executable, "-m", "app.cli", "import", *map(str, files), "--data-dir", str(data), "--site", "s1",
                          *meter, "--quiet"], fw_cpu))
    return plain, floor, fw, plain_cpu, fw_cpu


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
    ap.add_argument("--quick", action="store_true", help="small files, 1 run")
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    runs = 1 if args.quick else args.runs
    scale = 20 if args.quick else 1
    tmp = Path(tempfile.mkdtemp(prefix="fw-bench-import-"))
    # Both sides run from bytecode, as an installed package does (pip compiles it at install). A
    # checkout run with PYTHONDONTWRITEBYTECODE=1 (this machine) compiled flowwatch's ~30 modules from
    # source at every start and the plain script's one module.
    for folder in ("app", "shared", "bench"):
        compileall.compile_dir(ROOT / folder, quiet=1)
    cases = [
        ("minute, 2 years, 1 meter", [write_csv(readings_frame(1_051_200 // scale), tmp / "minute.csv")]),
        ("15-minute, 2 years, 1 meter", [write_csv(readings_frame(70_080 // scale, "15min"), tmp / "q15.csv")]),
        ("hourly, 2 years, 1 meter", [write_csv(readings_frame(17_520 // scale, "1h"), tmp / "hourly.csv")]),
        ("15-minute, 2 years, 5 meters (5 files, 1 process)",
         [write_csv(readings_frame(70_080 // scale, "15min", seed=k), tmp / f"m{k}.csv") for k in range(1, 6)]),
    ]
    rows = []
    for name, files in cases:
        n = sum(len(pd.read_csv(f, usecols=[0])) for f in files)
        plain, floor, fw, plain_cpu, fw_cpu = process_runs(files, tmp, runs)
        ratios = [b / a for a, b in zip(plain, fw, strict=True)]
        floors = [b / a for a, b in zip(plain, floor, strict=True)]
        r = statistics.median(ratios)
        rows.append([name, f"{n:,}", f"{statistics.median(plain):.2f}", f"{statistics.median(floor):.2f} ({statistics.median(floors):.2f}x)",
                     f"{statistics.median(fw):.2f}", f"{r:.2f}x ({min(ratios):.2f}-{max(ratios):.2f})",
                     f"{statistics.median(plain_cpu):.2f} / {statistics.median(fw_cpu):.2f}", f"<= {TARGET_RATIO}x",
                     "met" if r <= TARGET_RATIO else "NOT met"])
    print(f"Whole process, SQLite: median of {runs} alternating run(s); ratio = flowwatch / plain per run (wall clock), median (min-max); "
          f"CPU: user + system seconds of all the command's processes; {machine()}")
    print()
    print(table(["file", "rows", "plain script (s)", "plain + pydantic floor (s, ratio)", "flowwatch import (s)", "ratio",
                 "CPU plain / flowwatch (s)", "target", "status"], rows))
    print()

    df = readings_frame(525_600 // scale)
    csv = write_csv(df, tmp / "year.csv")
    influx = InfluxProcess(tmp / "influxd").start()
    try:
        def sqlite():
            return SqliteStore(tmp / f"{uuid.uuid4().hex}.db")

        def influxdb():
            return InfluxStore(influx.settings(database=f"b{uuid.uuid4().hex[:10]}"))

        results = []
        inner = min(runs, 3)
        for name, make, target in (("SQLite", sqlite, 300_000), ("InfluxDB 1.6.7", influxdb, 150_000)):
            imp, _ = median_of(inner, lambda make=make: run_import(csv, make))
            wr, _ = median_of(inner, lambda make=make: run_write(df, make))
            results.append((name, f"{imp:,.0f}", f"{wr:,.0f}", f"≥ {target:,}", "met" if imp >= target else "NOT met"))
        print(f"Inside one process: {len(df):,} minute readings; median of {inner} run(s)")
        print()
        print(table(["store", "import path (rows/s)", "store write only (rows/s)", "target", "status"], results))
    finally:
        influx.stop()


if __name__ == "__main__":
    main()
