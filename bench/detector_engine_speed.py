"""Readings/s of the detector engine (every rule, one meter) on synthetic 1-second or 1-minute data.

    PYTHONPATH=. python -m bench.detector_engine_speed --interval 1 --readings 200000
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from services.detector.engine import DetectionEngine
from shared.settings import DetectorSettings


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--interval", type=float, default=1.0, help="seconds between readings")
    ap.add_argument("--readings", type=int, default=200_000)
    a = ap.parse_args()
    rng = np.random.default_rng(7)
    t0 = 1_767_225_600.0  # 2026-01-01 UTC
    ts = t0 + np.arange(a.readings) * a.interval
    hour = (ts % 86_400) / 3600
    flow = 20 + 8 * np.sin((hour - 8) / 24 * 2 * np.pi) + rng.normal(0, 0.8, a.readings)
    flow = np.clip(flow, 0.1, None).round(3)  # meter resolution: repeated values, as from a real meter
    pressure = (3.5 - 0.02 * (flow - 20) + rng.normal(0, 0.02, a.readings)).round(3)
    e = DetectionEngine(DetectorSettings(), "Asia/Seoul", meter_spec=lambda _m: (("flow_rate", "pressure"), a.interval))
    rows = list(zip(ts.tolist(), flow.tolist(), pressure.tolist(), strict=True))
    n_anom = 0
    start = time.perf_counter()
    for t, f, p in rows:
        n_anom += len(e.process_values("site", "m1", t, f, p))
    dt = time.perf_counter() - start
    print(f"interval {a.interval:g} s: {a.readings} readings in {dt:.2f} s = {a.readings / dt:,.0f} readings/s ({n_anom} anomalies)")


if __name__ == "__main__":
    main()
