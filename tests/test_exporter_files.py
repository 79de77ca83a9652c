"""Atomic writes (a reader process never sees a torn file) and the daily archive (once per day)."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from services.exporter.archive import MANIFEST, Archiver, day_folder
from services.exporter.state import MeterState
from services.exporter.writer import atomic_write, remove_stale_temps
from shared.messages import Anomaly, Forecast, Reading
from tests.exporter_check import verify

REPO = Path(__file__).resolve().parents[1]
TZ = ZoneInfo("Asia/Seoul")
M = timedelta(minutes=1)
REWRITES = 3000


def _server_versions(n: int) -> list[bytes]:
    """``n`` distinct, valid server files of different lengths, composed by the exporter's code."""
    out = []
    t0 = datetime(2026, 3, 1, 1, 0, tzinfo=UTC)
    for k in range(n):
        ms = MeterState("s1", "m1", TZ)
        for i in range(10):
            if (i + k) % 3:  # a varying pattern of NULL rows -> varying lengths
                ms.put_reading(t0 + i * M, 10.0 + k + i / 7, 3.0 + (k % 97) / 100)
        out.append(ms.compose_server(t0))
    return out


def test_atomic_write_replaces_and_leaves_no_temp(tmp_path: Path):
    p = tmp_path / "out" / "server.txt"
    atomic_write(p, b"one")
    atomic_write(p, b"two")
    assert p.read_bytes() == b"two"
    assert sorted(x.name for x in p.parent.iterdir()) == ["server.txt"]
    assert oct(p.stat().st_mode & 0o777) == "0o644"
    (p.parent / ".fw-server.txt.abc.tmp").write_bytes(b"half")  # what a crash mid-write leaves
    assert remove_stale_temps(p.parent) == 1
    assert sorted(x.name for x in p.parent.iterdir()) == ["server.txt"]


@pytest.mark.slow
def test_reader_process_never_sees_a_torn_file(tmp_path: Path):
    path = tmp_path / "server.txt"
    versions = _server_versions(50)
    assert len({len(v) for v in versions}) > 1
    atomic_write(path, versions[0])
    stop, ready = tmp_path / "stop", tmp_path / "ready"
    reader = subprocess.Popen(
        [sys.executable, "-m", "tests.exporter_check", str(path), str(stop), str(ready), "240"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 60
        while not ready.exists():
            assert reader.poll() is None, reader.stderr.read().decode()
            assert time.monotonic() < deadline, "reader process did not start"
            time.sleep(0.02)
        for i in range(REWRITES):
            atomic_write(path, versions[i % len(versions)])
        stop.touch()
        out, err = reader.communicate(timeout=120)
    finally:
        if reader.poll() is None:
            reader.kill()
            reader.wait()
    assert reader.returncode == 0, err.decode()
    result = json.loads(out)
    assert result["bad"] == 0, result["first_bad"]
    assert result["missing"] == 0
    assert result["reads"] > 100
    assert result["distinct"] > 1  # it really read while the file was being replaced
    assert verify(path.read_bytes())


def test_a_plain_rewrite_would_be_caught(tmp_path: Path):
    """The check the reader relies on does catch a non-atomic writer's half-written file."""
    data = _server_versions(1)[0]
    path = tmp_path / "server.txt"
    with path.open("wb") as f:  # what open(..., "w").write() leaves for a moment
        f.write(data[: len(data) // 2])
    assert not verify(path.read_bytes())


# --- daily archive ------------------------------------------------------------------------------
DAY = date(2026, 3, 1)
D0 = datetime(2026, 3, 1, 0, 0, tzinfo=TZ).astimezone(UTC)  # 00:00 local on DAY


def _fill(store) -> None:
    rs = [Reading(site="s1", meter="m1", ts=D0 - 5 * M + i * M, seq=i, flow_rate=10.0 + i, pressure=3.0)
          for i in range(0, 24 * 60 + 10)]  # 23:55 the day before .. 00:04 the day after
    rs[10] = rs[10].model_copy(update={"flow_rate": None, "quality": ("flow_rate_missing",)})
    store.write_readings(rs)
    store.write_anomalies([
        Anomaly(site="s1", meter="m1", kind="burst", signal="both", severity="critical", state="closed",
                start=D0 + 60 * M, end=D0 + 70 * M, ts=D0 + 70 * M, value=99.5, threshold=50.0, message="jump, then drop"),
    ])
    store.write_forecast(Forecast(site="s1", meter="m1", signal="flow_rate", issued_at=D0 + 60 * M, step_minutes=10,
                                  values=(1.0, 2.0, 3.0, 4.0, 5.0, 6.0), model="seasonal-naive"))


def test_day_boundary_produces_the_archive_once(store, tmp_path: Path):
    _fill(store)
    root = tmp_path / "archive"
    a = Archiver(store, root, TZ, keep_days=90, lag=timedelta(minutes=5))
    next_midnight = D0 + timedelta(days=1)
    a.on_event_time(next_midnight + 4 * M)  # before the lag: DAY is not due yet (the day before it is)
    assert not (day_folder(root, DAY)).exists()
    assert a.on_event_time(next_midnight + 5 * M)  # 00:05 local: day D is archived
    folder = root / "2026" / "03" / "01"
    assert sorted(p.name for p in folder.iterdir()) == ["anomalies.csv", "forecasts.csv", MANIFEST, "readings.csv"]
    before = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in folder.iterdir()}
    # redelivery of the same readings, and later readings of the same day: nothing rewritten
    for t in (next_midnight + 5 * M, next_midnight + 6 * M, next_midnight + 23 * timedelta(hours=1)):
        assert not a.on_event_time(t)
    # a restart (new archiver, same folder): still once
    assert not Archiver(store, root, TZ, keep_days=90, lag=timedelta(minutes=5)).on_event_time(next_midnight + 10 * M)
    assert {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in folder.iterdir()} == before

    readings = list(csv.DictReader(io.StringIO((folder / "readings.csv").read_text())))
    assert len(readings) == 24 * 60  # exactly the local day: 00:00 .. 23:59
    assert readings[0]["time"] == "2026-03-01T00:00:00+09:00" and readings[-1]["time"] == "2026-03-01T23:59:00+09:00"
    assert readings[5]["flow_rate_m3h"] == "" and readings[5]["quality"] == "flow_rate_missing"
    assert readings[6]["flow_rate_m3h"] == "21.0" and readings[6]["site"] == "s1"
    anomalies = list(csv.DictReader(io.StringIO((folder / "anomalies.csv").read_text())))
    assert [(x["kind"], x["start"], x["message"]) for x in anomalies] == [("burst", "2026-03-01T01:00:00+09:00", "jump, then drop")]
    forecasts = list(csv.DictReader(io.StringIO((folder / "forecasts.csv").read_text())))
    assert len(forecasts) == 6 and forecasts[0]["target_time"] == "2026-03-01T01:10:00+09:00"
    manifest = json.loads((folder / MANIFEST).read_text())
    assert manifest["rows"] == {"readings": 1440, "anomalies": 1, "forecasts": 6}


def test_old_archives_are_removed(tmp_path: Path):
    from shared.store.sqlite import SqliteStore

    store = SqliteStore(tmp_path / "db.sqlite")
    try:
        _fill(store)
        root = tmp_path / "archive"
        for d in (date(2026, 1, 30), date(2026, 2, 27), date(2026, 2, 28)):
            day_folder(root, d).mkdir(parents=True)
            (day_folder(root, d) / MANIFEST).write_text("{}")
        (root / "README").write_text("not ours")
        Archiver(store, root, TZ, keep_days=3, lag=timedelta(0)).on_event_time(D0 + timedelta(days=1))
        left = sorted(str(p.relative_to(root)) for p in root.rglob(MANIFEST))
        assert left == ["2026/02/27/manifest.json", "2026/02/28/manifest.json", "2026/03/01/manifest.json"]
        assert not (root / "2026" / "01").exists() and (root / "README").exists()
    finally:
        store.close()


def test_archive_of_an_empty_day_writes_nothing(tmp_path: Path):
    from shared.store.sqlite import SqliteStore

    with SqliteStore(tmp_path / "db.sqlite") as store:
        root = tmp_path / "archive"
        assert not Archiver(store, root, TZ, keep_days=3, lag=timedelta(0)).on_event_time(D0 + timedelta(days=1))
        assert not root.exists() or not any(root.rglob("*.csv"))
    assert os.path.exists(tmp_path / "db.sqlite")


def _days(store, first: date, n: int, every: timedelta = 10 * M) -> None:
    """Readings every 10 minutes on ``n`` local days from ``first`` (as an import or an outage would leave them)."""
    start = datetime.combine(first, datetime.min.time(), tzinfo=TZ).astimezone(UTC)
    steps = int(n * timedelta(days=1) / every)
    store.write_readings([Reading(site="s1", meter="m1", ts=start + i * every, seq=i, flow_rate=10.0, pressure=3.0) for i in range(steps)])


def _archived(root: Path) -> list[date]:
    return sorted(date(*map(int, p.parent.relative_to(root).parts)) for p in root.rglob(MANIFEST))


def test_every_missed_day_is_archived(tmp_path: Path):
    """5 days stored (an import, or the exporter down), the first reading of day 6: 5 archives with manifests."""
    from shared.store.sqlite import SqliteStore

    with SqliteStore(tmp_path / "db.sqlite") as store:
        _days(store, DAY, 5)
        root = tmp_path / "archive"
        a = Archiver(store, root, TZ, keep_days=90, lag=timedelta(minutes=5))
        day6 = D0 + timedelta(days=5)
        assert a.on_event_time(day6 + 5 * M)
        assert _archived(root) == [DAY + timedelta(days=i) for i in range(5)]
        for d in _archived(root):
            manifest = json.loads((day_folder(root, d) / MANIFEST).read_text())
            assert manifest["day"] == d.isoformat() and manifest["rows"]["readings"] == 144
        assert not a.on_event_time(day6 + 6 * M)  # nothing more due


def test_catching_up_is_bounded_per_reading_and_resumes_after_a_restart(tmp_path: Path):
    from shared.store.sqlite import SqliteStore

    with SqliteStore(tmp_path / "db.sqlite") as store:
        _days(store, DAY, 12)
        root = tmp_path / "archive"
        at = D0 + timedelta(days=12, minutes=5)  # days 1..12 are due
        a = Archiver(store, root, TZ, keep_days=90, lag=timedelta(minutes=5), catchup_days=7)
        assert a.on_event_time(at)
        assert _archived(root) == [DAY + timedelta(days=i) for i in range(7)]
        # a restart: a new archiver finds the newest manifest and goes on from the day after it
        b = Archiver(store, root, TZ, keep_days=90, lag=timedelta(minutes=5), catchup_days=3)
        assert b.newest_archived() == DAY + timedelta(days=6)
        assert b.on_event_time(at + M)
        assert _archived(root) == [DAY + timedelta(days=i) for i in range(10)]
        assert b.on_event_time(at + 2 * M)
        assert _archived(root)[-1] == DAY + timedelta(days=11) and len(_archived(root)) == 12
        assert not b.on_event_time(at + 3 * M)


def test_catching_up_skips_days_the_archive_would_not_keep(tmp_path: Path):
    from shared.store.sqlite import SqliteStore

    with SqliteStore(tmp_path / "db.sqlite") as store:
        _days(store, DAY, 10)
        root = tmp_path / "archive"
        a = Archiver(store, root, TZ, keep_days=3, lag=timedelta(0))
        assert a.on_event_time(D0 + timedelta(days=10))
        assert _archived(root) == [DAY + timedelta(days=i) for i in (7, 8, 9)]


def test_a_failed_day_is_retried_and_the_catch_up_goes_on(tmp_path: Path):
    from shared.store import StoreError
    from shared.store.sqlite import SqliteStore

    with SqliteStore(tmp_path / "db.sqlite") as store:
        _days(store, DAY, 4)
        root = tmp_path / "archive"
        a = Archiver(store, root, TZ, keep_days=90, lag=timedelta(0))
        real, fail = store.read_anomaly_records, [True]

        def flaky(site, meter, start, end):
            if start.astimezone(TZ).date() == DAY + timedelta(days=2) and fail[0]:
                raise StoreError("locked (injected)")
            return real(site, meter, start, end)

        store.read_anomaly_records = flaky
        at = D0 + timedelta(days=4)
        assert a.on_event_time(at)  # days 1 and 2 written, day 3 failed
        assert _archived(root) == [DAY, DAY + timedelta(days=1)]
        fail[0] = False
        assert not a.on_event_time(at + M)  # before the retry time (event time)
        assert a.on_event_time(at + 10 * M)
        assert _archived(root) == [DAY + timedelta(days=i) for i in range(4)]
