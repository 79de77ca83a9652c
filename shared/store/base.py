"""The ``Store`` interface every service writes through, and the row shapes both adapters share.

Identity of every record (so a redelivered message is stored once, never duplicated):

| what       | identity                                        |
|------------|-------------------------------------------------|
| reading    | (site, meter, ts)                               |
| anomaly    | (site, meter, kind, signal, start)              |
| forecast   | (site, meter, signal, issued_at, target_time)   |
| thresholds | (site, meter, signal, computed_at)              |
| night flow | (site, meter, day)                              |

Readings are never silently replaced: a second reading for a stored (site, meter, ts) with the same
values (flow_rate, pressure, quality; a missing value equals a missing value) changes nothing (a
redelivery); one with other values leaves the stored reading as it is and is kept aside in
``reading_conflicts`` (both values, its source, when it was seen), counted in the returned
:class:`WriteResult` and logged (a warning per meter, then debug). Anomalies, forecasts, thresholds
and night-flow figures are updates of one record (an alert closing): a rewrite replaces it.

Timestamps are stored at one-second resolution, UTC. Range reads return pandas frames with a UTC
``DatetimeIndex``; ``start`` is inclusive and ``end`` exclusive.
"""

from __future__ import annotations

import abc
import hashlib
import json
import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import TYPE_CHECKING

from shared.messages import AlertAction, Anomaly, Forecast, Reading, Thresholds

if TYPE_CHECKING:  # pandas is imported only where a frame is built: services that never ask for
    import numpy as np  # one (collector, detector, exporter) stay small in memory
    import pandas as pd


logger = logging.getLogger(__name__)


class StoreError(RuntimeError):
    """A write or read the store refused (bad data, bad settings). Not retried."""


class StoreUnavailable(StoreError):
    """The store could not be reached for longer than the configured retry time."""


READING_COLUMNS = ["seq", "flow_rate", "pressure", "quality", "source"]
ANOMALY_COLUMNS = ["kind", "signal", "severity", "state", "start", "end", "ts", "value", "threshold", "message"]
FORECAST_COLUMNS = ["signal", "issued_at", "target_time", "value", "model"]


@dataclass(frozen=True)
class NightFlow:
    """Minimum night flow of one local day (m³/h)."""

    site: str
    meter: str
    day: date
    ts: datetime  # start of the night window, UTC
    value: float
    day_mean: float | None = None  # mean flow between the night before and this one (None: too few readings)


@dataclass(frozen=True)
class WriteResult:
    """What a write of readings did; each reading written is counted in exactly one field."""

    inserted: int = 0  # new (site, meter, ts): stored
    identical: int = 0  # the same values as the stored reading (a redelivery): nothing changed
    conflicting: int = 0  # other values than the stored reading: it stays, this one is kept in reading_conflicts

    @property
    def total(self) -> int:
        """Readings handled (none is lost: a conflicting one is kept aside)."""
        return self.inserted + self.identical + self.conflicting

    def __add__(self, other: WriteResult) -> WriteResult:
        if not isinstance(other, WriteResult):
            return NotImplemented
        return WriteResult(self.inserted + other.inserted, self.identical + other.identical, self.conflicting + other.conflicting)

    def __radd__(self, other: int) -> int:
        """``rows += store.write_reading_frame(...)`` in a caller that only counts rows handled."""
        if not isinstance(other, int):
            return NotImplemented
        return other + self.total

    def __int__(self) -> int:
        return self.total


@dataclass(frozen=True)
class ReadingConflict:
    """A reading that arrived for a stored (site, meter, ts) with other values; the stored one was kept."""

    site: str
    meter: str
    ts: datetime
    flow_rate: float | None  # the newcomer's values (kept aside)
    pressure: float | None
    quality: str
    stored_flow_rate: float | None  # the stored reading's values (kept)
    stored_pressure: float | None
    stored_quality: str
    seq: int | None
    source: str
    seen_at: datetime  # wall clock when it arrived (last time, if it arrived again)


def reading_values(flow: object, pressure: object, quality: str | None) -> tuple[float | None, float | None, str]:
    """The values two readings of one (site, meter, ts) are compared on; NaN and None are both None."""
    return _num(flow), _num(pressure), quality or ""


def conflict_variant(values: tuple[float | None, float | None, str]) -> str:
    """A short key of a newcomer's values: one conflict record per distinct set (a redelivery of it overwrites it)."""
    return hashlib.sha1(repr(values).encode(), usedforsecurity=False).hexdigest()[:12]


def epoch(ts: datetime) -> int:
    return int(ts.timestamp())


def from_epoch(s: int | float | None) -> datetime | None:
    if s is None or (isinstance(s, float) and math.isnan(s)):
        return None
    return datetime.fromtimestamp(int(s), UTC)


def _num(x: object) -> float | None:
    if x is None:
        return None
    f = float(x)
    return None if math.isnan(f) else f


def reading_rows(readings: Iterable[Reading]) -> list[tuple]:
    """(site, meter, ts, seq, flow_rate, pressure, quality, source) tuples."""
    return [
        (r.site, r.meter, epoch(r.ts), r.seq, r.flow_rate, r.pressure, ",".join(r.quality), r.source)
        for r in readings
    ]


def anomaly_row(a: Anomaly) -> tuple:
    return (
        a.site, a.meter, a.kind, a.signal, epoch(a.start), a.severity, a.state,
        epoch(a.end) if a.end else None, epoch(a.ts), a.value, a.threshold, a.message,
    )


def forecast_rows(f: Forecast) -> list[tuple]:
    issued = epoch(f.issued_at)
    return [
        (f.site, f.meter, f.signal, issued, issued + 60 * f.step_minutes * (i + 1), float(v), f.model)
        for i, v in enumerate(f.values)
    ]


def thresholds_payload(t: Thresholds) -> str:
    return t.model_dump_json()


def thresholds_from_payload(payload: str) -> Thresholds:
    return Thresholds.model_validate(json.loads(payload))


def utc_index(seconds: Sequence[int] | np.ndarray, name: str = "ts") -> pd.DatetimeIndex:
    import numpy as np
    import pandas as pd

    return pd.DatetimeIndex(pd.to_datetime(np.asarray(seconds, dtype="int64"), unit="s", utc=True), name=name)


def empty_readings() -> pd.DataFrame:
    import pandas as pd

    df = pd.DataFrame({c: pd.Series(dtype="float64") for c in READING_COLUMNS})
    df["seq"] = df["seq"].astype("Int64")
    df["quality"] = df["quality"].astype("object")
    df["source"] = df["source"].astype("object")
    df.index = utc_index([])
    return df


def extra_frame(rows: Iterable[tuple[int, str, float]]) -> pd.DataFrame:
    """A meter's extra values as a frame: UTC index ``ts``, one float column per name (NaN where a
    reading lacks that value), from ``(epoch seconds, name, value)`` rows."""
    import pandas as pd

    rows = list(rows)
    if not rows:
        return pd.DataFrame(index=utc_index([]))
    df = pd.DataFrame(rows, columns=["ts", "name", "value"]).pivot_table(index="ts", columns="name", values="value", aggfunc="last")
    df.columns.name = None
    df.index = utc_index(df.index.to_numpy())
    return df.astype("float64")


def readings_frame(ts: Sequence[int], seq, flow, pressure, quality, source) -> pd.DataFrame:
    import pandas as pd

    if len(ts) == 0:
        return empty_readings()
    df = pd.DataFrame(
        {
            "seq": pd.array(seq, dtype="Int64"),
            "flow_rate": pd.to_numeric(pd.Series(flow, dtype="object"), errors="coerce").astype("float64").to_numpy(),
            "pressure": pd.to_numeric(pd.Series(pressure, dtype="object"), errors="coerce").astype("float64").to_numpy(),
            "quality": [q or "" for q in quality],
            "source": [s or "" for s in source],
        },
        index=utc_index(ts),
    )
    return df.sort_index()


def reading_columns(data) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """(epoch seconds, flow, pressure, quality) columns of a readings frame or of ``Reading``-like
    records (``ts``, ``flow_rate``, ``pressure``, ``quality``); missing values are NaN. The one
    conversion the engines, the forecaster window and ``evaluate`` share."""
    import numpy as np

    if hasattr(data, "index") and hasattr(data, "columns"):  # a pandas frame
        q = data["quality"].tolist() if "quality" in data else [""] * len(data)
        return (data.index.as_unit("s").asi8.astype("float64"),
                data["flow_rate"].to_numpy(dtype="float64", na_value=np.nan),
                data["pressure"].to_numpy(dtype="float64", na_value=np.nan),
                [x or "" for x in q])
    rows = list(data)
    q = [r.quality if isinstance(r.quality, str) else ",".join(r.quality) for r in rows]
    return (np.array([r.ts.timestamp() for r in rows], dtype="float64"),
            np.array([np.nan if r.flow_rate is None else r.flow_rate for r in rows], dtype="float64"),
            np.array([np.nan if r.pressure is None else r.pressure for r in rows], dtype="float64"), q)


def to_reading_frame(df: pd.DataFrame) -> pd.DataFrame:
    """Normalise an import frame: UTC ``ts`` index, float flow_rate / pressure, seq, quality, source."""
    import numpy as np
    import pandas as pd

    out = pd.DataFrame(index=df.index)
    out["seq"] = df["seq"].astype("Int64") if "seq" in df else pd.array(np.arange(len(df)), dtype="Int64")
    out["flow_rate"] = df["flow_rate"].astype("float64")
    out["pressure"] = df["pressure"].astype("float64")
    out["quality"] = df["quality"] if "quality" in df else ""
    out["source"] = df["source"] if "source" in df else "import"
    return out


def reading_frame_columns(df: pd.DataFrame) -> tuple[list[int], list, list[float], list[float], list[str], str | list[str]]:
    """An import frame as the plain lists of :meth:`Store.write_reading_columns`: (epoch seconds, seq,
    flow_rate, pressure, quality, source), NaN where a value is missing (SQLite binds it as NULL);
    seq as ints when it has no gap (an integer binds faster than a float); source one string when
    every row has the same."""
    f = to_reading_frame(df)
    seq = f["seq"]
    seqs = seq.to_numpy(dtype="int64").tolist() if not seq.hasnans else seq.astype("float64").to_numpy().tolist()
    source = f["source"]
    one = source.iat[0] if len(source) else "import"
    src = str(one) if bool((source.to_numpy() == one).all()) else source.tolist()
    return (f.index.as_unit("s").asi8.tolist(), seqs, f["flow_rate"].to_numpy().tolist(), f["pressure"].to_numpy().tolist(),
            f["quality"].tolist(), src)


class Store(abc.ABC):
    """Where readings, anomalies, forecasts, thresholds and night-flow figures live."""

    name: str = "store"
    #: Parse the next import chunk in a thread while this store writes the current one. True where
    #: the write is done mostly by a server in another process (InfluxDB); an in-process engine
    #: (SQLite) would contend with the parser for the GIL instead: 263k vs 314k rows/s measured.
    parse_ahead: bool = False
    #: Wall-clock time since which the adapter has been waiting for its database inside one call (a
    #: SQLite lock held by another program, an InfluxDB that does not answer: it retries before it
    #: raises), until a call works again; None when it works. The service's health check reads it.
    failing_since: float | None = None

    # --- writes (idempotent; a write that returns is durable: the acknowledgement point) ---
    @abc.abstractmethod
    def write_readings(self, readings: Sequence[Reading]) -> WriteResult:
        """Store new readings; a stored one is never replaced (see the module doc)."""

    @abc.abstractmethod
    def write_reading_frame(self, site: str, meter: str, frame: pd.DataFrame) -> WriteResult:
        """Bulk write: ``frame`` has a UTC DatetimeIndex and flow_rate, pressure[, seq, quality, source]."""

    def write_reading_columns(self, site: str, meter: str, ts: Sequence[int], seq: Sequence[int], flow: Sequence[float],
                              pressure: Sequence[float], quality: Sequence[str], source: str) -> WriteResult:
        """Bulk write of plain lists (epoch seconds; NaN where a value is missing), in file order, as
        :meth:`write_reading_frame` writes a frame of them: the small-file import, which loads no pandas."""
        import pandas as pd

        frame = pd.DataFrame({"seq": pd.array(seq, dtype="Int64"), "flow_rate": flow, "pressure": pressure, "quality": quality,
                              "source": source}, index=utc_index(ts))
        return self.write_reading_frame(site, meter, frame)

    @abc.abstractmethod
    def write_anomalies(self, anomalies: Sequence[Anomaly]) -> int: ...

    @abc.abstractmethod
    def write_forecast(self, forecast: Forecast) -> int: ...

    @abc.abstractmethod
    def write_thresholds(self, thresholds: Thresholds) -> None: ...

    @abc.abstractmethod
    def write_night_flow(self, items: Sequence[NightFlow]) -> int: ...

    # --- alerts to people (the notifier, ``flowwatch alerts``): additive, read by Grafana too ---
    @abc.abstractmethod
    def write_alert_actions(self, actions: Sequence[AlertAction]) -> int:
        """Store acknowledgements and silences (identity: the action's id; a rewrite overwrites itself)."""

    @abc.abstractmethod
    def read_alert_actions(self, since: datetime) -> list[AlertAction]:
        """Actions taken at or after ``since`` (whole seconds), oldest first by their full ``ts``."""

    @abc.abstractmethod
    def write_service_status(self, items: Sequence[tuple[str, bool, datetime]]) -> int:
        """(service, online, wall-clock time) points: the "service offline" alert rule reads them."""

    # --- reads: each adapter returns plain rows; frames and models are built here, once ---
    @abc.abstractmethod
    def _reading_rows(self, site: str, meter: str, start: datetime, end: datetime) -> list[tuple]:
        """(ts, seq, flow_rate, pressure, quality, source) ordered by ts; ts in epoch seconds."""

    @abc.abstractmethod
    def _anomaly_rows(self, site: str, meter: str, start: datetime, end: datetime) -> list[tuple]:
        """ANOMALY_COLUMNS tuples (times in epoch seconds) with start in [start, end), by start, kind, signal."""

    @abc.abstractmethod
    def _forecast_rows(self, site: str, meter: str, start: datetime, end: datetime, signal: str | None) -> list[tuple]:
        """FORECAST_COLUMNS tuples (times in epoch seconds) with target in [start, end), by issued_at, signal, target."""

    def read_readings(self, site: str, meter: str, start: datetime, end: datetime) -> pd.DataFrame:
        """Readings with ts in [start, end): UTC index ``ts``; columns READING_COLUMNS."""
        rows = self._reading_rows(site, meter, start, end)
        if not rows:
            return empty_readings()
        return readings_frame(*zip(*rows, strict=True))

    @abc.abstractmethod
    def read_extra(self, site: str, meter: str, start: datetime, end: datetime) -> pd.DataFrame:
        """The extra values (``Reading.extra``) of readings with ts in [start, end): see :func:`extra_frame`."""

    def read_reading_records(self, site: str, meter: str, start: datetime, end: datetime) -> list[Reading]:
        """The same readings as models, without pandas (for services back-filling their windows)."""
        out = []
        for ts, seq, flow, pres, quality, source in self._reading_rows(site, meter, start, end):
            out.append(Reading.model_construct(
                site=site, meter=meter, ts=from_epoch(ts), seq=int(seq) if seq is not None and seq >= 0 else 0,
                flow_rate=_num(flow), pressure=_num(pres), quality=tuple(q for q in (quality or "").split(",") if q),
                source=source or "", schema_version=1,
            ))
        return out

    def read_reading_columns(self, site: str, meter: str, start: datetime, end: datetime) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(epoch seconds, flow, pressure) numpy columns of the readings in [start, end), NaN where missing:
        no model or frame per reading (a recalibration reads weeks of them)."""
        import numpy as np

        rows = self._reading_rows(site, meter, start, end)
        if not rows:
            return np.asarray([], dtype="float64"), np.asarray([], dtype="float64"), np.asarray([], dtype="float64")
        ts, _, flow, pres, _, _ = zip(*rows, strict=True)
        return np.array(ts, dtype="float64"), np.array(flow, dtype="float64"), np.array(pres, dtype="float64")

    def read_anomalies(self, site: str, meter: str, start: datetime, end: datetime) -> pd.DataFrame:
        """Anomalies whose start is in [start, end); columns ANOMALY_COLUMNS (times as UTC datetimes)."""
        import pandas as pd

        df = pd.DataFrame(self._anomaly_rows(site, meter, start, end), columns=ANOMALY_COLUMNS)
        df["message"] = df["message"].fillna("")
        for c in ("start", "end", "ts"):
            df[c] = pd.to_datetime(df[c], unit="s", utc=True)
        return df

    def read_anomaly_records(self, site: str, meter: str, start: datetime, end: datetime) -> list[Anomaly]:
        """The same anomalies as models, without pandas."""
        return [
            Anomaly.model_construct(
                site=site, meter=meter, kind=k, signal=sig, severity=sev, state=state, start=from_epoch(st),
                end=from_epoch(en), ts=from_epoch(ts), value=_num(v), threshold=_num(th), message=msg or "", schema_version=1,
            )
            for k, sig, sev, state, st, en, ts, v, th, msg in self._anomaly_rows(site, meter, start, end)
        ]

    def read_forecasts(self, site: str, meter: str, start: datetime, end: datetime, signal: str | None = None) -> pd.DataFrame:
        """Forecast points whose target_time is in [start, end); columns FORECAST_COLUMNS."""
        import pandas as pd

        df = pd.DataFrame(self._forecast_rows(site, meter, start, end, signal), columns=FORECAST_COLUMNS)
        for c in ("issued_at", "target_time"):
            df[c] = pd.to_datetime(df[c], unit="s", utc=True)
        return df

    def read_forecast_points(self, site: str, meter: str, start: datetime, end: datetime, signal: str | None = None) -> list[tuple]:
        """(signal, issued_at, target_time, value, model) tuples with UTC datetimes, without pandas."""
        return [(sig, from_epoch(i), from_epoch(t), float(v), m) for sig, i, t, v, m in self._forecast_rows(site, meter, start, end, signal)]

    @abc.abstractmethod
    def latest_thresholds(self, site: str, meter: str, signal: str) -> Thresholds | None: ...

    @abc.abstractmethod
    def read_night_flow(self, site: str, meter: str, start: date, end: date) -> list[NightFlow]: ...

    @abc.abstractmethod
    def last_reading_time(self, site: str, meter: str) -> datetime | None: ...

    @abc.abstractmethod
    def first_reading_time(self) -> datetime | None:
        """The oldest reading of any meter."""

    @abc.abstractmethod
    def meters(self) -> list[tuple[str, str]]:
        """Every (site, meter) with readings."""

    @abc.abstractmethod
    def read_conflicts(self, site: str, meter: str, start: datetime, end: datetime) -> list[ReadingConflict]:
        """Readings kept aside with ts in [start, end), by ts then seen_at."""

    # --- housekeeping ---
    @abc.abstractmethod
    def purge(self, before: datetime) -> int:
        """Remove everything older than ``before`` (retention); the number of records removed where known."""

    _conflicts_logged: set[tuple[str, str]] | None = None

    def _log_conflicts(self, conflicts: Sequence[ReadingConflict]) -> None:
        """One warning per meter (the first conflict), then debug lines."""
        if self._conflicts_logged is None:
            self._conflicts_logged = set()
        for c in conflicts:
            key = (c.site, c.meter)
            level = logging.DEBUG if key in self._conflicts_logged else logging.WARNING
            self._conflicts_logged.add(key)
            logger.log(
                level,
                "reading of %s/%s at %s differs from the stored one (flow_rate %s vs stored %s, pressure %s vs %s, "
                "quality %r vs %r, source %r): the stored reading is kept, the new one is recorded in reading_conflicts%s",
                c.site, c.meter, c.ts.isoformat(), c.flow_rate, c.stored_flow_rate, c.pressure, c.stored_pressure,
                c.quality, c.stored_quality, c.source,
                "; further conflicts of this meter are logged at debug level" if level == logging.WARNING else "",
            )

    def close(self) -> None:  # noqa: B027 - optional
        pass

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
