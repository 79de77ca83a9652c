"""Training one LSTM per meter and signal: data -> windows -> Keras -> LiteRT -> parity -> evaluation -> promotion.

Per meter: only the signals it has (``meters[].signals``), at the bin width that follows its
interval (:func:`shared.features.resolution`), into its own folder ``models/<site>/<meter>/``.

TensorFlow is imported inside the functions that need it, so importing this module stays cheap.
Features come from :mod:`shared.features` (the module the forecaster uses too).

Split, in time order: ``train | validation (early stopping) | held-out (promotion test)``. The
held-out period is the last ``trainer.holdout_days`` (at most 30 % of the data); windows whose
targets reach into it are never trained on. On the held-out windows the exported model, persistence,
seasonal naive and the current model are scored with MAE and WAPE; the new model is promoted only if
its WAPE beats persistence, seasonal naive and the current model by ``trainer.min_improvement`` and
the LiteRT export matches the Keras model within ``trainer.parity_tolerance``. A forecast never
loses to the obvious: where neither the new nor the current model beats both baselines, the better
baseline is served (``current`` names it, and so does the forecast's ``model`` field).

For speed the model is trained with a large batch; its weights are then copied into an unrolled
batch-1 twin for export (a default Keras 3 LSTM converts to a WHILE loop LiteRT cannot run).
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

from shared import features, modelstore
from shared.eventtime import weekend
from shared.features import Scaler
from shared.fileio import atomic_write
from shared.messages import SIGNALS
from shared.settings import Settings
from shared.store import Store

logger = logging.getLogger(__name__)

PARITY_MAX_WINDOWS = 2000
MIN_TRAIN_WINDOWS = 50


class NotEnoughData(RuntimeError):
    pass


@dataclass
class TrainResult:
    signal: str
    version: str
    created_at: datetime
    promoted: bool
    reason: str
    metrics: dict[str, float] = field(default_factory=dict)
    path: str = ""
    meter: str = ""
    served: str = ""  # what the forecaster serves after this run: a version or a baseline name

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["created_at"] = self.created_at.isoformat()
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainResult:
        d = dict(d)
        d["created_at"] = datetime.fromisoformat(d["created_at"])
        return cls(**d)


def models_dir(settings: Settings, meter: str | None = None) -> Path:
    """The model folder of ``meter`` (the configured one by default): ``<models.dir>/<site>/<meter>``."""
    return modelstore.meter_dir(settings.path(settings.models.dir), settings.site, meter or settings.meter)


def configure_runtime(settings: Settings) -> None:
    """Lower the CPU priority and limit the threads of this process (call before importing TF)."""
    t = settings.trainer
    if t.nice > 0:
        try:
            os.nice(t.nice)
        except OSError as exc:
            logger.warning("could not lower CPU priority (trainer.nice=%s): %s", t.nice, exc)
    for var in ("TF_NUM_INTRAOP_THREADS", "OMP_NUM_THREADS"):
        os.environ[var] = str(t.threads)
    os.environ["TF_NUM_INTEROP_THREADS"] = "1"
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras
    import tensorflow as tf

    keras.config.disable_interactive_logging()  # export chatter goes to logging, not stdout

    try:
        tf.config.threading.set_intra_op_parallelism_threads(t.threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    except RuntimeError:  # TF already initialised in this process (tests): keep its setting
        logger.debug("TensorFlow already initialised; thread limit unchanged")


# --- data ---------------------------------------------------------------------------------------
def load_series(store: Store, settings: Settings, end: datetime | None = None,
                meter: str | None = None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Up to ``trainer.max_days`` of ``meter``'s readings before ``end`` -> cleaned, resampled,
    gap-filled series of each signal it has."""
    site, meter = settings.site, meter or settings.meter
    if end is None:
        last = store.last_reading_time(site, meter)
        if last is None:
            raise NotEnoughData(f"no readings for {site}/{meter} in the store")
        end = last + timedelta(seconds=1)
    start = end - timedelta(days=settings.trainer.max_days)
    frame = store.read_readings(site, meter, start, end)
    res = features.resolution(settings, meter)
    out = {s: features.series_from_frame(frame, s, res.step_minutes, settings.limits_of(meter), res.max_gap_steps)
           for s in settings.meter_spec(meter).signals}
    logger.info("read %d readings %s .. %s for %s/%s", len(frame), start.isoformat(), end.isoformat(), site, meter)
    return out


def new_version(mdir: Path, signal: str, now: datetime) -> str:
    base = now.strftime("%Y%m%dT%H%M%SZ")
    v, k = base, 1
    while modelstore.version_dir(mdir, signal, v).exists():
        k += 1
        v = f"{base}-{k}"
    return v


# --- model --------------------------------------------------------------------------------------
def build_model(window_steps: int, out_steps: int, units: int, batch_size: int | None = None):
    import keras

    inp = keras.Input(shape=(window_steps, features.N_FEATURES), batch_size=batch_size, name="window")
    x = keras.layers.LSTM(units, unroll=True, name="lstm")(inp)
    out = keras.layers.Dense(out_steps, name="forecast")(x)
    return keras.Model(inp, out)


def export_tflite(model, window_steps: int, out_steps: int, units: int) -> bytes:
    """Copy the weights into an unrolled batch-1 twin and convert it with the built-in ops only."""
    import tensorflow as tf

    twin = build_model(window_steps, out_steps, units, batch_size=1)
    twin.set_weights(model.get_weights())
    conv = tf.lite.TFLiteConverter.from_keras_model(twin)
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    return conv.convert()


class _EpochLog:
    """Keras callback factory: one log line per epoch (progress)."""

    @staticmethod
    def make(signal: str, epochs: int):
        import keras

        class Cb(keras.callbacks.Callback):
            def on_epoch_begin(self, epoch, logs=None):
                self._t = time.perf_counter()

            def on_epoch_end(self, epoch, logs=None):
                logs = logs or {}
                logger.info("%s: epoch %d/%d loss %.4f val_loss %.4f (%.1fs)", signal, epoch + 1, epochs,
                            logs.get("loss", float("nan")), logs.get("val_loss", float("nan")), time.perf_counter() - self._t)

        return Cb()


# --- evaluation ---------------------------------------------------------------------------------
def _baselines(values: np.ndarray, ends: np.ndarray, issues: np.ndarray, out: int, step_minutes: int,
               tz: str, off: Callable[[date], bool] = weekend) -> tuple[np.ndarray, np.ndarray]:
    """Persistence and seasonal naive at each issue index, as the forecaster serves them."""
    hist = features.history_steps(step_minutes)
    pers = np.empty((len(issues), out))
    sn = np.empty((len(issues), out))
    for k, i in enumerate(issues):
        h = values[max(0, i + 1 - hist): i + 1]
        pers[k] = features.persistence(h, out)
        s = features.seasonal_naive(h, out, step_minutes, int(ends[i]), tz, off)
        sn[k] = np.where(np.isfinite(s), s, pers[k])
    return pers, sn


def _score_current(mdir: Path, signal: str, values: np.ndarray, ends: np.ndarray, issues: np.ndarray,
                   out: int, sn: np.ndarray, step_minutes: int) -> tuple[str | None, np.ndarray | None, str]:
    cur = modelstore.current_version(mdir, signal)
    if cur is None or modelstore.is_baseline(cur):
        return cur, None, "no current model"
    try:
        m = modelstore.LiteRTModel(modelstore.version_dir(mdir, signal, cur))
    except modelstore.ModelError as exc:
        logger.warning("current %s model %s cannot be loaded (%s); comparing with seasonal naive only", signal, cur, exc)
        return cur, None, f"current model {cur} unusable"
    if m.meta.step_minutes != step_minutes:
        return cur, None, f"current model {cur} has another resolution"
    preds = np.empty((len(issues), out))
    hist = max(m.meta.window_steps, 1)
    for k, i in enumerate(issues):
        try:
            preds[k] = m.forecast(values[max(0, i + 1 - hist): i + 1], int(ends[i]), out)
        except modelstore.InsufficientData:
            preds[k] = sn[k]  # what the forecaster would have served
    return cur, preds, ""


def decide(wape_model: float, wape_sn: float, wape_current: float | None, min_improvement: float,
           parity_ok: bool, parity_diff: float, tol: float, wape_persistence: float = math.inf) -> tuple[bool, str]:
    """Promotion rule: beat persistence, seasonal naive and the current model. Returns (promoted, reason)."""
    reasons = []
    if not parity_ok:
        reasons.append(f"LiteRT export differs from Keras by {parity_diff:.2g} > trainer.parity_tolerance={tol:g}")
    need = 1.0 - min_improvement
    if not (math.isfinite(wape_model) and wape_model < wape_sn * need):
        reasons.append(f"held-out WAPE {wape_model:.4f} does not beat seasonal naive {wape_sn:.4f}")
    if math.isfinite(wape_persistence) and not (math.isfinite(wape_model) and wape_model < wape_persistence * need):
        reasons.append(f"held-out WAPE {wape_model:.4f} does not beat persistence {wape_persistence:.4f}")
    if wape_current is not None and not wape_model < wape_current * need:
        reasons.append(f"held-out WAPE {wape_model:.4f} does not beat the current model {wape_current:.4f}")
    if reasons:
        return False, "; ".join(reasons)
    vs = f"current {wape_current:.4f}" if wape_current is not None else "no current model"
    pers = f"persistence {wape_persistence:.4f}, " if math.isfinite(wape_persistence) else ""
    return True, f"held-out WAPE {wape_model:.4f} beats {pers}seasonal naive {wape_sn:.4f} and {vs}"


def serve_when_kept(wape_persistence: float, wape_sn: float, current: str | None, wape_current: float | None) -> str | None:
    """What to serve when the new model is not promoted: the current model if it beats both
    baselines (None: leave ``current`` as it is), else the better baseline."""
    best, best_wape = (modelstore.PERSISTENCE, wape_persistence) if wape_persistence < wape_sn else \
        (modelstore.SEASONAL_NAIVE, wape_sn)
    if current is not None and not modelstore.is_baseline(current) and wape_current is not None and wape_current < best_wape:
        return None
    if current is not None and not modelstore.is_baseline(current) and wape_current is None:
        return None  # the current model could not be scored (other resolution, unloadable): leave it to the operator
    return best


# --- training -----------------------------------------------------------------------------------
def train_signal(settings: Settings, signal: str, ends: np.ndarray, values: np.ndarray,
                 now: datetime | None = None, meter: str | None = None) -> TrainResult:
    import keras

    t0 = time.perf_counter()
    meter = meter or settings.meter
    tr = settings.trainer
    res = features.resolution(settings, meter)
    mdir = models_dir(settings, meter)
    step = res.step_minutes
    day_steps = 86_400 // (60 * step)
    W = res.window_steps
    out = min(res.horizon_steps, tr.max_output_steps)
    signal_log = f"{settings.site}/{meter} {signal}"
    n = len(values)
    valid = np.isfinite(values)
    if n == 0 or valid.sum() < day_steps * 3:
        raise NotEnoughData(f"{signal_log}: {int(valid.sum())} valid bins of {step} min; need at least 3 days")
    hold = int(min(tr.holdout_days * day_steps, 0.3 * n))
    h0 = n - hold  # first held-out bin
    scaler = Scaler.fit(values[:h0])
    X, Y, issue = features.training_windows(values, ends, scaler, settings.timezone, W, out)
    fit_mask = issue + out < h0
    test_mask = issue >= h0 - 1
    Xf, Yf = X[fit_mask], Y[fit_mask]
    nval = max(1, int(len(Xf) * tr.validation_fraction))
    if len(Xf) - nval < MIN_TRAIN_WINDOWS or test_mask.sum() == 0:
        raise NotEnoughData(f"{signal_log}: {len(Xf) - nval} training and {int(test_mask.sum())} held-out windows; "
                            f"need {MIN_TRAIN_WINDOWS}+ and 1+ (more data, or lower models.window_steps / trainer.holdout_days)")
    Xtr, Ytr, Xva, Yva = Xf[:-nval], Yf[:-nval], Xf[-nval:], Yf[-nval:]
    Xte, Yte, ite = X[test_mask], Y[test_mask], issue[test_mask]
    logger.info("%s: %d train, %d validation, %d held-out windows of %d x %d min -> %d steps",
                signal_log, len(Xtr), len(Xva), len(Xte), W, step, out)

    keras.utils.set_random_seed(tr.seed)
    model = build_model(W, out, tr.units)
    model.compile(optimizer=keras.optimizers.Adam(tr.learning_rate), loss="mse")
    stop = keras.callbacks.EarlyStopping(monitor="val_loss", patience=tr.patience, restore_best_weights=True)
    batch = min(tr.batch_size, max(16, len(Xtr) // 64))  # small data: keep >= ~64 updates per epoch
    hist = model.fit(Xtr, Ytr, validation_data=(Xva, Yva), epochs=tr.epochs, batch_size=batch,
                     shuffle=True, verbose=0, callbacks=[stop, _EpochLog.make(signal_log, tr.epochs)])
    fit_s = time.perf_counter() - t0

    now = now or datetime.now(UTC)
    version = new_version(mdir, signal, now)
    vdir = modelstore.version_dir(mdir, signal, version)
    vdir.mkdir(parents=True)
    model.save(vdir / modelstore.KERAS_FILE)
    (vdir / modelstore.MODEL_FILE).write_bytes(export_tflite(model, W, out, tr.units))
    meta = modelstore.ModelMeta(signal=signal, version=version, created_at=now.isoformat(), step_minutes=step,
                            window_steps=W, out_steps=out, timezone=settings.timezone,
                            max_gap_steps=res.max_gap_steps, scaler=scaler)
    (vdir / modelstore.META_FILE).write_text(meta.to_json())

    # Parity and held-out predictions come from the exported model: what the forecaster serves.
    lite = modelstore.LiteRTModel(vdir)
    keras_out = model.predict(Xte, batch_size=1024, verbose=0)
    lite_out = np.stack([lite.run(x) for x in Xte])
    npar = min(len(Xte), PARITY_MAX_WINDOWS)
    parity = float(np.max(np.abs(lite_out[:npar] - keras_out[:npar])))
    parity_ok = parity <= tr.parity_tolerance

    actual = scaler.inverse(Yte)
    pred = scaler.inverse(lite_out)
    pers, sn = _baselines(values, ends, ite, out, step, settings.timezone, settings.calendar)
    cur, cur_pred, cur_note = _score_current(mdir, signal, values, ends, ite, out, sn, step)
    # where a holiday is ahead the forecaster serves seasonal naive, not a model: score what it serves
    holiday = np.array([features.holiday_ahead(settings.calendar, int(ends[i]), out, step, settings.tz) for i in ite],
                       dtype=bool).reshape(-1, 1)
    pred = np.where(holiday, sn, pred)
    if cur_pred is not None:
        cur_pred = np.where(holiday, sn, cur_pred)
    m = {
        "mae_model": features.mae(actual, pred), "wape_model": features.wape(actual, pred),
        "mae_persistence": features.mae(actual, pers), "wape_persistence": features.wape(actual, pers),
        "mae_seasonal_naive": features.mae(actual, sn), "wape_seasonal_naive": features.wape(actual, sn),
        "parity_max_abs": parity, "epochs": float(len(hist.history["loss"])),
        "train_windows": float(len(Xtr)), "holdout_windows": float(len(Xte)), "holdout_days": hold / day_steps,
        "train_seconds": fit_s, "batch_size": float(batch),
    }
    wape_cur = None
    if cur_pred is not None:
        m["mae_current"], m["wape_current"] = features.mae(actual, cur_pred), features.wape(actual, cur_pred)
        wape_cur = m["wape_current"]
    promoted, reason = decide(m["wape_model"], m["wape_seasonal_naive"], wape_cur, tr.min_improvement,
                              parity_ok, parity, tr.parity_tolerance, m["wape_persistence"])
    if cur_note and cur is not None and not modelstore.is_baseline(cur):
        reason += f" ({cur_note})"
    served = version if promoted else serve_when_kept(m["wape_persistence"], m["wape_seasonal_naive"], cur, wape_cur)
    if served is not None and not promoted:
        reason += f"; serving {served}"
    m = {k: float(v) for k, v in m.items() if math.isfinite(v)}
    try:
        _report(vdir / modelstore.REPORT_FILE, signal, version, hist.history, ends, values, ite, pred, sn, out, step, m)
    except Exception:  # noqa: BLE001 - a plotting problem must not lose a trained model
        logger.exception("%s: report.png not written", signal)
    info = {"meter": meter, "current_before": cur, "data_start": _iso(ends[0]), "data_end": _iso(ends[-1]),
            "step_minutes": step, "window_steps": W, "out_steps": out, "units": tr.units}
    vm = modelstore.VersionMetrics(signal, version, now.isoformat(), promoted, reason, m, info)
    atomic_write(vdir / modelstore.METRICS_FILE, vm.to_json().encode())
    if served is not None and served != cur:
        modelstore.set_current(mdir, signal, served)
    logger.info("%s: version %s %s: %s (model WAPE %.4f, persistence %.4f, seasonal naive %.4f) in %.1fs",
                signal_log, version, "PROMOTED" if promoted else "kept, not promoted", reason, m.get("wape_model", float("nan")),
                m.get("wape_persistence", float("nan")), m.get("wape_seasonal_naive", float("nan")), time.perf_counter() - t0)
    return TrainResult(signal, version, now, promoted, reason, m, str(vdir), meter,
                       modelstore.current_version(mdir, signal) or "")


def _iso(epoch: int) -> str:
    return datetime.fromtimestamp(int(epoch), UTC).isoformat()


def _report(path: Path, signal: str, version: str, history: dict, ends: np.ndarray, values: np.ndarray,
            issues: np.ndarray, pred: np.ndarray, sn: np.ndarray, out: int, step: int, m: dict[str, float]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a1, a2) = plt.subplots(2, 1, figsize=(11, 7))
    a1.plot(history["loss"], label="train")
    a1.plot(history.get("val_loss", []), label="validation")
    a1.set_title(f"{signal} {version}: loss (MSE, scaled)")
    a1.set_xlabel("epoch")
    a1.legend()
    # the last 3 days of the held-out period: forecasts issued on the hour, next `out` steps each
    day = 86_400 // (60 * step)
    sel = np.flatnonzero((ends[issues] % 3600 == 0) & (issues >= issues[-1] - 3 * day))
    lo = issues[sel[0]] if len(sel) else issues[0]
    t = lambda e: np.asarray(e, dtype="datetime64[s]")  # noqa: E731
    a2.plot(t(ends[lo:]), values[lo:], color="black", lw=1, label="actual")
    for j, k in enumerate(sel):
        i = issues[k]
        tt = t(ends[i + 1: i + 1 + out])
        a2.plot(tt, pred[k][: len(tt)], color="tab:blue", lw=1, label="model" if j == 0 else None)
        a2.plot(tt, sn[k][: len(tt)], color="tab:orange", lw=0.8, ls="--", label="seasonal naive" if j == 0 else None)
    a2.set_title(f"held-out forecasts: WAPE model {m.get('wape_model', float('nan')):.3f}, "
                 f"persistence {m.get('wape_persistence', float('nan')):.3f}, "
                 f"seasonal naive {m.get('wape_seasonal_naive', float('nan')):.3f}")
    a2.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def train_all(settings: Settings, store: Store, end: datetime | None = None,
              signals: Sequence[str] = SIGNALS, meter: str | None = None) -> list[TrainResult]:
    """Train, evaluate, export and (maybe) promote one model per signal of ``meter`` (the configured
    one by default; signals it does not have are skipped). Raises NotEnoughData."""
    meter = meter or settings.meter
    series = load_series(store, settings, end, meter)
    results = []
    for s in signals:
        if s not in series:
            continue  # the meter does not have it: no model, no failure
        ends, values = series[s]
        try:
            results.append(train_signal(settings, s, ends, values, meter=meter))
        except NotEnoughData as exc:
            logger.warning("%s/%s %s not trained: %s", settings.site, meter, s, exc)
    if not results:
        raise NotEnoughData(f"{settings.site}/{meter}: no signal had enough data to train (see the log)")
    return results


def train_meters(settings: Settings, store: Store, jobs: dict[str, Sequence[str]],
                 end: datetime | None = None) -> list[TrainResult]:
    """One train job per meter and signal; a meter without enough data is logged and skipped.
    Raises NotEnoughData when no meter trained anything."""
    results: list[TrainResult] = []
    for meter, signals in jobs.items():
        try:
            results.extend(train_all(settings, store, end, signals, meter))
        except NotEnoughData as exc:
            logger.warning("not trained: %s", exc)
    if not results:
        raise NotEnoughData(f"no meter of {', '.join(jobs)} had enough data to train (see the log)")
    return results
