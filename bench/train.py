"""Benchmark: train both models on one year of minute data (target <= 5 min on 2 cores).

    python -m bench.train [--quick] [--days N] [--threads N]

Prints the wall time per phase and the held-out WAPE of the model, persistence and seasonal naive
on the synthetic series (app/synthetic.py). Anchor (brief §12): Keras LSTM(32), 3 epochs on
52,000 windows ~17 s; seed 001 needed ~7 h for a year.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

TARGET_S = 300.0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.train", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="smoke run: 21 days, 2 epochs")
    p.add_argument("--days", type=float, default=None, help="days of minute data (default 365)")
    p.add_argument("--threads", type=int, default=2, help="trainer.threads (default 2)")
    args = p.parse_args(argv)
    days = args.days or (21 if args.quick else 365)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    from app.synthetic import diurnal_frame
    from services.trainer import training
    from shared.settings import Settings
    from shared.store.sqlite import SqliteStore

    with tempfile.TemporaryDirectory() as tmp:
        trainer = {"threads": args.threads, "nice": 0, "holdout_days": 7}
        if args.quick:
            trainer.update(epochs=2, holdout_days=2)
        s = Settings(data_dir=Path(tmp), trainer=trainer)
        t = time.perf_counter()
        frame = diurnal_frame(days)
        st = SqliteStore(s.path(s.store.sqlite.path))
        st.write_reading_frame(s.site, s.meter, frame)
        t_data = time.perf_counter() - t
        t = time.perf_counter()
        training.configure_runtime(s)
        t_import = time.perf_counter() - t
        t = time.perf_counter()
        results = training.train_all(s, st)
        t_train = time.perf_counter() - t
        st.close()

    total = t_import + t_train
    print(f"\ntrain on {days:g} days of minute data ({len(frame):,} readings), both signals, threads={args.threads}")
    print(f"{'phase':<34}{'seconds':>10}")
    print(f"{'generate + store (not counted)':<34}{t_data:>10.1f}")
    print(f"{'import TensorFlow':<34}{t_import:>10.1f}")
    print(f"{'read + train + export + evaluate':<34}{t_train:>10.1f}")
    print(f"{'total':<34}{total:>10.1f}   target <= {TARGET_S:.0f} s on 2 cores; seed 001: ~7 h")
    print(f"\n{'signal':<10}{'epochs':>7}{'windows':>9}{'WAPE model':>12}{'persistence':>13}{'s. naive':>10}{'promoted':>10}")
    for r in results:
        m = r.metrics
        print(f"{r.signal:<10}{m['epochs']:>7.0f}{m['train_windows']:>9.0f}{m['wape_model']:>12.4f}"
              f"{m['wape_persistence']:>13.4f}{m['wape_seasonal_naive']:>10.4f}{'yes' if r.promoted else 'no':>10}")
    print("(held-out WAPE over the last held-out days, all forecast steps; anchor: Keras LSTM(32), 3 epochs on 52,000 windows ~17 s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
