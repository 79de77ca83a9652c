"""The baseline of the import benchmark: a plain pandas ``read_csv`` + SQLite ``executemany`` script.

    python -m bench.plain_import [--pydantic] DB FILE.csv [FILE.csv ...]

No validation, no flags, no line numbers: each file is read whole, its timestamps parsed with the
one format the benchmark writes, and its rows inserted in one transaction into a table with the
same key as flowwatch's (meter, ts; WITHOUT ROWID; the k-th file is meter k), with the same journal
settings (WAL, synchronous=NORMAL). Run as its own process, so it is timed as a whole, as
``flowwatch import`` is.

``--pydantic`` first imports pydantic and defines one two-field model: the least any program pays
whose settings are pydantic models (flowwatch's are), timed beside the plain script to show how much
of flowwatch's start is that floor and how much its own.
"""

import sqlite3
import sys

import pandas as pd

args = sys.argv[1:]
if args[:1] == ["--pydantic"]:
    import pydantic

    class _Floor(pydantic.BaseModel):
        x: int = 1
        y: str | None = None

    args = args[1:]

db = sqlite3.connect(args[0], isolation_level=None)
db.execute("PRAGMA journal_mode=WAL")
db.execute("PRAGMA synchronous=NORMAL")
db.execute("CREATE TABLE IF NOT EXISTS readings (mid INTEGER NOT NULL, ts INTEGER NOT NULL, flow_rate REAL, pressure REAL, "
           "PRIMARY KEY (mid, ts)) WITHOUT ROWID")
for meter, path in enumerate(args[1:], start=1):
    df = pd.read_csv(path)
    ts = pd.to_datetime(df["timestamp"], format="%Y-%m-%dT%H:%M:%S%z", utc=True).dt.as_unit("s").astype("int64")
    db.execute("BEGIN")
    db.executemany(f"INSERT INTO readings VALUES ({meter}, ?, ?, ?)", zip(ts.tolist(), df["flow_rate"].tolist(), df["pressure"].tolist(), strict=True))
    db.execute("COMMIT")
db.close()
