"""The baseline of the import benchmark: a plain pandas ``read_csv`` + SQLite ``executemany`` script.

    python -m bench.plain_import FILE.csv DB METER_NUMBER

No validation, no flags, no line numbers: the file is read whole, its timestamps parsed with the
one format the benchmark writes, and the rows inserted in one transaction into a table with the
same key as flowwatch's (meter, ts; WITHOUT ROWID), with the same journal settings (WAL,
synchronous=NORMAL). Run as its own process, so it is timed as a whole, as ``flowwatch import`` is.
"""

import sqlite3
import sys

import pandas as pd

path, db_path, meter = sys.argv[1], sys.argv[2], int(sys.argv[3])
df = pd.read_csv(path)
ts = pd.to_datetime(df["timestamp"], format="%Y-%m-%dT%H:%M:%S%z", utc=True).dt.as_unit("s").astype("int64")
db = sqlite3.connect(db_path, isolation_level=None)
db.execute("PRAGMA journal_mode=WAL")
db.execute("PRAGMA synchronous=NORMAL")
db.execute("CREATE TABLE IF NOT EXISTS readings (mid INTEGER NOT NULL, ts INTEGER NOT NULL, flow_rate REAL, pressure REAL, "
           "PRIMARY KEY (mid, ts)) WITHOUT ROWID")
db.execute("BEGIN")
db.executemany(f"INSERT INTO readings VALUES ({meter}, ?, ?, ?)", zip(ts.tolist(), df["flow_rate"].tolist(), df["pressure"].tolist(), strict=True))
db.execute("COMMIT")
db.close()
