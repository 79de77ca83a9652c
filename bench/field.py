"""Files from the field: what real district records do that the simulator does not, each through
``flowwatch evaluate`` with the defaults (no labels: alerts per 30 days, as an operator lives with them).

    python -m bench.field [--out DIR]        # ~2 min on the 2-core machine

Each case is one synthetic district (15-minute flow, a morning and an evening peak, a day factor,
AR(1) noise; nothing happens in it: every alert is a false one), changed in one way a field file is:

- ``seasonal rise`` / ``seasonal fall``: demand grows (falls) 30 % over four months, as summer does;
- ``Berlin year``: a zone with daylight saving (and its holidays), a year;
- ``coarse meter``: a small district's flow in whole m³/h (2 to 6);
- ``large district``: tens of thousands of customers, peaks near 2,800 m³/h;
- ``local time``: timestamps as a logger writes them, local wall time without an offset, read with
  ``--naive-tz`` (and, to show what the note is for, without it); in Berlin, across the clock changes
  (an hour written twice in October, one skipped in March);
- ``minute logger``: one reading a minute on a clock that jitters by 20 s, a reading lost now and then;
- ``commissioning``: the meter reads 0 for its first five days (put in service on a closed inlet);
- ``meter swapped``: from day 60 the meter reads 8 % more (a new meter, another calibration);
- ``five days without data``: a logger or link down for five days in the middle;
- ``logger set to 5 minutes``: 15-minute readings, then every 5 minutes from day 60;
- ``summer watering``: afternoon demand up to 50 % higher at midsummer, the night unchanged;
- ``hourly meter``: one reading an hour (many district loggers and billing feeds), a Berlin year;
- ``a tank filled``: a storage tank in the district (an apartment block's, on a float valve) fills
  two to four times a day at any hour, the inflow 17 m³/h (a quarter of the mean) higher for one to
  two hours, at 1 and at 15 minutes; and once or twice a day.

Scored from day 28 (four weeks of learning). docs/evaluation.md ("Files from the field") has the
figures before and after the changes they led to.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from app.scoring import HYDRAULIC_ALERTS

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Case:
    name: str
    days: int = 120
    start: str = "2026-01-05"  # a Monday
    tz: str = "Asia/Seoul"
    growth: float = 0.0  # relative change of demand over the run
    scale: float = 100.0  # mean-ish flow (m³/h)
    decimals: int = 3
    naive: bool = False  # timestamps in local wall time without an offset
    step_minutes: int = 15
    jitter_s: int = 0  # the logger's clock, this many seconds either way
    drop: float = 0.0  # share of readings lost
    zero_days: int = 0  # the first days read 0 (a meter put in service on a closed inlet)
    swap: tuple[int, float] | None = None  # (day, factor): the meter replaced by one that reads this much more from that day
    outage: tuple[int, int] | None = None  # (day, days): nothing arrives for that long
    faster: int | None = None  # from this day on, a reading every 5 minutes instead of every step
    irrigation: float = 0.0  # summer watering: the afternoon's demand up by this share at midsummer (none at night)
    tank: float = 0.0  # a storage tank filled at any hour for 1-2 hours: the inflow up by this much (m³/h)...
    fills: tuple[int, int] = (2, 4)  # ... this many times a day (at least, at most)
    args: list[str] = field(default_factory=list)
    seed: int = 1


CASES = [
    Case("plain (reference)"),
    Case("seasonal rise 30 % / 4 months", growth=0.3, start="2026-03-02"),  # a quarter boundary (1 April) early on
    Case("seasonal fall 30 % / 4 months", growth=-0.3, start="2026-03-02"),
    Case("Berlin year (DST, holidays)", days=357, tz="Europe/Berlin"),
    Case("coarse meter (whole m³/h)", days=357, tz="Europe/Berlin", scale=5.0, decimals=0),
    Case("large district (peaks 2,800 m³/h)", days=60, scale=2000.0),
    Case("local time, --naive-tz", days=60, naive=True, args=["--naive-tz", "Asia/Seoul"]),
    Case("local time, read as UTC", days=60, naive=True),
    Case("Berlin year in local wall time, --naive-tz", days=357, tz="Europe/Berlin", naive=True, args=["--naive-tz", "Europe/Berlin"]),
    Case("minute logger: clock ±20 s, 0.5 % dropped", days=60, step_minutes=1, jitter_s=20, drop=0.005),
    Case("commissioning: 5 days of zero flow first", zero_days=5),
    Case("meter swapped on day 60: reads 8 % more", swap=(60, 1.08)),
    Case("five days without data from day 50", outage=(50, 5)),
    Case("logger set to 5 minutes on day 60", faster=60),
    Case("summer watering: afternoons +50 % at midsummer", irrigation=0.5, start="2026-05-04"),
    Case("hourly meter, a year (Berlin)", days=357, tz="Europe/Berlin", step_minutes=60),
    Case("a tank filled 2-4 times a day (1-minute)", days=70, step_minutes=1, tank=17.0),
    Case("a tank filled 2-4 times a day (15-minute)", tank=17.0),
    Case("a tank filled once or twice a day (1-minute)", days=70, step_minutes=1, tank=17.0, fills=(1, 2)),
]


def district(case: Case) -> pd.DataFrame:
    rng = np.random.default_rng(case.seed)
    step = 5 if case.faster is not None else case.step_minutes  # drawn at 5 minutes, kept at the step before ``faster``
    per_day = 1440 // step
    idx = pd.date_range(case.start, periods=case.days * per_day, freq=f"{step}min", tz=case.tz)
    n = len(idx)
    hour = idx.hour.to_numpy() + idx.minute.to_numpy() / 60
    shape = 0.45 + 0.55 * np.exp(-(((hour - 8) / 2.5) ** 2)) + 0.5 * np.exp(-(((hour - 20) / 3) ** 2))
    day = (idx.normalize() - idx[0].normalize()).days.to_numpy()
    day_factor = 1 + rng.normal(0, 0.04, day.max() + 1)[day]
    rho = 0.8 ** (step / 15)  # the same noise in time at any interval
    ar, e = np.zeros(n), rng.normal(0, 0.03 * np.sqrt((1 - rho**2) / (1 - 0.64)), n)
    for i in range(1, n):
        ar[i] = rho * ar[i - 1] + e[i]
    flow = case.scale * shape * day_factor * (1 + case.growth * np.arange(n) / n) * (1 + ar)
    if case.irrigation:  # rises and falls over the run, 14:00-20:00 local, nothing at night
        flow *= 1 + case.irrigation * np.sin(np.pi * np.arange(n) / n) * np.exp(-(((hour - 17) / 2) ** 2))
    if case.tank:
        hours = np.arange(n) * step / 60
        on = np.zeros(n, dtype=bool)
        for d in range(case.days):
            for _ in range(int(rng.integers(case.fills[0], case.fills[1] + 1))):
                s0 = d * 24 + rng.uniform(0, 24)
                on |= (hours >= s0) & (hours < s0 + rng.uniform(1, 2))
        flow[on] += case.tank
    flow[: case.zero_days * per_day] = 0.0
    keep = np.ones(n, dtype=bool)
    if case.swap:
        flow[day >= case.swap[0]] *= case.swap[1]
    if case.outage:
        keep &= (day < case.outage[0]) | (day >= case.outage[0] + case.outage[1])
    if case.faster is not None:  # 15-minute readings (the 5-minute draw's every third) until that day
        keep &= (day >= case.faster) | (np.arange(n) % 3 == 0)
    if case.jitter_s:
        idx = idx + pd.to_timedelta(rng.integers(-case.jitter_s, case.jitter_s + 1, n), unit="s")
    stamps = idx.strftime("%Y-%m-%d %H:%M:%S") if case.naive else idx.tz_convert("UTC").strftime("%Y-%m-%dT%H:%M:%SZ")
    out = pd.DataFrame({"timestamp": stamps, "flow_rate": np.round(flow, case.decimals)})
    return out[(rng.random(n) >= case.drop) & keep]


def run(case: Case, work: Path) -> dict:
    slug = "".join(c if c.isalnum() else "-" for c in case.name.lower())
    readings, out = work / f"{slug}.csv", work / slug
    district(case).to_csv(readings, index=False)
    env = {**os.environ, "FLOWWATCH_TIMEZONE": case.tz}
    r = subprocess.run([sys.executable, "-m", "app.cli", "evaluate", "--readings", str(readings), "--out", str(out),
                        "--score-from-day", "28", "--quiet", *case.args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    if r.returncode != 0:
        return {"failed": (r.stderr.strip().splitlines() or ["?"])[-1]}
    rep = json.loads((out / "report.json").read_text())
    alerts = pd.read_csv(out / "anomalies.csv", parse_dates=["start", "end"])
    end = pd.Timestamp(rep["scored_to"])
    hydraulic = alerts[alerts["kind"].isin(HYDRAULIC_ALERTS) & (alerts["end"].fillna(end) > pd.Timestamp(rep["scored_from"]))]
    rep["longest_days"] = float(((hydraulic["end"].fillna(end) - hydraulic["start"]).dt.total_seconds() / 86400).max()) if len(hydraulic) else 0.0
    rep["notes"] = [line for line in r.stderr.splitlines() if line.startswith("flowwatch evaluate:")]
    return rep


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.field", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=None, help="keep the files and outputs here (default: a temp folder)")
    p.add_argument("--only", default="", help="the cases whose name holds this text")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="fw-field-") as tmp:
        work = args.out or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        print("| case | scored days | alerts per 30 days | hydraulic | by kind | longest hydraulic alert (days) | note |")
        print("|---|---|---|---|---|---|---|")
        for case in [c for c in CASES if args.only.lower() in c.name.lower()]:
            rep = run(case, work)
            if "failed" in rep:
                print(f"| {case.name} | - | - | - | - | - | evaluate failed: {rep['failed'][:120]} |", flush=True)
                continue
            kinds = ", ".join(f"{k} {sum(v.values()):.2f}" for k, v in sorted(rep["per_30_days_by_kind"].items())) or "-"
            note = "yes" if rep["notes"] else "-"
            print(f"| {case.name} | {rep['scored_days']:.0f} | {rep['alerts_per_30_days']:.2f} | {rep['hydraulic_alerts_per_30_days']:.2f} "
                  f"| {kinds} | {rep['longest_days']:.1f} | {note} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
