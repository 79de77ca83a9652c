"""The baseline of the import benchmark: a plain pandas ``read_csv`` + SQLite ``executemany`` script.

    python -m bench.plain_import DB FILE.csv [FILE.csv ...]

No validation, no flags, no line numbers: each file is read whole, its timestamps parsed with the
one format the benchmark writes, and its rows inserted in one transaction into a table with the
same key as flowwatch's (meter, ts; WITHOUT ROWID; the k-th file is meter k), with the same journal
settings (WAL, synchronous=NORMAL). Run as its own process, so it is timed as a whole, as
``flowwatch import`` is.
"""

import sqlite3
import sys

import pandas as pd

db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("PRAGMA journal_mode=WAL")
db.execute("PRAGMA synchronous=NORMAL")
db.execute("CREATE TABLE IF NOT EXISTS readings (mid INTEGER NOT NULL, ts INTEGER NOT NULL, flow_rate REAL, pressure REAL, "
           "PRIMARY KEY (mid, ts)) WITHOUT ROWID")
for meter, path in enumerate(sys.argv[2:], start=1):
    df = pd.read_csv(path)
    ts = pd.to_datetime(df["timestamp"], format="%Y-%m-%dT%H:%M:%S%z", utc=True).dt.as_unit("s").astype("int64")
    db.execute("BEGIN")
    db.executemany(f"INSERT INTO readings VALUES ({meter}, ?, ?, ?)", zip(ts.tolist(), df["flow_rate"].tolist(), df["pressure"].tolist(), strict=True))
    db.execute("COMMIT")
db.close()
