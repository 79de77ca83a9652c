"""Model versions on disk and the LiteRT runner both the trainer (parity, comparison with the
current model) and the forecaster (serving) use. Imports no TensorFlow.

Layout under ``<data_dir>/<models.dir>/<site>/<meter>`` (one folder per meter: :func:`meter_dir`)::

    <signal>/current               what is served: the promoted version's name, or the baseline
                                   (``persistence`` / ``seasonal-naive``) that beat every model
                                   (written temp + fsync + rename)
    <signal>/<version>/model.keras the trained Keras model (trainer only)
    <signal>/<version>/model.tflite the exported LiteRT model the forecaster runs
    <signal>/<version>/scaler.json  scaler + feature spec (JSON, not pickle)
    <signal>/<version>/metrics.json held-out metrics, promoted flag and reason
    <signal>/<version>/report.png   loss curve and held-out forecast vs actual
"""

from __future__ import annotations

import json
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from shared import features
from shared.features import Scaler
from shared.fileio import atomic_write
from shared.messages import SIGNALS

MODEL_FILE = "model.tflite"
KERAS_FILE = "model.keras"
META_FILE = "scaler.json"
METRICS_FILE = "metrics.json"
REPORT_FILE = "report.png"
CURRENT_FILE = "current"
PERSISTENCE = "persistence"
SEASONAL_NAIVE = "seasonal-naive"
BASELINES = (PERSISTENCE, SEASONAL_NAIVE)  # served without a model file


class ModelError(RuntimeError):
    """A model version that cannot be loaded or run."""


class InsufficientData(ValueError):
    """The input window has gaps the model cannot run on."""


@dataclass(frozen=True)
class ModelMeta:
    """Everything needed to rebuild the model inputs: written as scaler.json beside the model."""

    signal: str
    version: str
    created_at: str
    step_minutes: int
    window_steps: int
    out_steps: int
    timezone: str
    max_gap_steps: int
    scaler: Scaler
    features: tuple[str, ...] = features.FEATURE_NAMES

    def to_json(self) -> str:
        d = asdict(self)
        d["features"] = list(self.features)
        return json.dumps(d, indent=2)

    @classmethod
    def from_json(cls, text: str) -> ModelMeta:
        d: dict[str, Any] = json.loads(text)
        d["scaler"] = Scaler(**d["scaler"])
        d["features"] = tuple(d.get("features", features.FEATURE_NAMES))
        if d["features"] != features.FEATURE_NAMES:
            raise ModelError(f"model features {d['features']} differ from this build's {features.FEATURE_NAMES}; retrain")
        return cls(**d)


@dataclass
class VersionMetrics:
    """metrics.json of one version."""

    signal: str
    version: str
    created_at: str
    promoted: bool
    reason: str
    metrics: dict[str, float] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, allow_nan=False, default=str)


def meter_dir(models_root: Path, site: str, meter: str) -> Path:
    """The model folder of one meter: ``<models.dir>/<site>/<meter>`` (ids are checked topic levels)."""
    for part in (site, meter):
        if part in ("", ".", "..") or "/" in part:
            raise ValueError(f"site/meter id {part!r} cannot name a folder")
    return models_root / site / meter


def legacy_signals(models_root: Path) -> list[str]:
    """Signals with a model in the layout before models were per meter (``<models.dir>/<signal>/current``)."""
    return [s for s in SIGNALS if (models_root / s / CURRENT_FILE).is_file()]


def adopt_legacy(models_root: Path, site: str, meter: str) -> list[str]:
    """Move models of the layout before models were per meter under ``meter``'s folder (the
    configured meter's: they were trained on it); the signals moved. A signal the meter's folder
    already has is left alone."""
    moved = []
    for s in legacy_signals(models_root):
        new = meter_dir(models_root, site, meter) / s
        if not new.exists():
            new.parent.mkdir(parents=True, exist_ok=True)
            (models_root / s).rename(new)
            moved.append(s)
    return moved


def is_baseline(version: str | None) -> bool:
    return version in BASELINES


def signal_dir(models_dir: Path, signal: str) -> Path:
    return models_dir / signal


def version_dir(models_dir: Path, signal: str, version: str) -> Path:
    return models_dir / signal / version


def current_version(models_dir: Path, signal: str) -> str | None:
    try:
        v = (signal_dir(models_dir, signal) / CURRENT_FILE).read_text().strip()
    except FileNotFoundError:
        return None
    return v or None


def set_current(models_dir: Path, signal: str, version: str) -> None:
    """Serve ``version`` (a version with its model file, or a baseline name) for ``signal``."""
    if not is_baseline(version) and not (version_dir(models_dir, signal, version) / MODEL_FILE).is_file():
        raise ModelError(f"cannot promote {signal}/{version}: {MODEL_FILE} missing")
    atomic_write(signal_dir(models_dir, signal) / CURRENT_FILE, (version + "\n").encode())


def read_metrics(models_dir: Path, signal: str, version: str) -> dict[str, Any] | None:
    try:
        return json.loads((version_dir(models_dir, signal, version) / METRICS_FILE).read_text())
    except (OSError, ValueError):
        return None


class LiteRTModel:
    """One exported model version, run with the LiteRT interpreter (batch 1)."""

    def __init__(self, path: Path, threads: int = 1) -> None:
        from ai_edge_litert.interpreter import Interpreter

        self.path = path
        try:
            self.meta = ModelMeta.from_json((path / META_FILE).read_text())
        except (OSError, ValueError, TypeError, KeyError) as exc:
            raise ModelError(f"cannot read {path / META_FILE}: {exc}") from exc
        try:
            self._it = Interpreter(model_path=str(path / MODEL_FILE), num_threads=threads)
            self._it.allocate_tensors()
        except (OSError, ValueError, RuntimeError) as exc:
            raise ModelError(f"cannot load {path / MODEL_FILE}: {exc}") from exc
        inp, out = self._it.get_input_details()[0], self._it.get_output_details()[0]
        want_in = [1, self.meta.window_steps, features.N_FEATURES]
        if list(inp["shape"]) != want_in or list(out["shape"]) != [1, self.meta.out_steps]:
            raise ModelError(f"{path / MODEL_FILE}: shapes {list(inp['shape'])} -> {list(out['shape'])}, "
                             f"scaler.json says {want_in} -> [1, {self.meta.out_steps}]")
        self._in, self._out = inp["index"], out["index"]
        self._lock = threading.Lock()

    @property
    def version(self) -> str:
        return self.meta.version

    def run(self, x: np.ndarray) -> np.ndarray:
        """One window ``(window_steps, F)`` of features -> scaled outputs ``(out_steps,)``."""
        with self._lock:
            self._it.set_tensor(self._in, np.ascontiguousarray(x, dtype=np.float32)[None])
            self._it.invoke()
            return self._it.get_tensor(self._out)[0].copy()

    def forecast(self, history: np.ndarray, end: int, steps: int) -> np.ndarray:
        """``steps`` values after bin ``end`` from gap-filled ``history`` (raw units, last bin = end).

        Horizons longer than the model's output are rolled forward: predictions are appended to
        the window and the model is run again.
        """
        m = self.meta
        w = m.window_steps
        step_s = 60 * m.step_minutes
        vals = np.asarray(history, dtype="float64")[-w:]
        if len(vals) < w or not np.isfinite(vals).all():
            raise InsufficientData(f"need {w} gap-free bins of {m.step_minutes} min before the forecast time")
        ends = end - step_s * np.arange(w - 1, -1, -1, dtype="int64")
        out: list[float] = []
        while len(out) < steps:
            x = features.step_features(vals[-w:], ends[-w:], m.scaler, m.timezone)
            y = m.scaler.inverse(self.run(x))
            out.extend(y[: steps - len(out)].tolist())
            vals = np.concatenate([vals, y])
            ends = np.concatenate([ends, ends[-1] + step_s * np.arange(1, len(y) + 1, dtype="int64")])
        return np.asarray(out)
