"""Benchmark: the forecaster with many meters: the hourly round for all meters and signals, and RSS.

    python -m bench.forecast_meters [--meters 10,100,1000]

A small model is trained once (its own process, not measured) and served for every meter and signal
(hard links: one version folder per meter and signal, as the trainer writes them). For each fleet
size a fresh process that never imports TensorFlow runs the forecaster service against a real
Mosquitto and SQLite, fills every meter's window with 8 days of readings, then times one hourly
round: every meter's every signal forecast (window, LiteRT through the bounded model cache,
store, publish). Targets (issue 15): the round <= 60 s and RSS <= 500 MB at 1,000 meters.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.common import ROOT, train_small_models

TARGET_S, TARGET_MB = 60.0, 500.0

CHILD = r"""
import json, sys, time
from datetime import UTC, datetime, timedelta
import numpy as np
from shared.settings import Settings
from services.forecaster.service import ForecasterService
s = Settings.model_validate_json(open(sys.argv[1]).read())
def rss():
    st = {l.split(":")[0]: int(l.split()[1]) for l in open("/proc/self/status") if l.startswith(("VmRSS", "VmHWM"))}
    return st["VmRSS"] / 1024, st["VmHWM"] / 1024
svc = ForecasterService(s)
svc.bus.connect(10)
svc.setup()
base = rss()[0]
hour = datetime(2026, 3, 10, 0, 0, tzinfo=UTC)
t0 = int(hour.timestamp())
t = time.perf_counter()
for e in svc.engines.values():  # 8 days at 10 minutes, the last 2 hours at 1 minute
    for k in range(8 * 144, 12, -1):
        ts = t0 - 600 * k
        e.window.add(ts, {"flow_rate": 50.0 + 20 * np.sin(ts / 13751), "pressure": 3.5})
    for k in range(120, 0, -1):
        ts = t0 - 60 * k
        e.window.add(ts, {"flow_rate": 50.0 + 20 * np.sin(ts / 13751), "pressure": 3.5})
fill_s = time.perf_counter() - t
t = time.perf_counter()
n = 0
models = set()
for m in s.meter_ids:
    for f in svc.forecast(hour, meter=m):
        n += 1
        models.add(f.model)
round_s = time.perf_counter() - t
now, hwm = rss()
fallbacks = sum(e.fallbacks for e in svc.engines.values())
svc.teardown(); svc.bus.close()
print(json.dumps({"meters": len(s.meter_ids), "forecasts": n, "round_s": round_s, "fill_s": fill_s, "rss_mb": now,
                  "hwm_mb": hwm, "base_mb": base, "fallbacks": fallbacks, "models": sorted(models),
                  "loads": svc.cache.loads, "cached": len(svc.cache), "tf": "tensorflow" in sys.modules}))
"""


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.forecast_meters", description=__doc__.splitlines()[0])
    p.add_argument("--meters", default="10,100,1000", help="fleet sizes, comma-separated")
    args = p.parse_args(argv)
    sizes = [int(x) for x in args.meters.split(",")]

    from app.broker import MosquittoProcess, mqtt_settings
    from shared import modelstore
    from shared.settings import Settings

    results = []
    with tempfile.TemporaryDirectory() as tmp:
        broker = MosquittoProcess(Path(tmp) / "mosquitto").start()
        try:
            train_s = Settings(data_dir=Path(tmp) / "train", trainer={"epochs": 2, "holdout_days": 2, "nice": 0})
            trained = train_small_models(train_s, Path(tmp))
            for n in sizes:
                ids = [f"m{i:04d}" for i in range(n)]
                s = Settings(data_dir=Path(tmp) / f"var{n}", mqtt=mqtt_settings(broker).model_dump(),
                             meters=[{"id": i} for i in ids], limits={"max_meters_per_site": max(n, 1000)})
                root = s.path(s.models.dir)
                for i in ids:
                    for sig, src in trained.items():
                        dst = modelstore.version_dir(modelstore.meter_dir(root, s.site, i), sig, Path(src).name)
                        dst.mkdir(parents=True)
                        for f in (modelstore.MODEL_FILE, modelstore.META_FILE):
                            os.link(Path(src) / f, dst / f)
                        modelstore.set_current(modelstore.meter_dir(root, s.site, i), sig, dst.name)
                c = Path(tmp) / f"fw{n}.json"
                c.write_text(s.model_dump_json())
                r = subprocess.run([sys.executable, "-c", CHILD, str(c)], cwd=ROOT, capture_output=True, text=True)
                if r.returncode != 0:
                    print(r.stderr[-3000:], file=sys.stderr)
                    return 1
                results.append(json.loads(r.stdout.strip().splitlines()[-1]))
        finally:
            broker.stop()

    print(f"\nforecaster, one hourly round of every meter and signal (LiteRT; model cache of "
          f"{Settings().forecaster.max_loaded_models} versions)")
    print(f"{'meters':>7}{'forecasts':>10}{'round s':>9}{'ms/fc':>7}{'RSS MB':>8}{'peak MB':>8}{'start MB':>9}{'loads':>7}{'fallb.':>7}")
    for r in results:
        print(f"{r['meters']:>7}{r['forecasts']:>10}{r['round_s']:>9.1f}{1000 * r['round_s'] / max(r['forecasts'], 1):>7.1f}"
              f"{r['rss_mb']:>8.0f}{r['hwm_mb']:>8.0f}{r['base_mb']:>9.0f}{r['loads']:>7}{r['fallbacks']:>7}")
    print(f"targets at 1,000 meters: round <= {TARGET_S:.0f} s, RSS <= {TARGET_MB:.0f} MB; models served: "
          f"{sorted({m for r in results for m in r['models']})}; TensorFlow imported: {any(r['tf'] for r in results)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
