"""Storage: one ``Store`` interface, two adapters (SQLite, InfluxDB v1 HTTP API)."""

from __future__ import annotations

from shared.settings import Settings
from shared.store.base import NightFlow, ReadingConflict, Store, StoreError, StoreUnavailable, WriteResult


def open_store(settings: Settings) -> Store:
    """The store the settings choose (``store.backend``)."""
    if settings.store.backend == "influxdb":
        from shared.store.influx import InfluxStore

        return InfluxStore(settings.store.influxdb, retention_days=settings.store.retention_days)
    from shared.store.sqlite import SqliteStore

    return SqliteStore(settings.path(settings.store.sqlite.path), settings.store.sqlite)


__all__ = ["NightFlow", "ReadingConflict", "Store", "StoreError", "StoreUnavailable", "WriteResult", "open_store"]
