"""Leak scenarios from a hydraulic simulator (EPANET through ``wntr``): readings + labels.

A district metered area (DMA) fed from a reservoir through one inlet main with the meter on it: the
meter reads the inlet flow and the pressure at the inlet junction. Demand follows a residential
and a commercial pattern in *local* time (daily and weekly shape, public holidays shaped as a Sunday,
a day-to-day factor and AR(1) noise), with pressure-dependent demand (EPANET 2.2 PDD). Leaks have a size as a share of the mean
inflow and start abruptly (``burst``) or grow over days (``leak``, incipient). Sensor faults
(flat-line, spikes, gaps) are applied to the delivered readings, not to the hydraulics.

How it is computed, and why:

- EpanetSimulator (the EPANET 2.2 toolkit), not WNTRSimulator: 60 days at a 15-minute step take
  ~0.3 s instead of ~70 s. Its only drawback here is that it cannot change an emitter coefficient
  during a run, which rules out emitters for leaks that grow.
- Leaks are modelled as extra demand at a junction with its own pattern, shaped like an emitter:
  ``q(t) = g(t) · C · sqrt(p0(t))`` where ``g`` is the onset/growth (0..1), ``p0`` the pressure at the
  leak node without leaks, and ``C`` set so that at full size the leak's mean flow is exactly
  ``size_pct`` of the mean inflow. So a leak runs higher at night when pressure is high, as a real
  one does, its size is exactly what the label says (an emitter coefficient would have to be
  searched for), and growth over days is one pattern. The leak's own pressure drawdown is ignored
  in ``p0`` (a small second-order effect at these sizes).
- Hydraulics run at ``hydraulic_step_min`` (default 15); readings are delivered every minute.
  The leak-free run is interpolated linearly; the leak contribution is added at 1-minute
  resolution as ``r(t) · q(t)`` where ``r`` is the network's response per m³/h of leak (from a second
  run with the leaks, interpolated). A burst therefore jumps within one minute in both flow and
  pressure, instead of ramping over a hydraulic step — detection delay is measurable in minutes.

Everything is deterministic for a given scenario (seed included).
"""

from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd

from shared.eventtime import DaysOff

BAR_PER_M = 0.0980665  # pressure head of water: 1 m = 9.80665 kPa
LABEL_COLUMNS = ("start", "end", "kind", "size_pct")
# Optional: the share of the mean inflow a leak added *at the meter* (``size_pct`` is the leak's own
# flow; where the network cannot hold pressure, e.g. a lumpy peak under pressure-dependent demand,
# much of it is taken from customers instead and the meter sees less): over a burst's first hour,
# over a growing leak's whole span.
INFLOW_COLUMN = "inflow_pct"
READING_COLUMNS = ("timestamp", "flow_rate", "pressure")
HEADLOSS_MEAN_M = 4.4  # head loss of the inlet main at mean flow (m), by its sizing below


@dataclass(frozen=True)
class Leak:
    """A leak: ``burst`` starts at full size within a minute; ``leak`` grows linearly over ``growth_days``."""

    start_day: float
    size_pct: float
    kind: Literal["burst", "leak"] = "burst"
    growth_days: float = 0.0
    duration_days: float | None = None  # repaired after this long; None = runs to the end
    node: str | None = None  # junction name; drawn from the seed when None


@dataclass(frozen=True)
class SensorFault:
    """A fault of the meter: the value stuck (``flatline``), outliers (``spike``) or no rows (``gap``)."""

    start_day: float
    kind: Literal["flatline", "spike", "gap"]
    minutes: float = 60.0
    signal: Literal["flow_rate", "pressure", "both"] = "both"


@dataclass(frozen=True)
class Scenario:
    name: str = "custom"
    seed: int = 0
    days: float = 28.0
    start: str = "2026-01-05"  # local midnight of this date in ``timezone`` (a Monday)
    timezone: str = "Asia/Seoul"
    holidays: str = "auto"  # public holidays run like a Sunday: auto (the country of ``timezone``), none, or a code (KR, US-CA)
    mean_inflow: float = 40.0  # m³/h without leaks
    inlet_pressure_bar: float = 4.0  # about, at mean flow
    grid: int = 6  # grid x grid junctions with loops
    network: str = "grid"  # "grid", or the layout of one of wntr's example networks (NETWORKS)
    hydraulic_step_min: int = 15
    demand_noise: float = 0.04  # relative sd of AR(1) noise per hydraulic step
    day_factor_sd: float = 0.04  # relative sd of a per-day demand factor (weather)
    minute_noise: float = 0.015  # relative sd of the within-step flow fluctuation (AR(1), minutes)
    flow_noise: float = 0.1  # m³/h, meter noise sd
    pressure_noise: float = 0.005  # bar, meter noise sd
    leaks: tuple[Leak, ...] = ()
    faults: tuple[SensorFault, ...] = ()

    def __post_init__(self) -> None:
        if self.days <= 0:
            raise ValueError("days must be positive")
        if not 1 <= self.hydraulic_step_min <= 60:
            raise ValueError("hydraulic_step_min must be 1..60")
        if self.grid < 2:
            raise ValueError("grid must be at least 2")
        if self.network != "grid" and self.network not in NETWORKS:
            raise ValueError(f"network {self.network!r}: use grid or one of {', '.join(NETWORKS)}")
        for lk in self.leaks:
            if lk.size_pct <= 0 or lk.start_day < 0 or lk.start_day >= self.days:
                raise ValueError(f"leak {lk}: size_pct must be > 0 and start_day within 0..days")
            if lk.kind == "leak" and lk.growth_days <= 0:
                raise ValueError(f"leak {lk}: an incipient leak needs growth_days > 0")
        for f in self.faults:
            if f.start_day < 0 or f.start_day >= self.days or f.minutes <= 0:
                raise ValueError(f"fault {f}: start_day within 0..days and minutes > 0")

    @property
    def t0(self) -> datetime:
        local = datetime.fromisoformat(self.start)
        if local.tzinfo is None:
            local = local.replace(tzinfo=ZoneInfo(self.timezone))
        return local.astimezone(UTC)


def scenario_from_dict(d: dict[str, Any]) -> Scenario:
    """A Scenario from plain data (YAML); unknown keys are errors."""
    d = dict(d)
    leaks = tuple(Leak(**x) for x in d.pop("leaks", ()) or ())
    faults = tuple(SensorFault(**x) for x in d.pop("faults", ()) or ())
    return Scenario(**d, leaks=leaks, faults=faults)


@dataclass
class Simulated:
    readings: pd.DataFrame  # columns timestamp (UTC), flow_rate, pressure (NaN = missing value)
    labels: pd.DataFrame  # columns start, end, kind, size_pct, inflow_pct
    info: dict[str, Any] = field(default_factory=dict)


# --- demand -------------------------------------------------------------------------------------

# Hourly multipliers (mean 1) of a residential DMA: low at night, morning and evening peaks.
_RES_WEEKDAY = np.array([0.45, 0.38, 0.35, 0.35, 0.40, 0.60, 1.10, 1.60, 1.55, 1.25, 1.05, 1.00,
                         1.05, 0.95, 0.90, 0.90, 1.00, 1.20, 1.45, 1.50, 1.35, 1.15, 0.85, 0.60])
_RES_WEEKEND = np.array([0.55, 0.45, 0.40, 0.38, 0.38, 0.45, 0.65, 0.95, 1.30, 1.50, 1.45, 1.30,
                         1.20, 1.10, 1.05, 1.00, 1.05, 1.20, 1.40, 1.45, 1.35, 1.15, 0.90, 0.70])
_COM_WEEKDAY = np.array([0.30, 0.30, 0.30, 0.30, 0.30, 0.40, 0.80, 1.40, 1.80, 1.90, 1.90, 1.80,
                         1.70, 1.80, 1.80, 1.70, 1.50, 1.20, 0.80, 0.60, 0.50, 0.40, 0.35, 0.30])
_COM_WEEKEND = np.full(24, 0.45)


def _shape(hours: np.ndarray, weekend: np.ndarray, weekday_prof: np.ndarray, weekend_prof: np.ndarray) -> np.ndarray:
    """Smooth (periodic linear interpolation between hour midpoints) multiplier at fractional local hours."""
    x = np.arange(24) + 0.5
    wd = np.interp(hours, x, weekday_prof, period=24)
    we = np.interp(hours, x, weekend_prof, period=24)
    return np.where(weekend, we, wd)


def _ar1(rng: np.random.Generator, n: int, sd: float, phi: float) -> np.ndarray:
    e = rng.normal(0.0, sd * math.sqrt(1 - phi * phi), n)
    out = np.empty(n)
    acc = rng.normal(0.0, sd)
    for i in range(n):
        acc = phi * acc + e[i]
        out[i] = acc
    return out


def _demand_patterns(sc: Scenario, times: pd.DatetimeIndex, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    local = times.tz_convert(sc.timezone)
    hours = local.hour + local.minute / 60.0
    off = DaysOff.from_setting(sc.holidays, sc.timezone)
    weekend = np.array([off(d) for d in local.date])  # Saturday, Sunday or a public holiday: the weekend shape
    days = (local.normalize() - local.normalize()[0]).days.to_numpy()
    day_factor = 1.0 + rng.normal(0.0, sc.day_factor_sd, days.max() + 1)[days]
    res = _shape(hours, weekend, _RES_WEEKDAY, _RES_WEEKEND)
    com = _shape(hours, weekend, _COM_WEEKDAY, _COM_WEEKEND)
    res = res / res.mean() * day_factor * (1.0 + _ar1(rng, len(times), sc.demand_noise, 0.8))
    com = com / com.mean() * day_factor * (1.0 + _ar1(rng, len(times), sc.demand_noise, 0.8))
    return np.clip(res, 0.05, None), np.clip(com, 0.05, None)


# --- network ------------------------------------------------------------------------------------

# wntr's bundled example networks usable as a DMA's layout: name -> what it is like
NETWORKS = {
    "Net2": "35 junctions, a small town's branched-and-looped network",
    "Net3": "92 junctions, a mid-size city network with loops",
    "ky4": "959 junctions, a large, mostly branched rural network",
}


def _example_layout(sc: Scenario, wn, rng: np.random.Generator) -> str:
    """Add the layout (junctions, pipe lengths, who connects to whom) of the wntr example network
    ``sc.network`` to ``wn`` as a DMA: its sources, tanks, pumps and valves become plain junctions and
    pipes, elevations are flattened, pipes are resized for ``sc.mean_inflow`` and demand is spread in
    proportion to the original base demands. Returns the junction the inlet main feeds."""
    import wntr

    path = Path(wntr.__file__).parent / "library" / "networks" / f"{sc.network}.inp"
    src = wntr.network.WaterNetworkModel(str(path))
    q_mean = sc.mean_inflow / 3600.0
    names = list(src.node_name_list)
    base = np.array([abs(src.get_node(n).base_demand) if n in src.junction_name_list else 0.0 for n in names])
    weights = base if base.sum() > 0 else np.ones(len(names))
    weights = weights / weights.sum()
    commercial = set(rng.choice(len(names), size=max(1, len(names) // 6), replace=False).tolist())
    src_total = float(base.sum()) or 1.0
    scale = (q_mean / src_total) ** 0.38  # pipes carry the DMA's flow at the source network's velocities
    for k, n in enumerate(names):
        wn.add_junction(f"N{n}", base_demand=q_mean * float(weights[k]), demand_pattern="com" if k in commercial else "res",
                        elevation=10.0 + rng.uniform(-2, 2))
    for name in src.link_name_list:
        link = src.get_link(name)
        a, b = f"N{link.start_node_name}", f"N{link.end_node_name}"
        if link.link_type == "Pipe":
            d = float(np.clip(link.diameter * scale, 0.05, 1.5))
            wn.add_pipe(f"P{name}", a, b, length=float(np.clip(link.length, 20.0, 1500.0)), diameter=d, roughness=100.0)
        else:  # a pump or valve: a short wide pipe
            wn.add_pipe(f"P{name}", a, b, length=10.0, diameter=0.3 * max(scale, 0.2), roughness=120.0)
    # the inlet main feeds the node of the original main source (the first reservoir, else the first tank)
    feed = (src.reservoir_name_list or src.tank_name_list or src.junction_name_list)[0]
    return f"N{feed}"


def build_network(sc: Scenario, res_pattern: np.ndarray, com_pattern: np.ndarray, head_pattern: np.ndarray):
    """The DMA: reservoir -> inlet main (meter) -> grid of junctions with loops (or the layout of a wntr
    example network, :data:`NETWORKS`). The inlet junction is ``wn.inlet_junction``."""
    import wntr

    rng = np.random.default_rng(sc.seed + 7919)
    wn = wntr.network.WaterNetworkModel()
    step = sc.hydraulic_step_min * 60
    wn.options.time.duration = int(round(sc.days * 86400 / step)) * step
    wn.options.time.hydraulic_timestep = step
    wn.options.time.pattern_timestep = step
    wn.options.time.report_timestep = step
    wn.options.time.quality_timestep = step
    wn.options.hydraulic.demand_model = "PDD"
    wn.options.hydraulic.required_pressure = 20.0  # m: full demand above this
    wn.options.hydraulic.minimum_pressure = 3.0  # m: no demand below this
    wn.add_pattern("res", list(res_pattern))
    wn.add_pattern("com", list(com_pattern))
    wn.add_pattern("head", list(head_pattern))

    diameter = 0.15 * (sc.mean_inflow / 40.0) ** 0.38
    if sc.network != "grid":
        inlet = _example_layout(sc, wn, rng)
        inlet_elev = wn.get_node(inlet).elevation
        wn.add_reservoir("R", base_head=inlet_elev + sc.inlet_pressure_bar / BAR_PER_M + HEADLOSS_MEAN_M, head_pattern="head")
        wn.add_pipe("inlet", "R", inlet, length=1000.0, diameter=diameter, roughness=110.0)
        wn.inlet_junction = inlet
        return wn
    n = sc.grid
    q_mean = sc.mean_inflow / 3600.0  # m³/s
    commercial = set(rng.choice(n * n, size=max(1, n * n // 6), replace=False).tolist())
    weights = rng.uniform(0.5, 1.5, n * n)
    weights /= weights.sum()
    for k in range(n * n):
        i, j = divmod(k, n)
        elev = 10.0 + 1.5 * i + 1.0 * j + rng.uniform(-1, 1)
        wn.add_junction(f"J{i}-{j}", base_demand=q_mean * weights[k], demand_pattern="com" if k in commercial else "res", elevation=elev)
    inlet_elev = wn.get_node("J0-0").elevation
    # Inlet main sized for ~4-5 m head loss at mean flow (more at peak): a burst shows as a pressure drop.
    wn.add_reservoir("R", base_head=inlet_elev + sc.inlet_pressure_bar / BAR_PER_M + HEADLOSS_MEAN_M, head_pattern="head")
    wn.add_pipe("inlet", "R", "J0-0", length=1000.0, diameter=diameter, roughness=110.0)
    pid = 0
    for i in range(n):
        for j in range(n):
            for di, dj in ((1, 0), (0, 1)):
                if i + di < n and j + dj < n:
                    d = float(rng.choice([0.1, 0.15, 0.2])) * (sc.mean_inflow / 40.0) ** 0.38
                    wn.add_pipe(f"P{pid}", f"J{i}-{j}", f"J{i + di}-{j + dj}", length=float(rng.uniform(80, 200)), diameter=d, roughness=100.0)
                    pid += 1
    wn.inlet_junction = "J0-0"
    return wn


def _run(wn, workdir: Path, tag: str):
    import wntr

    res = wntr.sim.EpanetSimulator(wn).run_sim(file_prefix=str(workdir / tag))
    return res


# --- simulate -----------------------------------------------------------------------------------


def simulate(sc: Scenario) -> Simulated:
    """Run a scenario: 1-minute readings with sensor noise and faults, and the labels."""
    rng = np.random.default_rng(sc.seed)
    step = sc.hydraulic_step_min
    t0 = sc.t0
    n_min = int(round(sc.days * 1440))
    minutes = np.arange(n_min, dtype=float)
    n_steps = int(math.ceil(n_min / step)) + 1
    step_min = np.arange(n_steps, dtype=float) * step
    step_times = pd.DatetimeIndex([t0 + timedelta(minutes=float(m)) for m in step_min])

    res_p, com_p = _demand_patterns(sc, step_times, rng)
    head_p = 1.0 + 0.004 * np.sin(2 * np.pi * step_min / 1440.0 + rng.uniform(0, 2 * np.pi)) + _ar1(rng, n_steps, 0.002, 0.9)
    wn = build_network(sc, res_p, com_p, head_p)
    wn.options.time.duration = int((n_steps - 1) * step * 60)
    sensor = wn.inlet_junction
    junctions = list(wn.junction_name_list)
    leak_nodes = [lk.node or str(rng.choice([j for j in junctions if j != sensor])) for lk in sc.leaks]
    for node in leak_nodes:
        if node not in junctions:
            raise ValueError(f"leak node {node!r} is not a junction of the network (grid: J<row>-<col>, 0..{sc.grid - 1})")

    with tempfile.TemporaryDirectory(prefix="fw-sim-") as tmp:
        base = _run(wn, Path(tmp), "base")
        b_flow = base.link["flowrate"]["inlet"].to_numpy()[:n_steps] * 3600.0
        b_pres = base.node["pressure"][sensor].to_numpy()[:n_steps] * BAR_PER_M
        mean_inflow = float(b_flow.mean())

        # leak flows at 1-minute resolution (m³/h) and at the hydraulic steps
        leak_min = np.zeros(n_min)
        leak_step = np.zeros(n_steps)
        per_leak_step = []
        per_leak_min = []
        for lk, node in zip(sc.leaks, leak_nodes, strict=True):
            p0 = np.clip(base.node["pressure"][node].to_numpy()[:n_steps], 0.0, None)
            shape = np.sqrt(p0) / max(np.sqrt(p0).mean(), 1e-9)
            full_step = lk.size_pct / 100.0 * mean_inflow * shape
            full_min = np.interp(minutes, step_min, full_step)
            g_min, g_step = _growth(lk, minutes), _growth(lk, step_min)
            leak_min += g_min * full_min
            per_leak_min.append(g_min * full_min)
            q_step = g_step * full_step
            leak_step += q_step
            per_leak_step.append((node, q_step))

        if sc.leaks:
            for idx, (node, q_step) in enumerate(per_leak_step):
                name = f"leak{idx}"
                peak = max(float(q_step.max()), 1e-12)
                wn.add_pattern(name, list(q_step / peak))
                wn.get_node(node).add_demand(peak / 3600.0, name, category=name)
            leaky = _run(wn, Path(tmp), "leaks")
            a_flow = leaky.link["flowrate"]["inlet"].to_numpy()[:n_steps] * 3600.0
            a_pres = leaky.node["pressure"][sensor].to_numpy()[:n_steps] * BAR_PER_M
            r_flow = _response(a_flow - b_flow, leak_step)
            r_pres = _response(a_pres - b_pres, leak_step)
        else:
            r_flow = r_pres = np.zeros(n_steps)

    flow = np.interp(minutes, step_min, b_flow) + np.interp(minutes, step_min, r_flow) * leak_min
    pres = np.interp(minutes, step_min, b_pres) + np.interp(minutes, step_min, r_pres) * leak_min
    # within-step demand fluctuation (the hydraulic step is smoother than real flow), then meter noise
    wiggle = _ar1(rng, n_min, sc.minute_noise, 0.9)
    flow = flow * (1.0 + wiggle)
    # the inlet main's head loss follows the flow: pressure moves against it (h ~ Q^1.852)
    pres = pres - 1.852 * HEADLOSS_MEAN_M * BAR_PER_M * (flow / mean_inflow) ** 1.852 * wiggle
    flow = flow + rng.normal(0.0, sc.flow_noise, n_min)
    pres = pres + rng.normal(0.0, sc.pressure_noise, n_min)
    flow = np.round(np.clip(flow, 0.0, None), 3)
    pres = np.round(np.clip(pres, 0.0, None), 4)

    ts = pd.DatetimeIndex([t0], tz=UTC).repeat(n_min) + pd.to_timedelta(minutes, unit="min")
    keep = np.ones(n_min, dtype=bool)
    labels = []
    end_all = t0 + timedelta(minutes=n_min - 1)
    r_min = np.interp(minutes, step_min, r_flow)  # the inlet's response per m³/h of leak
    for lk, q_min in zip(sc.leaks, per_leak_min, strict=True):
        m0, m1 = _leak_minutes(lk)
        s = t0 + timedelta(minutes=m0)
        e = min(t0 + timedelta(minutes=m1 - 1), end_all) if math.isfinite(m1) else end_all
        i0 = int(m0)
        i1 = min(int(m1) if math.isfinite(m1) else n_min, n_min, i0 + 60 if lk.kind == "burst" else n_min)
        seen = float(np.mean(r_min[i0:i1] * q_min[i0:i1])) / mean_inflow * 100 if i1 > i0 and mean_inflow > 0 else math.nan
        labels.append((s, e, lk.kind, lk.size_pct, round(seen, 2)))
    for f in sc.faults:
        i0 = int(round(f.start_day * 1440))
        i1 = min(i0 + int(round(f.minutes)), n_min)
        cols = [flow, pres] if f.signal == "both" else [flow if f.signal == "flow_rate" else pres]
        if f.kind == "flatline":
            for c in cols:
                c[i0:i1] = c[i0]
        elif f.kind == "spike":
            n_spikes = max(1, int(f.minutes // 20))
            at = np.sort(rng.choice(np.arange(i0, i1), size=min(n_spikes, i1 - i0), replace=False))
            for c in cols:
                scale = float(np.median(c[max(0, i0 - 60):i0 + 1]))
                c[at] = np.round(c[at] + scale * rng.choice([-1, 1], len(at)) * rng.uniform(0.6, 1.2, len(at)), 4)
                c[at] = np.clip(c[at], 0.0, None)
            i0, i1 = int(at[0]), int(at[-1]) + 1
        elif f.kind == "gap":
            keep[i0:i1] = False
        labels.append((ts[i0], ts[i1 - 1] if i1 > i0 else ts[i0], "sensor_fault", math.nan, math.nan))

    readings = pd.DataFrame({"timestamp": ts[keep], "flow_rate": flow[keep], "pressure": pres[keep]})
    lab = pd.DataFrame(labels, columns=[*LABEL_COLUMNS, INFLOW_COLUMN])
    if len(lab):
        lab["start"] = pd.to_datetime(lab["start"], utc=True)
        lab["end"] = pd.to_datetime(lab["end"], utc=True)
        lab = lab.sort_values("start", kind="stable").reset_index(drop=True)
    info = {
        "name": sc.name, "seed": sc.seed, "days": sc.days, "mean_inflow_m3h": round(mean_inflow, 3),
        "mean_pressure_bar": round(float(b_pres.mean()), 4), "leak_nodes": leak_nodes, "junctions": len(junctions),
        "hydraulic_step_min": step,
    }
    return Simulated(readings, lab, info)


def _growth(lk: Leak, minutes: np.ndarray) -> np.ndarray:
    start, end = _leak_minutes(lk)
    if lk.kind == "burst":
        g = (minutes >= start).astype(float)
    else:
        g = np.clip((minutes - start) / (lk.growth_days * 1440.0), 0.0, 1.0)
        g[minutes < start] = 0.0
    g[minutes >= end] = 0.0
    return g


def _leak_minutes(lk: Leak) -> tuple[float, float]:
    """Start and repair minute of a leak, on whole minutes (labels and hydraulics agree)."""
    start = float(round(lk.start_day * 1440.0))
    end = start + float(round(lk.duration_days * 1440.0)) if lk.duration_days is not None else math.inf
    return start, end


def _response(delta: np.ndarray, leak: np.ndarray) -> np.ndarray:
    """Network response per m³/h of leak at each hydraulic step; carried over steps without leak."""
    r = np.full(len(leak), np.nan)
    on = leak > 1e-6
    r[on] = delta[on] / leak[on]
    if not on.any():
        return np.zeros(len(leak))
    return pd.Series(r).ffill().bfill().to_numpy()


# --- files --------------------------------------------------------------------------------------


def _iso(ts: pd.Series | pd.DatetimeIndex) -> pd.Series:
    return pd.Series(pd.DatetimeIndex(ts).tz_convert(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))


def write(sim: Simulated, out_dir: Path) -> tuple[Path, Path]:
    """Write ``readings.csv`` and ``labels.csv`` into ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    r = sim.readings
    readings = pd.DataFrame({"timestamp": _iso(r["timestamp"]).to_numpy(), "flow_rate": r["flow_rate"].to_numpy(), "pressure": r["pressure"].to_numpy()})
    rp, lp = out_dir / "readings.csv", out_dir / "labels.csv"
    readings.to_csv(rp, index=False, lineterminator="\n")
    lab = sim.labels
    labels = pd.DataFrame({
        "start": _iso(lab["start"]).to_numpy() if len(lab) else [],
        "end": _iso(lab["end"]).to_numpy() if len(lab) else [],
        "kind": lab["kind"].to_numpy(),
        "size_pct": [("" if pd.isna(x) else f"{x:g}") for x in lab["size_pct"]],
    })
    if INFLOW_COLUMN in lab:
        labels[INFLOW_COLUMN] = [("" if pd.isna(x) else f"{x:g}") for x in lab[INFLOW_COLUMN]]
    labels.to_csv(lp, index=False, lineterminator="\n")
    return rp, lp


def read_labels(path: Path) -> pd.DataFrame:
    """Read ``labels.csv`` (start,end,kind,size_pct[,inflow_pct]); raises ValueError naming the problem."""
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise ValueError(f"cannot read labels {path}: {exc}") from exc
    df.columns = [c.strip().lower() for c in df.columns]
    missing = [c for c in LABEL_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"{path}: missing column(s) {', '.join(missing)}; the header must be {','.join(LABEL_COLUMNS)}")
    out = pd.DataFrame({
        "start": pd.to_datetime(df["start"], utc=True, format="ISO8601"),
        "end": pd.to_datetime(df["end"], utc=True, format="ISO8601"),
        "kind": df["kind"].str.strip(),
        "size_pct": pd.to_numeric(df["size_pct"].replace("", np.nan), errors="raise"),
    })
    if INFLOW_COLUMN in df:  # optional (flowwatch simulate writes it)
        out[INFLOW_COLUMN] = pd.to_numeric(df[INFLOW_COLUMN].replace("", np.nan), errors="raise")
    if (out["end"] < out["start"]).any():
        raise ValueError(f"{path}: a label ends before it starts")
    return out


def with_overrides(sc: Scenario, **kw: Any) -> Scenario:
    return replace(sc, **kw)
