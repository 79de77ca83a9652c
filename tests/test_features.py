"""Feature engineering shared by trainer and forecaster: pure unit tests (no TensorFlow, no broker)."""

from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

import numpy as np
import pytest

from app.synthetic import START, diurnal_frame
from services.forecaster.predictor import SeasonalNaivePredictor, Window
from services.forecaster.window import ReadingWindow
from services.trainer.training import decide
from shared import features
from shared.eventtime import DaysOff
from shared.settings import RangeLimits

LIM = RangeLimits()


def test_resample_labels_bins_by_their_end_and_counts_duplicates_once():
    ep = np.array([0, 60, 60, 540, 600])
    grid, m = features.resample(ep, np.array([1.0, 2.0, 99.0, 3.0, 10.0]), 10)
    assert grid.tolist() == [600, 1200]
    assert m[0] == pytest.approx(2.0) and m[1] == 10.0  # (1+2+3)/3; 600 opens the next bin


def test_cleaning_drops_flagged_and_out_of_range():
    v = features.clean_values("flow_rate", np.array([1.0, 2.0, -5.0, 4.0]),
                              ["", "flow_rate_out_of_range", "", "pressure_missing"], LIM)
    assert np.isnan(v[1]) and np.isnan(v[2]) and v[0] == 1.0 and v[3] == 4.0
    assert features.valid_value("pressure", 3.0, ("pressure_missing",), LIM) is None
    assert features.valid_value("pressure", 3.0, ("flow_rate_missing",), LIM) == 3.0


def test_fill_gaps_short_inside_and_at_end_long_stays():
    v = np.array([np.nan, 1.0, np.nan, 3.0, np.nan, np.nan, np.nan, 7.0, np.nan])
    out = features.fill_gaps(v, 2)
    assert np.isnan(out[0])  # leading stays
    assert out[2] == 2.0  # short inner gap: linear
    assert np.isnan(out[4:7]).all()  # 3 > 2: stays
    assert out[8] == 7.0  # trailing: carried forward


def test_seasonal_naive_week_then_day_then_nothing():
    step = 60
    week, day = 7 * 24, 24
    h = np.arange(week + 1, dtype=float)  # bin k holds k; issue at the last bin
    sn = features.seasonal_naive(h, 3, step)
    assert sn.tolist() == [1.0, 2.0, 3.0]  # target week+k -> value k
    h2 = h.copy()
    h2[1] = np.nan
    assert features.seasonal_naive(h2, 1, step)[0] == week + 1 - day  # falls back to the last day
    assert np.isnan(features.seasonal_naive(np.array([1.0, 2.0]), 2, step)).all()
    p = SeasonalNaivePredictor().predict(Window(np.array([1.0, 2.0]), 0, step), 2)
    assert p.tolist() == [2.0, 2.0]  # nothing seasonal yet: persistence


def test_seasonal_naive_first_week_copies_the_same_day_type():
    """Before a week of history, a Saturday is copied from the latest weekend day, not from the Friday
    before it (whose early morning rise it would forecast); with no weekend day yet, the latest day."""
    step = 60
    tz = "Asia/Seoul"
    sun = int(datetime(2026, 1, 4, tzinfo=ZoneInfo(tz)).timestamp())  # a Sunday, 00:00 local
    n = 6 * 24  # Sunday .. Friday: bin k (ending sun + (k + 1) h) holds its local day's number
    h = np.repeat(np.arange(6, dtype=float), 24)
    end = sun + n * 3600  # Saturday 00:00: the forecast is for Saturday's first hours
    sn = features.seasonal_naive(h, 3, step, end, tz)
    assert sn.tolist() == [0.0, 0.0, 0.0]  # the Sunday, six days back
    assert features.seasonal_naive(h, 3, step).tolist() == [5.0, 5.0, 5.0]  # without the zone: the Friday
    mon = h[24:]  # from Monday: no weekend day yet
    assert features.seasonal_naive(mon, 3, step, end, tz).tolist() == [5.0, 5.0, 5.0]  # the latest day
    p = SeasonalNaivePredictor().predict(Window(h, end, step, ZoneInfo(tz)), 3)
    assert p.tolist() == [0.0, 0.0, 0.0]  # the forecaster serves the same


@pytest.mark.parametrize("change", [datetime(2026, 3, 29), datetime(2026, 10, 25)])  # Europe/Berlin: spring forward, fall back
def test_seasonal_naive_copies_the_same_local_time_across_a_daylight_saving_change(change):
    """A week after the clocks change, "the same time last week" is 167 or 169 hours back: copied by
    the hour count, the morning rise was forecast an hour early or late all week."""
    tz, step = ZoneInfo("Europe/Berlin"), 10
    end = int((change + timedelta(days=3, hours=7)).replace(tzinfo=tz).timestamp())  # Wednesday 07:00 local
    n = 8 * 24 * 6
    bin_start = [end - (n - i) * 600 for i in range(n)]
    local = [datetime.fromtimestamp(t, tz) for t in bin_start]
    h = np.array([lt.hour * 100 + lt.minute for lt in local], dtype=float)  # each bin holds its local wall time
    sn = features.seasonal_naive(h, 6, step, end, tz)
    assert sn.tolist() == [700.0, 710.0, 720.0, 730.0, 740.0, 750.0]  # 07:00..07:50 local, as a week before
    naive = features.seasonal_naive(h, 6, step)  # without the zone: by the hour count
    assert naive.tolist() != sn.tolist()


def test_seasonal_naive_copies_a_day_off_for_a_public_holiday_and_a_weekday_after_it():
    """A public holiday runs like a Sunday: seasonal naive copies the latest day off for it, not the
    weekday a week before; and the Monday a week after a holiday Monday copies the latest weekday,
    not the holiday. Weekends alone (no holiday calendar): the week-ago day, as before."""
    step = 60
    tz = "Asia/Seoul"
    kr = DaysOff("KR")
    start = int(datetime(2026, 2, 9, tzinfo=ZoneInfo(tz)).timestamp())  # Monday Feb 9, 00:00 local
    h = np.repeat(np.arange(7, dtype=float), 24)  # Mon .. Sun (Feb 9 - 15): bin k holds its day's number
    seollal = start + 7 * 86400  # Monday Feb 16: the day before Korean New Year, a public holiday
    assert kr(date(2026, 2, 16)) and not kr(date(2026, 2, 19))
    assert features.seasonal_naive(h, 3, step, seollal, tz, kr).tolist() == [6.0, 6.0, 6.0]  # the Sunday
    assert features.seasonal_naive(h, 3, step, seollal, tz).tolist() == [0.0, 0.0, 0.0]  # weekends only: last Monday
    # Thursday Feb 19 (no holiday) with the holidays Mon-Wed of the week: last Thursday, unchanged
    h2 = np.concatenate([h, np.repeat([7.0, 8.0, 9.0], 24)])  # Feb 16, 17, 18 (holidays)
    assert features.seasonal_naive(h2, 3, step, seollal + 3 * 86400, tz, kr).tolist() == [3.0, 3.0, 3.0]
    # Monday Feb 23: a week after the holiday Monday; the latest weekday is Friday Feb 20
    h3 = np.concatenate([h2, np.repeat([10.0, 11.0, 12.0, 13.0], 24)])  # Feb 19 .. 22
    assert features.seasonal_naive(h3, 3, step, seollal + 7 * 86400, tz, kr).tolist() == [11.0, 11.0, 11.0]
    assert features.seasonal_naive(h3, 3, step, seollal + 7 * 86400, tz).tolist() == [7.0, 7.0, 7.0]
    p = SeasonalNaivePredictor().predict(Window(h, seollal, step, ZoneInfo(tz), kr), 3)
    assert p.tolist() == [6.0, 6.0, 6.0]  # the forecaster serves the same


def test_serving_window_equals_training_series():
    """The forecaster's in-memory window and the trainer's resampling give the same numbers."""
    f = diurnal_frame(2, seed=3)
    f.iloc[100:104, f.columns.get_loc("flow_rate")] = np.nan
    f.iloc[200, f.columns.get_loc("quality")] = "flow_rate_out_of_range"
    f = f.drop(f.index[1000:1200])  # a 200-minute hole: longer than max_gap
    end = int((START + timedelta(days=2)).timestamp())
    ends, train = features.series_from_frame(f, "flow_rate", 10, LIM, 6, end=end)
    w = ReadingWindow(10, len(ends), 6, LIM)
    w.backfill(f)
    served = w.window("flow_rate", end)
    np.testing.assert_allclose(served[1:], train[1:], equal_nan=True)  # bin 0 is cut off by the grid start
    assert np.isnan(served).sum() >= 10


def test_training_windows_shapes_and_targets():
    ends = np.arange(1, 101) * 600
    vals = np.arange(100, dtype=float)
    vals[50] = np.nan
    sc = features.Scaler(0.0, 1.0)
    X, Y, issue = features.training_windows(vals, ends, sc, "UTC", 5, 3)
    assert X.shape[1:] == (5, features.N_FEATURES) and Y.shape[1] == 3
    k = 0
    assert X[k, -1, 0] == vals[issue[k]] and Y[k].tolist() == vals[issue[k] + 1: issue[k] + 4].tolist()
    assert not ((issue >= 47) & (issue <= 54)).any()  # windows touching the NaN are left out


def test_promotion_rule():
    assert decide(0.05, 0.06, None, 0.0, True, 0.0, 1e-3)[0]
    ok, why = decide(0.07, 0.06, None, 0.0, True, 0.0, 1e-3)
    assert not ok and "seasonal naive" in why
    ok, why = decide(0.05, 0.06, 0.04, 0.0, True, 0.0, 1e-3)
    assert not ok and "current model" in why
    ok, why = decide(0.05, 0.06, None, 0.0, False, 0.1, 1e-3)
    assert not ok and "parity" in why
    assert not decide(0.059, 0.06, None, 0.05, True, 0.0, 1e-3)[0]  # min_improvement


def test_promotion_gate_includes_persistence_and_serves_the_better_baseline():
    from services.trainer.training import serve_when_kept

    ok, why = decide(0.05, 0.06, None, 0.0, True, 0.0, 1e-3, wape_persistence=0.04)
    assert not ok and "does not beat persistence 0.0400" in why
    ok, why = decide(0.03, 0.06, None, 0.0, True, 0.0, 1e-3, wape_persistence=0.04)
    assert ok and "persistence 0.0400" in why
    # not promoted: the better baseline is served, unless the current model beats both
    assert serve_when_kept(0.04, 0.06, None, None) == "persistence"
    assert serve_when_kept(0.07, 0.06, None, None) == "seasonal-naive"
    assert serve_when_kept(0.04, 0.06, "v1", 0.03) is None  # keep v1
    assert serve_when_kept(0.04, 0.06, "v1", 0.05) == "persistence"  # v1 loses to persistence: demoted
    assert serve_when_kept(0.04, 0.06, "seasonal-naive", None) == "persistence"


class _WeekdayModel:
    """A stand-in for a trained model (pure unit test): forecasts 100 whatever the day."""

    name = "v3"

    def predict(self, window, steps):
        return np.full(steps, 100.0)


@pytest.mark.parametrize(("holidays", "served"), [("auto", "seasonal-naive"), ("none", "v3")])
def test_on_a_public_holiday_the_forecaster_serves_seasonal_naive_instead_of_a_model(holidays, served):
    # Monday Feb 16 2026, 06:00 in Seoul: the day before Korean New Year. A model's calendar features
    # know Monday, not the holiday; seasonal naive copies the latest day off (the Sunday) and the
    # forecast says which it is. With holidays: none it is an ordinary Monday and the model serves.
    from services.forecaster.engine import ForecastEngine
    from shared.settings import Settings

    s = Settings(holidays=holidays)
    e = ForecastEngine(s, s.site, s.meter)
    e.predictors["flow_rate"] = _WeekdayModel()
    t0 = int(datetime(2026, 2, 9, tzinfo=ZoneInfo("Asia/Seoul")).timestamp())  # Monday Feb 9, 00:00
    end = t0 + 7 * 86400 + 6 * 3600
    for t in range(t0, end + 1, 600):
        e.add(datetime.fromtimestamp(t, ZoneInfo("UTC")), t, 40.0, 4.0)
    before = e.holiday_naive  # the hourly forecasts issued on the way (from Sunday 23:00 on, in the holiday's reach)
    (flow,) = [f for f in e.forecast(datetime.fromtimestamp(end, ZoneInfo("UTC"))) if f.signal == "flow_rate"]
    assert flow.model == served and e.holiday_naive - before == (served == "seasonal-naive")
    assert before == (7 if served == "seasonal-naive" else 0)
    assert flow.values[0] == (40.0 if served == "seasonal-naive" else 100.0)
