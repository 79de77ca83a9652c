"""``exporter``: the files for the embedded device and the daily archive."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from shared.settings.base import Section


class ExporterSettings(Section):
    out_dir: Path = Field(
        default=Path("exports"),
        description="Folder of alert.txt / server.txt / forecast.txt; relative to data_dir. With several meters configured, "
        "each meter's files are in <out_dir>/<site>/<meter>/.",
    )
    archive_days: int = Field(default=90, ge=1, description="Daily archives older than this are removed.")
    archive: bool = Field(default=True, description="Write the daily archive (previous day's readings, anomalies, forecasts as CSV).")
    archive_dir: Path = Field(
        default=Path("exports/archive"), description="Folder of the date-partitioned daily archive; relative to data_dir."
    )
    archive_lag_minutes: int = Field(
        default=5, ge=0, le=720,
        description="Archive day D once event time reaches D+1 00:00 local plus this, so its last minutes are stored.",
    )
    archive_catchup_days: int = Field(
        default=7, ge=1, le=366,
        description="Days missed (outage, restart, import) archived at most per reading; the rest on the next readings.",
    )
    mirror: bool = Field(default=True, description="Also publish each file's content retained on .../export/alert, .../export/server and .../export/forecast.")
    event_hold_minutes: int = Field(
        default=10, ge=0, le=60,
        description="A one-shot event (spike, gap: emitted already closed) stays in alert.txt this long after it ended, "
        "so a device reading the file once a minute sees it; 0: never shown.",
    )
    backfill_anomaly_days: int = Field(
        default=30, ge=1, description="At start, anomalies that started this many days before the last reading are read back from the store."
    )
