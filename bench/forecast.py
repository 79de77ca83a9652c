"""Benchmark: the hourly forecast job per signal, and the forecaster's memory.

The job per signal (read window, infer, store, publish; target <= 20 ms) and the forecaster's RSS
(target <= 150 MB), measured in a subprocess that never imports TensorFlow.

    python -m bench.forecast [--quick] [--runs N]

A small model is trained first (in its own process, not measured); the forecaster service then
runs against a real Mosquitto and SQLite with a back-filled week of readings. Anchor (brief §12,
seed 001): the hourly job took ~10 s; LiteRT LSTM(32) ~0.05 ms per call at ~46 MB RSS.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.common import ROOT, train_small_models

TARGET_MS, TARGET_MB = 20.0, 150.0

CHILD = r"""
import json, sys, time
from datetime import timedelta
from shared.settings import Settings
from services.forecaster.service import ForecasterService
s = Settings.model_validate_json(sys.argv[1])
runs = int(sys.argv[2])
svc = ForecasterService(s)
svc.bus.connect(10)
svc.setup()
last = svc.store.last_reading_time(s.site, s.meter)
hour = last.replace(minute=0, second=0, microsecond=0)
times = {"flow_rate": [], "pressure": []}
models = {}
for k in range(runs):
    out = svc.forecast(hour - timedelta(hours=k % 24))
    for f in out:
        times[f.signal].append(svc.last_job_ms[f.signal])
        models[f.signal] = f.model
status = {l.split(":")[0]: int(l.split()[1]) for l in open("/proc/self/status") if l.startswith(("VmRSS", "VmHWM"))}
svc.teardown(); svc.bus.close()
print(json.dumps({"times": times, "models": models, "rss_kb": status["VmRSS"], "hwm_kb": status["VmHWM"],
                  "tf": "tensorflow" in sys.modules}))
"""


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.forecast", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="smoke run: few repetitions")
    p.add_argument("--runs", type=int, default=None, help="forecast jobs per repetition (default 200; quick 20)")
    args = p.parse_args(argv)
    runs = args.runs or (20 if args.quick else 200)
    reps = 1 if args.quick else 5

    from app.broker import MosquittoProcess, mqtt_settings
    from shared.settings import Settings

    with tempfile.TemporaryDirectory() as tmp:
        broker = MosquittoProcess(Path(tmp) / "mosquitto").start()
        try:
            s = Settings(data_dir=Path(tmp) / "var", mqtt=mqtt_settings(broker).model_dump(),
                         trainer={"epochs": 2, "holdout_days": 2, "nice": 0, "min_improvement": 0.0})
            # a model to serve (trained and exported in its own process, not measured); promote it
            # whatever its score, so the benchmark measures the LiteRT path
            train_small_models(s, Path(tmp), promote=True)
            cfg = Path(tmp) / "fw.json"
            cfg.write_text(s.model_dump_json())
            results = []
            for _ in range(reps):
                r = subprocess.run([sys.executable, "-c", CHILD, cfg.read_text(), str(runs)], cwd=ROOT,
                                   capture_output=True, text=True, check=True)
                results.append(json.loads(r.stdout.strip().splitlines()[-1]))
        finally:
            broker.stop()

    print(f"\nhourly forecast job (read window, infer, store, publish), {runs} jobs x {reps} process(es)")
    print(f"{'signal':<10}{'model':<20}{'median ms':>10}{'p95 ms':>9}{'target':>9}")
    for sig in ("flow_rate", "pressure"):
        allt = sorted(t for r in results for t in r["times"][sig])
        med = statistics.median(allt)
        p95 = allt[int(0.95 * (len(allt) - 1))]
        print(f"{sig:<10}{results[0]['models'][sig]:<20}{med:>10.2f}{p95:>9.2f}{'<= 20':>9}")
    rss = statistics.median(r["rss_kb"] for r in results) / 1024
    hwm = statistics.median(r["hwm_kb"] for r in results) / 1024
    print(f"\nforecaster RSS (median of {reps}): {rss:.0f} MB, peak {hwm:.0f} MB; target <= {TARGET_MB:.0f} MB; "
          f"TensorFlow imported: {any(r['tf'] for r in results)}")
    print("anchors: seed 001 hourly job ~10 s; LiteRT LSTM(32) ~0.05 ms per call at ~46 MB RSS (brief §8)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
