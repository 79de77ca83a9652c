"""The simulator's demo schedule (what `flowwatch up` shows a new user) against the detector's default
rules: every injected event must raise the alert it is there to demonstrate. Pure: no broker, no store."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from services.collector.simulator import DEFAULT_EVENTS, Simulator
from services.detector.engine import DetectionEngine
from shared.settings import DetectorSettings, SimEvent, SimulatorSettings

START = datetime(2026, 3, 2, 3, 0, tzinfo=UTC)  # 12:00 local (Asia/Seoul), a Monday
EVENTS = {ev.kind: ev for ev in DEFAULT_EVENTS}


def opened(minutes: int, sim_settings: SimulatorSettings | None = None) -> dict[str, list[tuple[str, datetime, str]]]:
    """Alert kind -> [(signal, start, severity)] of the alerts raised over the first ``minutes`` of the
    demo (instant events such as spike and gap arrive already closed)."""
    sim = Simulator(sim_settings or SimulatorSettings(), seed=42, interval_s=60)
    eng = DetectionEngine(DetectorSettings(), "Asia/Seoul")
    out: dict[str, list[tuple[str, datetime, str]]] = {}
    seen: list = []
    for r in sim.readings(START, minutes):
        seen.append(r)
        for s, m, at in eng.take_due():  # a recalibration was due: the recent readings, as the service hands them
            eng.recalibrate(s, m, seen, at)
        for a in eng.process(r):
            if a.state == "open" or a.kind in ("spike", "gap"):
                out.setdefault(a.kind, []).append((a.signal, a.start, a.severity))
    return out


def test_every_demo_event_raises_its_alert():
    got = opened(600)

    def near(kind: str, ev_kind: str, slack_min: float) -> bool:
        ev = EVENTS[ev_kind]
        t0 = START + timedelta(minutes=ev.at_minutes)
        t1 = t0 + timedelta(minutes=(ev.duration_minutes or 1) + slack_min)
        return any(t0 - timedelta(minutes=1) <= start <= t1 for _sig, start, _sev in got.get(kind, []))

    assert near("burst", "burst", 5), got
    assert near("spike", "spike", 2), got
    assert near("flatline", "flatline", 0), got
    assert near("gap", "gap", 2), got
    # the supply-side pressure drop (1.5 bar, flow unchanged): its own kind, within 5 minutes, critical by size
    t0 = START + timedelta(minutes=EVENTS["pressure_drop"].at_minutes)
    drops = got.get("pressure_drop", [])
    assert [(s, sev) for s, _st, sev in drops] == [("pressure", "critical")], got
    assert t0 <= drops[0][1] <= t0 + timedelta(minutes=5), got
    # nothing else hydraulic: the burst is a burst (not also a pressure drop), no false alarm around the events
    assert len(got["burst"]) == 1 and not {"threshold", "pressure_loss", "night_flow", "forecast_deviation"} & got.keys(), got


def test_the_demo_leak_raises_night_flow_once_the_nights_are_learned():
    """The demo's slow leak (10 % of the mean flow, grown over a day) cannot be told from demand within
    the demo's first hours: a night-flow baseline needs ``night_min_baseline_nights`` nights. Here the same
    event comes after 8 quiet days; it must be raised as night_flow by the second night after it starts."""
    leak = EVENTS["leak"]
    at = 8 * 1440 + leak.at_minutes
    cfg = SimulatorSettings(default_events=False, events=[SimEvent(kind="leak", at_minutes=at, duration_minutes=leak.duration_minutes)])
    got = opened(at + 2 * 1440 + 6 * 60, cfg)
    t0 = START + timedelta(minutes=at)
    assert [k for k in got if k not in ("night_flow",)] == [], got  # 8 quiet days and the leak: nothing else
    starts = [st for _s, st, _sev in got["night_flow"]]
    assert len(starts) == 1 and t0 <= starts[0] <= t0 + timedelta(days=2), got


def test_the_demo_burst_closes_when_it_ends_though_the_evening_follows():
    """`flowwatch up` started at 16:26 local: the demo's burst (20 minutes in, 30 minutes long) is followed
    by the evening's demand, whose pressure fell below the afternoon baselines the burst froze; the alert
    stayed open for hours after the burst had stopped. It must close within minutes of the end."""
    start = datetime(2026, 3, 2, 7, 26, tzinfo=UTC)  # 16:26 local
    sim = Simulator(SimulatorSettings(), seed=42, interval_s=60)
    eng = DetectionEngine(DetectorSettings(), "Asia/Seoul")
    bursts = [a for r in sim.readings(start, 150) for a in eng.process(r) if a.kind == "burst"]
    ev = EVENTS["burst"]
    end = start + timedelta(minutes=ev.at_minutes + ev.duration_minutes)
    assert [a.state for a in bursts] == ["open", "closed"], [(a.state, a.ts) for a in bursts]
    assert bursts[1].end <= end + timedelta(minutes=DetectorSettings().clear_after_minutes + 5), (bursts[1].end, end)
