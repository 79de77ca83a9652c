"""Training, export, promotion and hot reload, on a small synthetic diurnal series (needs TensorFlow).

Kept small (16 days, tiny LSTM, few epochs) so the whole file runs in well under two minutes.
"""

import json
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from app.synthetic import START, diurnal_frame
from services.trainer import training
from shared import modelstore
from shared.messages import SIGNALS, Command, Reading
from shared.settings import Settings
from shared.store.sqlite import SqliteStore

pytestmark = pytest.mark.tf
ROOT = Path(__file__).resolve().parents[1]
DAYS = 16
SMALL = {"epochs": 8, "holdout_days": 2, "units": 16, "batch_size": 32,
         "learning_rate": 0.005, "nice": 0, "threads": 1}


def small_settings(data_dir: Path, **kw) -> Settings:
    mqtt = kw.pop("mqtt", None)
    extra = {"mqtt": mqtt} if mqtt else {}
    return Settings(data_dir=data_dir, trainer={**SMALL, **kw}, models={"window_steps": 18}, **extra)


def fill_store(settings: Settings) -> None:
    st = SqliteStore(settings.path(settings.store.sqlite.path))
    st.write_reading_frame(settings.site, settings.meter, diurnal_frame(DAYS))
    st.close()


def wait_for(cond, timeout=120.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = cond()
        if v is not None and v is not False:
            return v
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Both signals trained in this process: exported, parity-checked and promoted."""
    from services.trainer import training

    s = small_settings(tmp_path_factory.mktemp("trained") / "var")
    fill_store(s)
    training.configure_runtime(s)
    st = SqliteStore(s.path(s.store.sqlite.path))
    try:
        results = training.train_all(s, st)
    finally:
        st.close()
    return s, {r.signal: r for r in results}


def test_training_exports_checks_parity_and_promotes(trained):
    s, results = trained
    mdir = training.models_dir(s)
    for sig in SIGNALS:
        r = results[sig]
        assert r.promoted, r.reason
        vdir = Path(r.path)
        for f in ("model.keras", "model.tflite", "scaler.json", "metrics.json", "report.png"):
            assert (vdir / f).is_file(), f
        m = json.loads((vdir / "metrics.json").read_text())
        assert m["promoted"] and m["metrics"]["parity_max_abs"] <= s.trainer.parity_tolerance
        assert m["metrics"]["wape_model"] < m["metrics"]["wape_seasonal_naive"]
        assert {"wape_persistence", "mae_model", "mae_seasonal_naive"} <= set(m["metrics"])
        assert modelstore.current_version(mdir, sig) == r.version
        meta = json.loads((vdir / "scaler.json").read_text())
        assert meta["scaler"]["std"] > 0 and meta["window_steps"] == 18


def test_worse_model_is_not_promoted(trained):
    from services.trainer import training

    s, results = trained
    worse = s.model_copy(update={"trainer": s.trainer.model_copy(update={"units": 2, "epochs": 1})})
    mdir = training.models_dir(s)
    st = SqliteStore(s.path(s.store.sqlite.path))
    try:
        ends, values = training.load_series(st, worse)["flow_rate"]
    finally:
        st.close()
    r = training.train_signal(worse, "flow_rate", ends, values)
    assert not r.promoted
    assert "does not beat" in r.reason
    assert r.metrics["wape_model"] > r.metrics["wape_current"]
    assert modelstore.current_version(mdir, "flow_rate") == results["flow_rate"].version  # unchanged
    kept = json.loads((Path(r.path) / "metrics.json").read_text())
    assert kept["promoted"] is False and kept["reason"] == r.reason


def test_forecaster_runs_the_export_without_tensorflow(trained):
    s, results = trained
    code = f"""
import sys, numpy as np
from services.forecaster.predictor import ModelPredictor, Window
p = ModelPredictor(__import__('pathlib').Path({results['flow_rate'].path!r}), 10)
w = Window(np.linspace(30, 60, 200), 1_800_000_000, 10)
v = p.predict(w, 6)
long = p.predict(w, 144)  # a day: rolled forward
assert len(v) == 6 and len(long) == 144 and np.isfinite(long).all()
assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules, 'TensorFlow was imported'
print('ok')
"""
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "ok" in r.stdout, r.stderr[-2000:]


def _publish_hour(bus, s, start: datetime):
    for k in range(61):
        ts = start + timedelta(minutes=k)
        rd = Reading(site=s.site, meter=s.meter, ts=ts, seq=k, flow_rate=50.0 + k % 5, pressure=3.6, source="test")
        bus.publish(bus.topics.reading(s.site, s.meter), rd, qos=1).wait_for_publish(5)


def _wait_forecasts(st, s, since, n):
    def got():
        d = st.read_forecasts(s.site, s.meter, since, since + timedelta(hours=2))
        return d if len(d) >= n else None

    return wait_for(got, 60, f"{n} forecast points after {since}")


def test_trainer_on_command_promotes_and_forecaster_hot_reloads(tmp_path, broker, settings):
    from services.forecaster.service import ForecasterService
    from services.trainer.service import TrainerService
    from shared.bus import Bus

    s = small_settings(tmp_path / "var", first_training_days=1000, mqtt=settings.mqtt.model_dump())
    fill_store(s)
    fc = ForecasterService(s)
    tr = TrainerService(s)
    fc.start_in_thread()
    tr.start_in_thread()
    pub = Bus(s.mqtt, "test-pub", persistent=False)
    assert pub.connect(10)
    st = SqliteStore(s.path(s.store.sqlite.path))
    try:
        assert fc.ready.wait(30) and tr.ready.wait(30)
        # before any model: seasonal naive, labelled so
        h1 = START + timedelta(days=DAYS)
        _publish_hour(pub, s, h1)
        df = _wait_forecasts(st, s, h1, 12)
        assert set(df["model"]) == {"seasonal-naive"} and set(df["signal"]) == set(SIGNALS)

        cmd = Command(site=s.site, meter=s.meter, action="train", requested_at=datetime.now(UTC))
        pub.publish(pub.topics.command(s.site, s.meter), cmd, qos=1).wait_for_publish(5)
        wait_for(lambda: all(fc.predictors[x].name != "seasonal-naive" for x in SIGNALS), 150, "hot reload of both models")
        mdir = training.models_dir(s)
        versions = {x: modelstore.current_version(mdir, x) for x in SIGNALS}
        assert {x: fc.predictors[x].name for x in SIGNALS} == versions

        h2 = h1 + timedelta(hours=1)
        _publish_hour(pub, s, h2 + timedelta(minutes=1))  # 10:01 .. 11:01 crosses 11:00
        h3 = h2 + timedelta(hours=1)
        df = _wait_forecasts(st, s, h3 + timedelta(minutes=1), 12)
        issued = df[df["issued_at"] == h3]
        assert {r.signal: r.model for r in issued.itertuples()} == versions
        assert tr.counters.get("models_promoted") == 2
    finally:
        st.close()
        pub.close()
        fc.stop()
        tr.stop()


def test_flow_only_meter_trains_flow_only_and_never_loses_to_persistence(tmp_path, broker, settings):
    """A flow-only 15-minute meter beside the configured one: a train command for it trains its flow
    model only (no pressure model, no failure); a model that does not beat persistence is not served,
    persistence is (the forecast's ``model`` says so)."""
    import numpy as np
    import pandas as pd

    from services.forecaster.service import ForecasterService
    from services.trainer.service import TrainerService
    from shared.bus import Bus

    s = Settings(data_dir=tmp_path / "var", mqtt=settings.mqtt.model_dump(), models={"window_steps": 18},
                 trainer={**SMALL, "first_training_days": 1000, "min_improvement": 0.9},
                 meters=[{"id": "meter1"}, {"id": "rw", "signals": ["flow_rate"], "interval_s": 900}])
    rng = np.random.default_rng(1)
    n = DAYS * 96
    idx = pd.date_range(START, periods=n, freq="900s", tz="UTC", name="ts")
    walk = np.clip(300 + np.cumsum(rng.normal(0, 4, n)), 10, 1900)  # persistence beats seasonal naive
    frame = pd.DataFrame({"seq": np.arange(n), "flow_rate": walk, "pressure": np.nan, "quality": "", "source": "test"}, index=idx)
    st = SqliteStore(s.path(s.store.sqlite.path))
    st.write_reading_frame(s.site, "rw", frame)
    fc, tr = ForecasterService(s), TrainerService(s)
    fc.start_in_thread()
    tr.start_in_thread()
    pub = Bus(s.mqtt, "test-pub", persistent=False)
    assert pub.connect(10)
    try:
        assert fc.ready.wait(30) and tr.ready.wait(30)
        assert (s.site, "rw") in fc.engines and fc.engines[(s.site, "rw")].step == 15
        cmd = Command(site=s.site, meter="rw", action="train", requested_at=datetime.now(UTC))
        pub.publish(pub.topics.command(s.site, "rw"), cmd, qos=1).wait_for_publish(5)
        wait_for(lambda: tr.runs_done >= 1 or tr.counters.get("train_failures") > 0, 150, "the training run")
        assert tr.counters.get("train_failures") == 0 and tr.counters.get("models_kept") == 1  # flow only, kept
        mdir = training.models_dir(s, "rw")
        assert modelstore.current_version(mdir, "flow_rate") == "persistence"
        assert not (mdir / "pressure").exists() and not training.models_dir(s).exists()  # nothing for meter1
        (vdir,) = [p for p in (mdir / "flow_rate").iterdir() if p.is_dir()]
        m = json.loads((vdir / "metrics.json").read_text())
        assert not m["promoted"] and "serving persistence" in m["reason"]
        assert m["metrics"]["wape_persistence"] < m["metrics"]["wape_seasonal_naive"]
        assert m["info"]["step_minutes"] == 15
        rw = fc.engines[(s.site, "rw")]
        wait_for(lambda: rw.predictors["flow_rate"].name == "persistence", 30, "the forecaster serving persistence")

        h = START + timedelta(days=DAYS, hours=1)
        for k in range(5):  # 01:15 .. 02:15 crosses 02:00
            ts = h + timedelta(minutes=15 * (k + 1))
            rd = Reading(site=s.site, meter="rw", ts=ts, seq=n + k, flow_rate=float(walk[-1]), pressure=None, source="test")
            pub.publish(pub.topics.reading(s.site, "rw"), rd, qos=1).wait_for_publish(5)

        def got():
            d = st.read_forecasts(s.site, "rw", h, h + timedelta(hours=3))
            return d if len(d) >= 4 else None

        df = wait_for(got, 60, "the rw forecast")
        assert set(df["model"]) == {"persistence"} and set(df["signal"]) == {"flow_rate"}
        assert np.allclose(df["value"], walk[-1])
    finally:
        st.close()
        pub.close()
        fc.stop()
        tr.stop()
