"""``flowwatch evaluate``: run the production detector and forecaster over a readings file, in event time.

    flowwatch evaluate --readings R.csv [--labels L.csv] [--train-days N] --out DIR

Readings go one by one, oldest first, through the detector's decision logic (the same class the
detector service calls) and the forecaster's window and predictors (the same classes the
forecaster service uses), as fast as the machine allows; the hourly forecast fires when reading
timestamps cross the hour (shared/eventtime) and is handed to the detector (forecast deviation), and
a threshold recalibration the detector asks for gets the readings of its window, as the services do.
The wall-clock 'silent meter' rule does not run (a replay has no wall clock; gaps are detected). With ``--train-days N`` the trainer first trains on
the first N days (TensorFlow; as ``flowwatch train`` does) and the forecaster then serves the
promoted versions; otherwise it serves seasonal naive, as a new install does.

Writes (formats are stable; other tools score them too):
  DIR/anomalies.csv   start,end,kind,signal,severity       (end empty while still open at the end)
  DIR/forecasts.csv   issued_at,target_time,signal,value,model   (model = version or seasonal-naive)
  DIR/report.json     without labels too: alerts per 30 days by kind and severity, forecast skill
                      against persistence and seasonal naive (what an operator lives with)
and with ``--labels``: DIR/metrics.json (see app/scoring.py for the definitions) and
DIR/evaluation.png. Only events, alerts and forecast targets after the scoring start are scored
(``--score-from-day``, default: the training days).
"""

from __future__ import annotations

import json
import logging
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from shared.messages import SEVERITY_RANK, SIGNALS, Anomaly, Forecast
from shared.readings_csv import CsvFormatError, read_all
from shared.runner import add_naive_tz, base_parser, naive_tz_or_note, settings_from_args
from shared.store.base import reading_columns

logger = logging.getLogger(__name__)

ANOMALY_COLUMNS = ("start", "end", "kind", "signal", "severity")
FORECAST_COLUMNS = ("issued_at", "target_time", "signal", "value", "model")


def iso(ts: datetime | pd.Timestamp | None) -> str:
    if ts is None or (isinstance(ts, float) and np.isnan(ts)) or pd.isna(ts):
        return ""
    return pd.Timestamp(ts).tz_convert(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# --- the production logic, driven in event time -------------------------------------------------


class AnomalyLog:
    """Anomaly updates folded into events by identity (kind, signal, start): the last update wins."""

    def __init__(self) -> None:
        self.events: dict[tuple[str, str, datetime], dict] = {}

    def add(self, a: Anomaly) -> None:
        key = (a.kind, a.signal, a.start)
        ev = self.events.get(key)
        sev = a.severity if ev is None or SEVERITY_RANK[a.severity] >= SEVERITY_RANK[ev["severity"]] else ev["severity"]
        self.events[key] = {"start": a.start, "end": a.end if a.state == "closed" else None, "kind": a.kind,
                            "signal": a.signal, "severity": sev}

    def frame(self) -> pd.DataFrame:
        rows = sorted(self.events.values(), key=lambda e: (e["start"], e["kind"], e["signal"]))
        return pd.DataFrame(rows, columns=list(ANOMALY_COLUMNS))


class Forecasting:
    """The forecaster service's engine (:class:`ForecastEngine`) fed from a file, recording every forecast."""

    def __init__(self, settings, models_dir: Path | None) -> None:
        from services.forecaster.engine import ForecastEngine

        self.engine = ForecastEngine(settings, settings.site, settings.meter)
        if models_dir is not None:
            self.engine.load_current(models_dir)
        self.predictors = self.engine.predictors
        self.rows: list[tuple] = []

    @property
    def fallbacks(self) -> int:
        return self.engine.fallbacks

    def add(self, ts: datetime, epoch: int, flow: float | None, pres: float | None, quality: tuple[str, ...]) -> list[Forecast]:
        out = self.engine.add(ts, epoch, flow, pres, quality)
        for f in out:
            for i, v in enumerate(f.values):
                self.rows.append((f.issued_at, f.issued_at + timedelta(minutes=f.step_minutes * (i + 1)), f.signal, float(v), f.model))
        return out

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows, columns=list(FORECAST_COLUMNS))


def for_file(settings, frame: pd.DataFrame):
    """Settings for the file's meter: the signals the file has values of, and its interval (the median
    spacing of its readings, 1 s to 1 h) where ``meters`` does not give one. A flow-only file of hourly
    readings is then forecast (and scored) as such: flow only, in hourly bins."""
    spec = settings.meter_spec(settings.meter)
    present = [s for s in spec.signals if s in frame and frame[s].notna().any()]
    if not present:
        raise ValueError(f"no value of {' or '.join(spec.signals)} (the signals of meter {spec.id}) in the file")
    interval = spec.interval_s
    if interval is None and len(frame) > 1:
        spacing = float(np.median(np.diff(frame.index.as_unit("s").asi8)))
        interval = int(min(max(round(spacing), 1), 3600))
    mine = spec.model_copy(update={"signals": present, "interval_s": interval})
    meters = [mine if m.id == spec.id else m for m in settings.meters]
    return settings.model_copy(update={"meters": meters if spec.id in settings.meter_ids else [*meters, mine]})


def make_detector(settings):
    """The detector service's decision logic (readings in, Anomaly events out, no I/O)."""
    from services.detector.engine import DetectionEngine

    return DetectionEngine.from_settings(settings)


@dataclass
class RunResult:
    anomalies: pd.DataFrame
    forecasts: pd.DataFrame
    readings: int
    seconds: float
    info: dict = field(default_factory=dict)


def run(settings, frame: pd.DataFrame, models_dir: Path | None = None, progress: bool = True) -> RunResult:
    """Feed every reading of ``frame`` (readings_csv layout) through the detector and the forecaster."""
    detector = make_detector(settings)
    fc_logic = Forecasting(settings, models_dir)
    log = AnomalyLog()
    site, meter = settings.site, settings.meter
    ts_index = frame.index
    epochs, flows, press, quals = reading_columns(frame)
    days = timedelta(days=settings.detector.threshold_days)
    t = time.perf_counter()
    for i in tqdm(range(len(frame)), unit="readings", disable=not progress, desc="evaluate", mininterval=0.5):
        f = None if np.isnan(flows[i]) else float(flows[i])
        p = None if np.isnan(press[i]) else float(press[i])
        for a in detector.process_values(site, meter, float(epochs[i]), f, p):
            log.add(a)
        for s, m, at in detector.take_due():  # a recalibration boundary was crossed: hand it the recent readings
            detector.recalibrate(s, m, frame.loc[(ts_index >= at - days) & (ts_index < at)], at)
        q = tuple(quals[i].split(",")) if quals[i] else ()
        for fc in fc_logic.add(ts_index[i].to_pydatetime(), int(epochs[i]), f, p, q):
            detector.on_forecast(fc)  # forecast deviation, as the detector service gets them over MQTT
    dt = time.perf_counter() - t
    models = {s: p.name for s, p in fc_logic.predictors.items()}
    return RunResult(log.frame(), fc_logic.frame(), len(frame), dt, {"models": models, "forecast_fallbacks": fc_logic.fallbacks})


def train_first(settings, frame: pd.DataFrame, days: float, work: Path) -> Path:
    """Train the models on the first ``days`` of ``frame`` as the trainer would; returns the models folder."""
    from services.trainer import training
    from shared.store.sqlite import SqliteStore

    cut = frame.index[0] + pd.Timedelta(days=days)
    db = SqliteStore(work / "train.db")
    try:
        db.write_reading_frame(settings.site, settings.meter, frame[frame.index < cut])
        results = training.train_all(settings, db, cut.to_pydatetime())
    finally:
        db.close()
    for r in results:
        print(f"trained {r.signal}: version {r.version}, promoted={r.promoted} ({r.reason})")
    return training.models_dir(settings)


# --- scoring and output -------------------------------------------------------------------------


def _alert_spans(anomalies: pd.DataFrame, score_from: datetime) -> list:
    from app import scoring

    return [scoring.AlertSpan(a.start, None if pd.isna(a.end) else a.end, a.kind, a.signal, a.severity)
            for a in anomalies.itertuples() if a.start >= score_from]


def _forecast_scores(readings: pd.DataFrame, forecasts: pd.DataFrame, score_from: datetime, step_minutes: int,
                     labels: Sequence = (), tz: str | None = None) -> dict[str, dict]:
    """Per signal: the forecasts after ``score_from`` against the readings and both baselines."""
    from app import scoring

    out = {}
    for s in SIGNALS:
        actual = scoring.bins(readings.index, readings[s].to_numpy(dtype="float64", na_value=np.nan), step_minutes)
        f = forecasts[(forecasts["signal"] == s) & (forecasts["target_time"] > score_from)] if len(forecasts) else forecasts
        out[s] = scoring.forecast_metrics(f, actual, step_minutes, labels, tz)
    return out


def _scored_days(readings: pd.DataFrame, score_from: datetime) -> tuple[datetime, float]:
    data_end = readings.index[-1].to_pydatetime()
    return data_end, max((data_end - score_from).total_seconds() / 86400, 0.0)


def score(readings: pd.DataFrame, labels: pd.DataFrame, anomalies: pd.DataFrame, forecasts: pd.DataFrame,
          score_from: datetime, step_minutes: int, tz: str | None = None) -> dict:
    from app import scoring

    data_end, days = _scored_days(readings, score_from)
    scored = labels[labels["start"] >= score_from] if len(labels) else labels
    labs = [scoring.Label(r.start.to_pydatetime(), r.end.to_pydatetime(), r.kind, float(r.size_pct)) for r in scored.itertuples()]
    seen = scored["inflow_pct"].tolist() if "inflow_pct" in scored else [np.nan] * len(labs)  # at the meter (simulate writes it)
    alerts = _alert_spans(anomalies, score_from)
    results, explained = scoring.match(labs, alerts, data_end)
    all_labels = [scoring.Label(r.start.to_pydatetime(), r.end.to_pydatetime(), r.kind, float(r.size_pct)) for r in labels.itertuples()]
    return {
        "scored_from": iso(score_from), "scored_to": iso(data_end),
        "detection": scoring.detection_metrics(results),
        "alarms": scoring.alarm_metrics(alerts, explained, days),
        "forecast": _forecast_scores(readings, forecasts, score_from, step_minutes, all_labels, tz),
        "labels": [{"start": iso(r.label.start), "end": iso(r.label.end), "kind": r.label.kind,
                    "size_pct": None if np.isnan(r.label.size_pct) else r.label.size_pct,
                    "inflow_pct": None if np.isnan(x) else float(x), "detected": r.detected,
                    "delay_min": None if r.delay is None else r.delay.total_seconds() / 60} for r, x in zip(results, seen, strict=True)],
    }


def report(readings: pd.DataFrame, anomalies: pd.DataFrame, forecasts: pd.DataFrame, score_from: datetime, step_minutes: int,
           tz: str | None = None) -> dict:
    """What an operator lives with, no labels needed (app/scoring.py: operator_report)."""
    from app import scoring

    data_end, days = _scored_days(readings, score_from)
    out = scoring.operator_report(_alert_spans(anomalies, score_from), days,
                                  _forecast_scores(readings, forecasts, score_from, step_minutes, tz=tz))
    out["scored_from"], out["scored_to"] = iso(score_from), iso(data_end)
    return out


def summary(m: dict) -> str:
    lines = [f"scored {m['scored_from']} .. {m['scored_to']}", "", "detection (event recall; delay in minutes):"]
    lines.append(f"  {'kind/size':<20} {'labels':>6} {'recall':>7} {'≤5min':>6} {'≤24h':>6} {'≤7d':>6} {'median':>8} {'p90':>8}")
    for k, d in m["detection"].items():
        fmt = lambda x: "-" if x is None else f"{x:.1f}"  # noqa: E731
        w = d["recall_within"]
        lines.append(f"  {k:<20} {d['labels']:>6} {d['recall']:>7.2f} {w['5min']:>6.2f} {w['24h']:>6.2f} {w['7d']:>6.2f} "
                     f"{fmt(d['delay_min_median']):>8} {fmt(d['delay_min_p90']):>8}")
    a = m["alarms"]
    prec = "-" if a["precision"] is None else f"{a['precision']:.2f}"
    fa30 = "-" if a["false_alarms_per_30_days"] is None else f"{a['false_alarms_per_30_days']:.1f}"
    lines += ["", f"alerts {a['alerts']}, false alarms {a['false_alarms']} ({fa30} per 30 days; {a['false_alarms_by_kind']}), precision {prec}",
              "", "forecasts (next hour):"]
    for s, f in m["forecast"].items():
        if not f.get("targets"):
            lines.append(f"  {s:<10} no scorable targets")
            continue
        sk = f["wape_skill_vs_seasonal_naive"]
        lines.append(f"  {s:<10} targets {f['targets']:>6}  WAPE model {f['forecast']['wape']:.4f}  persistence {f['persistence']['wape']:.4f}  "
                     f"seasonal naive {f['seasonal_naive']['wape']:.4f}  (skill vs s.naive {sk:+.1%})  MAE {f['forecast']['mae']:.4g}")
    return "\n".join(lines)


def plot(path: Path, readings: pd.DataFrame, labels: pd.DataFrame, anomalies: pd.DataFrame, forecasts: pd.DataFrame) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 1, figsize=(16, 7), sharex=True)
    colors = {"burst": "tab:red", "leak": "tab:orange", "sensor_fault": "tab:purple"}
    for ax, s, unit in ((axes[0], "flow_rate", "m³/h"), (axes[1], "pressure", "bar")):
        ax.plot(readings.index, readings[s], lw=0.3, color="tab:blue", label=s)
        if len(forecasts):
            f = forecasts[forecasts["signal"] == s]
            ax.plot(f["target_time"], f["value"], ".", ms=1, color="tab:green", label="forecast")
        for lab in labels.itertuples():
            ax.axvspan(lab.start, lab.end, color=colors.get(lab.kind, "grey"), alpha=0.18, lw=0)
        for a in anomalies.itertuples():
            if a.signal in (s, "both"):
                ax.axvline(a.start, color="black", lw=0.6, alpha=0.7)
        ax.set_ylabel(f"{s} ({unit})")
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    handles = [Patch(color=c, alpha=0.3, label=k) for k, c in colors.items()] + [Line2D([], [], color="black", lw=0.8, label="alert start")]
    axes[0].legend(handles=handles + axes[0].get_legend_handles_labels()[0][:2], loc="upper right", fontsize=8, ncol=5)
    axes[0].set_title("readings, labels (shaded) and alerts (lines)")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def write_outputs(out: Path, res: RunResult) -> None:
    out.mkdir(parents=True, exist_ok=True)
    a = res.anomalies
    pd.DataFrame({"start": [iso(x) for x in a["start"]], "end": [iso(x) for x in a["end"]], "kind": a["kind"],
                  "signal": a["signal"], "severity": a["severity"]}, columns=list(ANOMALY_COLUMNS)).to_csv(out / "anomalies.csv", index=False, lineterminator="\n")
    f = res.forecasts
    pd.DataFrame({"issued_at": [iso(x) for x in f["issued_at"]], "target_time": [iso(x) for x in f["target_time"]],
                  "signal": f["signal"], "value": [f"{v:.6g}" for v in f["value"]], "model": f["model"]},
                 columns=list(FORECAST_COLUMNS)).to_csv(out / "forecasts.csv", index=False, lineterminator="\n")


def out_of_range_notes(frame: pd.DataFrame, limits) -> list[str]:  # noqa: ANN001 - RangeLimits
    """What to say of readings outside the physical limits: they are judged invalid (the ``invalid``
    alert, no forecast, no learning), which is right for a broken meter and wrong for a meter whose
    range the limits do not cover (a larger district, another unit), so the note names the setting."""
    quality = frame["quality"].astype(str)
    notes = []
    for signal, unit in (("flow_rate", "m³/h"), ("pressure", "bar")):
        n = int(quality.str.contains(f"{signal}_out_of_range", regex=False).sum())
        if n:
            lo, hi = getattr(limits, f"{signal}_min"), getattr(limits, f"{signal}_max")
            notes.append(f"{n:,} of {len(frame):,} {signal} readings ({n / len(frame):.1%}) are outside limits {lo:g}..{hi:g} {unit} "
                         f"and are judged invalid; if the meter reads that much (or in another unit), set limits.{signal}_min / "
                         f"limits.{signal}_max in the config (-c) or FLOWWATCH_LIMITS__{signal.upper()}_MAX")
    return notes


def main(argv: Sequence[str]) -> int:
    p = base_parser("evaluate", "Run the production detector and forecaster over a readings file and score them against labels.")
    p.add_argument("--readings", type=Path, required=True,
                   help="readings CSV (timestamp,flow_rate,pressure; one signal column for a meter with one signal; any interval)")
    p.add_argument("--labels", type=Path, default=None, help="labels CSV (start,end,kind,size_pct), e.g. from flowwatch simulate")
    p.add_argument("--train-days", type=float, default=None, help="train the models on the first N days first (needs TensorFlow)")
    p.add_argument("--score-from-day", type=float, default=None, help="score from this day of the file on (default: --train-days, else 0)")
    p.add_argument("--out", type=Path, required=True, help="output folder (created)")
    add_naive_tz(p)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    settings = settings_from_args(args)
    from app.scenarios import read_labels

    naive_tz = naive_tz_or_note("evaluate", args.naive_tz, [args.readings], settings.timezone)
    try:
        frame, rejects = read_all(args.readings, settings.limits_of(settings.meter), naive_tz, source="replay")
        labels = read_labels(args.labels) if args.labels else None
    except (CsvFormatError, ValueError, OSError) as exc:
        print(f"flowwatch evaluate: {exc}", file=sys.stderr)
        return 2
    if frame.empty:
        print(f"flowwatch evaluate: {args.readings} holds no readings", file=sys.stderr)
        return 2
    try:
        settings = for_file(settings, frame)
    except ValueError as exc:
        print(f"flowwatch evaluate: {args.readings}: {exc}", file=sys.stderr)
        return 2
    if rejects:
        print(f"flowwatch evaluate: {len(rejects)} row(s) rejected, first: line {rejects[0].line}: {rejects[0].reason}", file=sys.stderr)
    for note in out_of_range_notes(frame, settings.limits_of(settings.meter)):
        print(f"flowwatch evaluate: {args.readings}: {note}", file=sys.stderr)
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="fw-eval-") as tmp:
        # models and any state live in a scratch data_dir: evaluate never touches the configured one
        settings = settings.model_copy(update={"data_dir": Path(tmp)})
        models_dir = None
        if args.train_days:
            try:
                models_dir = train_first(settings, frame, args.train_days, Path(tmp))
            except Exception as exc:  # noqa: BLE001 - training may fail for many reasons; say which
                print(f"flowwatch evaluate: training on the first {args.train_days:g} days failed: {exc}", file=sys.stderr)
                return 2
        try:
            res = run(settings, frame, models_dir, progress=not args.quiet)
        except ModuleNotFoundError as exc:
            if not (exc.name or "").startswith("services."):
                raise
            print(f"flowwatch evaluate: {exc.name} is missing from this build; evaluate needs the detector and "
                  "forecaster packages (services/detector/engine.py, services/forecaster/)", file=sys.stderr)
            return 2
    write_outputs(args.out, res)
    print(f"{res.readings:,} readings in {res.seconds:.1f} s ({res.readings / max(res.seconds, 1e-9):,.0f}/s); "
          f"{len(res.anomalies)} alerts, {len(res.forecasts):,} forecast values; models {res.info['models']}")
    print(f"wrote {args.out / 'anomalies.csv'} and {args.out / 'forecasts.csv'}")
    start = frame.index[0].to_pydatetime()
    sf = args.score_from_day if args.score_from_day is not None else (args.train_days or 0.0)
    from shared.features import clean_values, resolution

    step = resolution(settings, settings.meter).step_minutes  # the meter's bins (hourly readings: hourly)
    # scored and plotted as the forecaster sees them: a reading judged invalid (outside the limits) is
    # none (five readings of 10⁹ m³/h in a month made every forecast's WAPE about 1 and persistence's 2.5)
    limits = settings.limits_of(settings.meter)
    frame = frame.assign(**{s: clean_values(s, frame[s].to_numpy(dtype="float64", na_value=np.nan), frame["quality"], limits)
                            for s in SIGNALS})
    rep = report(frame, res.anomalies, res.forecasts, start + timedelta(days=sf), step, settings.timezone)
    (args.out / "report.json").write_text(json.dumps(rep, indent=2) + "\n")
    if labels is None:
        from app.scoring import format_report

        print()
        print(format_report(rep))
        print(f"\nwrote {args.out / 'report.json'}")
    if labels is not None:
        m = score(frame, labels, res.anomalies, res.forecasts, start + timedelta(days=sf), step, settings.timezone)
        m["run"] = {"readings": res.readings, "seconds": round(res.seconds, 2), **res.info}
        (args.out / "metrics.json").write_text(json.dumps(m, indent=2) + "\n")
        plot(args.out / "evaluation.png", frame, labels, res.anomalies, res.forecasts)
        print()
        print(summary(m))
        print(f"\nwrote {args.out / 'metrics.json'} and {args.out / 'evaluation.png'}")
    return 0
