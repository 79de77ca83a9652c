"""The simulator's demo schedule (what `flowwatch up` shows a new user) against the detector's default
rules: every injected event must raise the alert it is there to demonstrate. Pure: no broker, no store."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from services.collector.simulator import DEFAULT_EVENTS, Simulator
from services.detector.engine import DetectionEngine
from shared.settings import DetectorSettings, SimulatorSettings

START = datetime(2026, 3, 2, 3, 0, tzinfo=UTC)  # 12:00 local (Asia/Seoul), a Monday


def opened(minutes: int) -> dict[str, list[tuple[str, datetime]]]:
    """Alert kind -> [(signal, start)] of the alerts raised over the first ``minutes`` of the demo
    (instant events such as spike and gap arrive already closed)."""
    sim = Simulator(SimulatorSettings(), seed=42, interval_s=60)
    eng = DetectionEngine(DetectorSettings(), "Asia/Seoul")
    out: dict[str, list[tuple[str, datetime]]] = {}
    for r in sim.readings(START, minutes):
        for a in eng.process(r):
            if (a.signal, a.start) not in out.get(a.kind, []):
                out.setdefault(a.kind, []).append((a.signal, a.start))
    return out


def test_every_demo_event_raises_its_alert():
    events = {ev.kind: ev for ev in DEFAULT_EVENTS}
    got = opened(600)

    def near(kind: str, ev_kind: str, slack_min: float) -> bool:
        ev = events[ev_kind]
        t0 = START + timedelta(minutes=ev.at_minutes)
        t1 = t0 + timedelta(minutes=(ev.duration_minutes or 1) + slack_min)
        return any(t0 - timedelta(minutes=1) <= start <= t1 for _sig, start in got.get(kind, []))

    assert near("burst", "burst", 5), got
    assert near("spike", "spike", 2), got
    assert near("flatline", "flatline", 0), got
    assert near("gap", "gap", 2), got
