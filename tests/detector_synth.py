"""A small synthetic meter for the detector tests: a daily flow pattern with noise, pressure that
falls a little as flow rises, and helpers to inject events. Deterministic (seeded)."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd

from shared.messages import Reading

T0 = datetime(2026, 3, 2, 0, 0, tzinfo=UTC)  # a Monday, 09:00 in Seoul (a public holiday there: the substitute for March 1st)


def frame(start: datetime = T0, minutes: int = 600, seed: int = 1, base: float = 50.0, night_min: float | None = None) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    idx = pd.date_range(start, periods=minutes, freq="1min", tz="UTC", name="ts")
    hour = (idx.tz_convert("Asia/Seoul").hour + idx.minute / 60).to_numpy()
    flow = base + 0.4 * base * np.sin(2 * math.pi * (hour - 9) / 24) + rng.normal(0, 0.5, minutes)
    if night_min is not None:  # flat low flow 01:00-05:00 local
        night = (hour >= 1) & (hour < 5)
        flow[night] = night_min + np.abs(rng.normal(0, 0.2, night.sum()))
    pres = 4.0 - 0.004 * flow + rng.normal(0, 0.01, minutes)
    return pd.DataFrame({"flow_rate": flow, "pressure": pres}, index=idx)


def readings(df: pd.DataFrame, site: str = "s1", meter: str = "m1") -> list[Reading]:
    out = []
    for i, (ts, f, p) in enumerate(zip(df.index, df["flow_rate"], df["pressure"], strict=True)):
        out.append(Reading(site=site, meter=meter, ts=ts.to_pydatetime(), seq=i,
                           flow_rate=None if np.isnan(f) else float(f), pressure=None if np.isnan(p) else float(p)))
    return out


def at(df: pd.DataFrame, minute: int) -> datetime:
    return df.index[minute].to_pydatetime()


def minutes(n: float) -> timedelta:
    return timedelta(minutes=n)
