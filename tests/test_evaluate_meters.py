"""``flowwatch evaluate`` on a meter's own kind of file: flow only, hourly readings (issue 15)."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from shared.readings_csv import CsvFormatError, read_all

ROOT = Path(__file__).resolve().parents[1]
START = datetime(2026, 1, 5, tzinfo=UTC)


def hourly_flow_csv(path: Path, days: int, stamp: str = "%Y-%m-%dT%H:%M:%SZ") -> None:
    rng = np.random.default_rng(5)
    hours = np.arange(days * 24)
    flow = 100 + 30 * np.sin(2 * np.pi * hours / 24) + rng.normal(0, 2, len(hours))
    with path.open("w") as f:
        f.write("timestamp,flow_rate\n")
        for h, q in zip(hours, flow, strict=True):
            f.write(f"{START + timedelta(hours=int(h)):{stamp}},{q:.3f}\n")


def test_a_file_without_a_signal_column_reads_that_signal_as_absent_not_flagged(tmp_path):
    p = tmp_path / "r.csv"
    p.write_text("timestamp,flow_rate\n2026-01-05T00:00:00Z,10.5\n2026-01-05T01:00:00Z,\n")
    frame, rejects = read_all(p)
    assert not rejects and len(frame) == 2
    assert frame["pressure"].isna().all()
    assert frame["quality"].tolist() == ["", "flow_rate_missing"]  # an empty flow is missing; pressure is not flagged
    p.write_text("timestamp,temperature\n2026-01-05T00:00:00Z,10.5\n")
    with pytest.raises(CsvFormatError, match="missing column"):
        read_all(p)


def test_evaluate_scores_the_flow_forecast_of_a_flow_only_hourly_file(tmp_path):
    readings, labels, out = tmp_path / "hourly.csv", tmp_path / "labels.csv", tmp_path / "out"
    hourly_flow_csv(readings, 21)
    labels.write_text("start,end,kind,size_pct\n")
    cfg = tmp_path / "flowwatch.yaml"
    cfg.write_text(f"data_dir: {tmp_path / 'var'}\n")
    r = subprocess.run([sys.executable, "-m", "app.cli", "evaluate", "-c", str(cfg), "--readings", str(readings),
                        "--labels", str(labels), "--score-from-day", "8", "--out", str(out), "--quiet"],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    fc = pd.read_csv(out / "forecasts.csv", parse_dates=["issued_at", "target_time"])
    assert set(fc["signal"]) == {"flow_rate"}  # no pressure forecast for a meter without pressure
    assert ((fc["target_time"] - fc["issued_at"]) == pd.Timedelta(hours=1)).all()  # hourly bins: one step per hour
    assert len(fc) >= 20 * 24 - 2
    m = json.loads((out / "metrics.json").read_text())
    flow = m["forecast"]["flow_rate"]
    assert flow["targets"] >= 12 * 24
    assert 0 < flow["forecast"]["wape"] < 0.1  # seasonal naive on a clean daily cycle
    assert m["forecast"]["pressure"] == {"targets": 0}
    assert m["run"]["models"] == {"flow_rate": "seasonal-naive"}


def test_evaluate_of_an_hourly_flow_only_file_raises_no_alert_about_its_interval_or_absent_pressure(tmp_path):
    """Hourly readings are the meter's interval, not a gap every hour; no pressure alert for a meter without pressure."""
    readings, out = tmp_path / "hourly.csv", tmp_path / "out"
    hourly_flow_csv(readings, 14)
    cfg = tmp_path / "flowwatch.yaml"
    cfg.write_text(f"data_dir: {tmp_path / 'var'}\n")
    r = subprocess.run([sys.executable, "-m", "app.cli", "evaluate", "-c", str(cfg), "--readings", str(readings),
                        "--score-from-day", "8", "--out", str(out), "--quiet"],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    alerts = pd.read_csv(out / "anomalies.csv")
    assert "gap" not in set(alerts["kind"]), alerts["kind"].value_counts().to_dict()
    assert "pressure" not in set(alerts["signal"]) and "both" not in set(alerts["signal"])
    assert alerts.empty, f"alerts on a clean daily cycle: {alerts.to_dict('records')}"


def test_evaluate_reads_a_loggers_local_wall_time_with_naive_tz_and_says_so_without(tmp_path):
    """Real records often carry local time with no offset: read as UTC, every night window and hour of
    day moves by the zone's offset, so evaluate says so and --naive-tz reads them as what they are."""
    readings, cfg = tmp_path / "local.csv", tmp_path / "flowwatch.yaml"
    hourly_flow_csv(readings, 9, stamp="%Y-%m-%d %H:%M:%S")  # 2026-01-05 00:00:00 ... (no offset)
    cfg.write_text(f"data_dir: {tmp_path / 'var'}\n")

    def evaluate(out: str, *extra: str) -> tuple[subprocess.CompletedProcess, pd.DataFrame]:
        r = subprocess.run([sys.executable, "-m", "app.cli", "evaluate", "-c", str(cfg), "--readings", str(readings),
                            "--out", str(tmp_path / out), "--quiet", *extra], cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr[-3000:]
        return r, pd.read_csv(tmp_path / out / "forecasts.csv", parse_dates=["issued_at"])

    r, utc = evaluate("utc")
    assert "without a UTC offset are read as UTC" in r.stderr and "--naive-tz Asia/Seoul" in r.stderr, r.stderr
    r, seoul = evaluate("seoul", "--naive-tz", "Asia/Seoul")
    assert "--naive-tz" not in r.stderr, r.stderr
    assert utc["issued_at"].iloc[0] - seoul["issued_at"].iloc[0] == pd.Timedelta(hours=9)  # 01:00 local is 16:00 UTC the day before


def test_evaluate_names_the_limit_that_makes_a_large_meters_readings_invalid(tmp_path):
    from app.evaluate import out_of_range_notes
    from shared.settings import RangeLimits

    p = tmp_path / "r.csv"
    p.write_text("timestamp,flow_rate\n2026-01-05T00:00:00Z,2500\n2026-01-05T01:00:00Z,1500\n2026-01-05T02:00:00Z,2600\n")
    frame, _ = read_all(p, RangeLimits(flow_rate_max=2000))
    (note,) = out_of_range_notes(frame, RangeLimits(flow_rate_max=2000))
    assert note.startswith("2 of 3 flow_rate readings (66.7%) are outside limits 0..2000 m³/h") and "limits.flow_rate_max" in note
    frame, _ = read_all(p)
    assert out_of_range_notes(frame, RangeLimits()) == []  # the default range covers a large district


def test_forecasts_are_not_scored_against_readings_judged_invalid(tmp_path):
    """A meter that sends 10⁹ m³/h now and then: those readings are judged invalid (alerts), and no
    forecast is scored against them. Scored with them, five in three weeks made the forecast's
    WAPE about 1 and persistence's about 2."""
    readings, out = tmp_path / "hourly.csv", tmp_path / "out"
    hourly_flow_csv(readings, 21)
    lines = readings.read_text().splitlines()
    for i in (200, 250, 300, 350, 400):
        ts, _ = lines[i].split(",")
        lines[i] = f"{ts},1e9"
    readings.write_text("\n".join(lines) + "\n")
    cfg = tmp_path / "flowwatch.yaml"
    cfg.write_text(f"data_dir: {tmp_path / 'var'}\n")
    r = subprocess.run([sys.executable, "-m", "app.cli", "evaluate", "-c", str(cfg), "--readings", str(readings),
                        "--score-from-day", "8", "--out", str(out), "--quiet"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "5 of 504 flow_rate readings" in r.stderr
    rep = json.loads((out / "report.json").read_text())
    flow = rep["forecast"]["flow_rate"]
    assert 0 < flow["wape"] < 0.1 and 0 < flow["persistence_wape"] < 0.2, flow
    assert rep["per_30_days_by_kind"]["invalid"]
