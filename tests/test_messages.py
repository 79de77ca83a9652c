from datetime import UTC, datetime, timedelta, timezone

import pytest
from pydantic import ValidationError

from shared.messages import (
    Anomaly,
    Band,
    Command,
    ExportRecord,
    Forecast,
    ModelInfo,
    Reading,
    ServiceStatus,
    Thresholds,
    dead_letter,
)

T = datetime(2026, 3, 1, 9, 30, tzinfo=UTC)

EXAMPLES = [
    Reading(site="s1", meter="m1", ts=T, seq=7, flow_rate=12.5, pressure=3.1, quality=("simulated",), source="simulator"),
    Reading(site="s1", meter="m1", ts=T, seq=8, flow_rate=None, pressure=3.1, quality=("flow_rate_missing",)),
    Anomaly(site="s1", meter="m1", kind="burst", signal="both", severity="critical", state="open", start=T, ts=T, value=40.0, threshold=20.0),
    Anomaly(site="s1", meter="m1", kind="gap", signal="flow_rate", severity="warning", state="closed", start=T, end=T + timedelta(minutes=5), ts=T),
    Forecast(site="s1", meter="m1", signal="pressure", issued_at=T, step_minutes=10, values=(3.0, 3.1), model="seasonal-naive"),
    Thresholds(site="s1", meter="m1", signal="flow_rate", computed_at=T, method="learned",
               bands=(Band(hour=1, daytype="weekday", lower=1.0, upper=9.0),), sample_days=90),
    ModelInfo(site="s1", meter="m1", signal="flow_rate", version="20260301T0000", created_at=T, promoted=True, metrics={"wape": 0.05}),
    ServiceStatus(service="detector", state="online", ts=T, counters={"handled": 3}),
    ExportRecord(site="s1", meter="m1", file="alert", ts=T, protocol_version=1, content="FWALERT 1\r\n"),
    Command(site="s1", meter="m1", action="train", requested_at=T),
]


@pytest.mark.parametrize("msg", EXAMPLES, ids=lambda m: type(m).__name__)
def test_round_trip(msg):
    data = msg.to_json()
    again = type(msg).model_validate_json(data)
    assert again == msg
    assert b'"schema_version":1' in data


def test_timestamps_normalised_to_utc():
    kst = timezone(timedelta(hours=9))
    r = Reading(site="s", meter="m", ts=datetime(2026, 3, 1, 18, 30, tzinfo=kst), seq=0)
    assert r.ts == T and r.ts.tzinfo == UTC


@pytest.mark.parametrize("bad", [
    {"ts": "2026-03-01T09:30:00"},  # naive
    {"flow_rate": float("nan")},
    {"flow_rate": float("inf")},
    {"seq": -1},
    {"site": "a/b"},
    {"site": "+"},
    {"unknown": 1},
    {"quality": ["nonsense"]},
    {"schema_version": 2},
])
def test_reading_rejects(bad):
    base = {"site": "s", "meter": "m", "ts": T.isoformat(), "seq": 0}
    with pytest.raises(ValidationError):
        Reading.model_validate({**base, **bad})


def test_nan_in_json_rejected():
    with pytest.raises(ValidationError):
        Reading.model_validate_json(b'{"site":"s","meter":"m","ts":"2026-01-01T00:00:00Z","seq":1,"flow_rate":NaN}')


def test_closed_anomaly_needs_end():
    with pytest.raises(ValidationError):
        Anomaly(site="s", meter="m", kind="gap", signal="flow_rate", severity="info", state="closed", start=T, ts=T)


def test_forecast_targets():
    f = EXAMPLES[4]
    assert f.targets() == [T + timedelta(minutes=10), T + timedelta(minutes=20)]


def test_dead_letter_truncates():
    d = dead_letter("svc", "t", "why", b"x" * 100_000)
    assert d.payload_truncated and len(bytes.fromhex(d.payload_hex)) == 64 * 1024
