"""Plausible time: a reading's timestamp is judged before it moves any clock (pure units; the
services' path is in test_detector_service.py and test_collector_service.py)."""

from datetime import UTC, datetime, timedelta
from pathlib import Path

from shared.eventtime import TimeGuard, implausible
from shared.readings_csv import read_all
from shared.settings import RangeLimits

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
L = RangeLimits()


def test_far_future_and_before_the_epoch_are_implausible():
    assert "ahead of this machine's clock" in implausible(datetime(9999, 12, 31, tzinfo=UTC), last=NOW, now=NOW, limits=L)
    assert "ahead" in implausible(datetime(2099, 1, 1, tzinfo=UTC), last=None, now=NOW, limits=L)
    assert "limits.earliest" in implausible(datetime(1970, 1, 1, tzinfo=UTC), last=None, now=NOW, limits=L)
    assert implausible(NOW + timedelta(seconds=299), last=None, now=NOW, limits=L) is None  # clock drift
    assert implausible(NOW - timedelta(days=400), last=NOW, now=NOW, limits=L) is None  # history, a backfill


def test_a_replay_running_ahead_of_the_clock_passes_reading_by_reading():
    g = TimeGuard(L)
    t = NOW + timedelta(days=30)  # a demo at --speed 600 runs weeks ahead of the wall clock
    g.seed("m", t)
    for i in range(1, 100):
        assert g.check("m", t + timedelta(minutes=i), NOW) is None
    assert g.check("m", t + timedelta(days=3), NOW) is not None  # a jump ahead of clock and meter
    assert g.check("m", t + timedelta(minutes=100), NOW) is None  # the rejected one moved no clock


def test_files_reject_absurd_rows_with_their_line_and_keep_a_simulation_ahead(tmp_path: Path):
    f = tmp_path / "r.csv"
    rows = ["timestamp,flow_rate,pressure", "2026-01-01T00:00:00Z,1,2", "9999-12-31T00:00:00Z,1,2",
            "2026-01-01T00:01:00Z,1,2", "2099-01-01T00:00:00Z,1,2", "1970-01-01T00:00:00Z,1,2", "2026-01-01T00:02:00Z,1,2"]
    f.write_text("\n".join(rows) + "\n")
    df, rejects = read_all(f, L)
    assert len(df) == 3 and [r.line for r in rejects] == [3, 5, 6]
    future = tmp_path / "future.csv"  # a simulated year ahead of today: every row has a neighbour
    start = datetime.now(UTC).replace(microsecond=0) + timedelta(days=365)
    future.write_text("timestamp,flow_rate,pressure\n" + "".join(
        f"{(start + timedelta(minutes=i)).strftime('%Y-%m-%dT%H:%M:%SZ')},1,2\n" for i in range(50)))
    df, rejects = read_all(future, L)
    assert len(df) == 50 and rejects == []


def test_year_zero_is_rejected_not_a_crash(tmp_path: Path):
    f = tmp_path / "z.csv"
    f.write_text("timestamp,flow_rate,pressure\n0000,,\n2026-01-01T00:00:00Z,1,2\n")
    df, rejects = read_all(f, L)
    assert len(df) == 1 and [r.line for r in rejects] == [2]
