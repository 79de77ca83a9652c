"""Per-meter range limits (issue 15): meters[].limits merged over the box's `limits`."""

import pytest
from pydantic import ValidationError

from shared.settings import RangeLimits, Settings, format_errors, load_settings


def test_a_meters_limits_are_merged_over_the_boxs():
    s = Settings(limits={"flow_rate_max": 800, "pressure_max": 10, "max_ahead_s": 60},
                 meters=[{"id": "amr", "limits": {"flow_rate_max": 50}}, {"id": "inlet", "limits": {"flow_rate_min": 5, "pressure_max": 12}},
                         {"id": "plain"}])
    amr, inlet = s.limits_of("amr"), s.limits_of("inlet")
    assert (amr.flow_rate_min, amr.flow_rate_max, amr.pressure_min, amr.pressure_max) == (0, 50, 0, 10)
    assert (inlet.flow_rate_min, inlet.flow_rate_max, inlet.pressure_max) == (5, 800, 12)
    assert amr.max_ahead_s == inlet.max_ahead_s == 60  # the time windows stay the box's
    assert s.limits_of("plain") is s.limits
    assert s.limits.flow_rate_max == 800  # the box's own section is untouched


def test_limits_of_a_meter_not_configured_here_is_the_boxs():
    s = Settings(limits={"flow_rate_max": 300}, meters=[{"id": "amr", "limits": {"flow_rate_max": 50}}])
    assert s.limits_of("another-box-meter") is s.limits
    assert Settings().limits_of("meter1") == RangeLimits()


def test_meter_limits_from_a_config_file(tmp_path):
    cfg = tmp_path / "fw.yaml"
    cfg.write_text("limits:\n  flow_rate_max: 2000\nmeters:\n  - id: dn300\n  - id: amr\n    limits: {flow_rate_max: 50}\n")
    s = load_settings(cfg)
    assert s.limits_of("dn300").flow_rate_max == 2000 and s.limits_of("amr").flow_rate_max == 50


@pytest.mark.parametrize("key", ["earliest", "max_ahead_s", "max_jump_s", "max_meters_per_site"])
def test_a_box_wide_key_under_a_meter_is_an_error_naming_it(key):
    with pytest.raises(ValueError) as err:
        Settings(meters=[{"id": "a"}, {"id": "b", "limits": {"flow_rate_max": 50, key: 5}}])
    (line,) = format_errors(err.value)
    assert f"meters[1].limits.{key} is box-wide: set it under limits" in line


def test_an_unknown_key_under_a_meters_limits_is_an_error_naming_it():
    with pytest.raises(ValueError, match=r"meters\[0\]\.limits\.flow_max is not a key of limits; a meter may set only flow_rate_min"):
        Settings(meters=[{"id": "a", "limits": {"flow_max": 50}}])


@pytest.mark.parametrize(("own", "says"), [
    ({"flow_rate_max": 0}, "flow_rate_min must be below flow_rate_max"),  # the box's min 0 with the meter's max
    ({"flow_rate_min": 60, "flow_rate_max": 50}, "flow_rate_min must be below flow_rate_max"),
    ({"pressure_min": 20}, "pressure_min must be below pressure_max"),  # against the box's pressure_max 16
])
def test_merged_limits_that_are_not_ordered_name_the_meter(own, says):
    with pytest.raises(ValueError) as err:
        Settings(meters=[{"id": "a"}, {"id": "small", "limits": own}])
    (line,) = format_errors(err.value)
    assert "meters[1] (small): its limits keys merged over limits are not valid" in line and says in line


def test_a_meter_limit_must_be_a_number():
    with pytest.raises(ValueError) as err:
        Settings(meters=[{"id": "a", "limits": {"flow_rate_max": "lots"}}])
    assert any(line.startswith("meters.0.limits.flow_rate_max:") for line in format_errors(err.value))


# --- the services judge a meter's readings against its own range ----------------------------------
def two_meters(tmp_path) -> Settings:
    return Settings(data_dir=tmp_path / "var", meters=[{"id": "amr", "limits": {"flow_rate_max": 50}}, {"id": "inlet"}])


def test_forecaster_and_trainer_leave_out_only_what_is_outside_the_meters_range(tmp_path):
    from datetime import UTC, datetime, timedelta

    import numpy as np
    import pandas as pd

    from services.forecaster.engine import ForecastEngine
    from services.trainer.training import load_series
    from shared.store.sqlite import SqliteStore

    s = two_meters(tmp_path)
    t0 = datetime(2026, 3, 2, tzinfo=UTC)
    idx = pd.date_range(t0, periods=120, freq="1min", tz="UTC", name="ts")
    flow = np.full(120, 20.0)
    flow[60] = 60.0
    frame = pd.DataFrame({"flow_rate": flow, "pressure": np.full(120, 3.0)}, index=idx)
    store = SqliteStore(tmp_path / "store.db")
    try:
        for m in ("amr", "inlet"):
            store.write_reading_frame(s.site, m, frame)
        series = {m: load_series(store, s, t0 + timedelta(hours=2), meter=m)["flow_rate"][1] for m in ("amr", "inlet")}
    finally:
        store.close()
    assert np.nanmax(series["amr"]) == 20.0 and np.nanmax(series["inlet"]) > 20.0
    for m in ("amr", "inlet"):
        assert ForecastEngine(s, s.site, m).window.limits is s.limits_of(m)


def test_collector_channels_and_replay_take_the_meters_range(tmp_path):
    from services.collector.quality import range_flags
    from services.collector.service import CollectorService
    from services.collector.sources import make_source

    s = two_meters(tmp_path)
    ch = {c.meter: c for c in CollectorService(s).channels}  # nothing opened before it runs
    assert range_flags(60.0, 3.0, ch["amr"].limits) == ("flow_rate_out_of_range",) and range_flags(60.0, 3.0, ch["inlet"].limits) == ()
    replay = Settings(collector={"source": "replay", "replay": {"file": "x.csv"}}, meters=s.model_dump()["meters"])
    assert make_source(replay, "amr").limits.flow_rate_max == 50 and make_source(replay, "inlet").limits is replay.limits


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_a_limit_that_is_not_a_finite_number_is_refused(value):
    with pytest.raises(ValidationError, match="flow_rate_max must be a finite number"):
        Settings(meters=[{"id": "m1", "limits": {"flow_rate_max": value}}])
    with pytest.raises(ValidationError, match="pressure_min must be a finite number"):
        Settings(limits={"pressure_min": value})


def test_static_limits_given_for_one_signal_keep_the_others_default():
    """A config naming only flow's static limits once left pressure without bands (the detector raised a
    validation error at the first reading); a signal left out keeps its default, and an infinite limit
    is refused with its key."""
    from shared.settings import DetectorSettings
    from shared.settings.detector import STATIC_LIMITS

    s = DetectorSettings(static_limits={"flow_rate": (0.0, 500.0)})
    assert s.static_limits == {"flow_rate": (0.0, 500.0), "pressure": STATIC_LIMITS["pressure"]}
    with pytest.raises(ValidationError, match="static_limits.pressure: both limits must be finite"):
        DetectorSettings(static_limits={"pressure": (1.0, float("inf"))})


def test_the_default_flow_range_covers_a_large_district():
    """Tens of thousands of customers peak over 2,000 m³/h: out of the box no such reading is invalid
    and no static band is crossed before the meter's own bands are learned."""
    from shared.settings import DetectorSettings

    assert RangeLimits().flow_rate_max >= 5000 and DetectorSettings().static_limits["flow_rate"][1] >= 5000
