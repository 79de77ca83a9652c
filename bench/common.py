"""Helpers shared by the benchmarks: machine description, medians, table printing, small trained models."""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from shared.settings import Settings

ROOT = Path(__file__).resolve().parents[1]

_TRAIN = ("import sys; from shared.settings import Settings; from services.trainer import training; "
          "from shared.store.sqlite import SqliteStore; from shared import modelstore; "
          "s = Settings.model_validate_json(open(sys.argv[1]).read()); training.configure_runtime(s); "
          "st = SqliteStore(s.path(s.store.sqlite.path)); rs = training.train_all(s, st); "
          "[modelstore.set_current(training.models_dir(s), r.signal, r.version) for r in rs if sys.argv[2] == '1']; "
          "print('|'.join(r.signal + '=' + r.path for r in rs))")


def train_small_models(s: Settings, work: Path, promote: bool = False) -> dict[str, str]:
    """Models of ``s``'s meter trained on 16 days of a synthetic diurnal meter, in a process of their
    own (the benchmark's process never imports TensorFlow); signal -> the version's folder.
    ``promote``: made current whatever their score (a benchmark of the serving path, not of training)."""
    from app.synthetic import diurnal_frame
    from shared.store.sqlite import SqliteStore

    st = SqliteStore(s.path(s.store.sqlite.path))
    st.write_reading_frame(s.site, s.meter, diurnal_frame(16))
    st.close()
    cfg = work / "train.json"
    cfg.write_text(s.model_dump_json())
    out = subprocess.run([sys.executable, "-c", _TRAIN, str(cfg), "1" if promote else "0"], cwd=ROOT, check=True,
                         capture_output=True, text=True)
    return dict(x.split("=", 1) for x in out.stdout.strip().splitlines()[-1].split("|"))


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        import psutil

        mem = f", {psutil.virtual_memory().total / 2**30:.0f} GiB RAM"
    except ImportError:
        pass
    return f"{os.cpu_count()} cores ({cpu}){mem}, Python {platform.python_version()}"


def median_of(runs: int, fn: Callable[[], float]) -> tuple[float, list[float]]:
    values = [fn() for _ in range(runs)]
    return statistics.median(values), values


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    cells = [[str(h) for h in headers]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    line = lambda r: "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |"  # noqa: E731
    return "\n".join([line(cells[0]), "|" + "|".join("-" * (w + 2) for w in widths) + "|"] + [line(r) for r in cells[1:]])
