"""``meters``: the meters of this box, each with its signals and interval (and, for the collector,
where it is read: see :mod:`shared.settings.collector`).

Every service asks the settings about a meter through :meth:`shared.settings.Settings.meter_spec`
(and its physical ranges through :meth:`~shared.settings.Settings.limits_of`); a meter seen on the
bus but not configured (another box's, a replay's) gets the defaults: both signals at
``collector.interval_s``, the box's ``limits``.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field, field_validator

from shared.messages import SIGNALS, Ident, Signal
from shared.settings.base import Section
from shared.settings.collector import SourceKind

#: The keys of ``limits`` a meter may set for itself (meters[].limits): the physical ranges of its signals.
METER_LIMITS: tuple[str, ...] = ("flow_rate_min", "flow_rate_max", "pressure_min", "pressure_max")


class MeterSettings(Section):
    """One meter of this box."""

    id: Ident = Field(description="Meter id (one MQTT topic level): readings, alerts, models and files are per meter.")
    signals: list[Signal] = Field(
        default_factory=lambda: list(SIGNALS),
        description="The signals this meter has: flow_rate and/or pressure. Rules and models run only for these; "
        "no alert is raised for a signal the meter does not have.",
    )
    interval_s: int | None = Field(
        default=None, ge=1, le=3600,
        description="Seconds between this meter's readings (1 s to 1 h); collector.interval_s when unset.",
    )
    source: SourceKind | None = Field(
        default=None, description="Where this meter is read; collector.source when unset."
    )
    serial: dict[str, Any] | None = Field(
        default=None, description="Keys of collector.serial that differ for this meter (e.g. {port: /dev/ttyUSB1}), merged over it."
    )
    modbus: dict[str, Any] | None = Field(
        default=None,
        description="Keys of collector.modbus that differ for this meter, merged over it: {unit_id: 2} for a second meter "
        "on the same RS485 bus (one port, polled in turn), {host: 10.0.0.7} for another Modbus TCP meter.",
    )
    simulator: dict[str, Any] | None = Field(
        default=None,
        description="Keys of collector.simulator that differ for this meter (e.g. {seed: 7, mean_flow: 40}); without a "
        "seed, the n-th meter (from 0) of the list gets collector.simulator.seed + n.",
    )
    replay: dict[str, Any] | None = Field(
        default=None, description="Keys of collector.replay that differ for this meter (e.g. {file: inlet.csv})."
    )
    limits: dict[str, float] | None = Field(
        default=None,
        description="Keys of limits that differ for this meter, merged over it: its physical ranges (e.g. {flow_rate_max: 50} "
        "for a small meter, {flow_rate_max: 3000} for a DN300 inlet). Only " + ", ".join(METER_LIMITS) + "; the time windows "
        "and max_meters_per_site are per box.",
    )

    @field_validator("signals")
    @classmethod
    def _signals(cls, v: list[Signal]) -> list[Signal]:
        if not v:
            raise ValueError("a meter needs at least one signal: flow_rate and/or pressure")
        if len(set(v)) != len(v):
            raise ValueError(f"signals are listed twice: {v}")
        return [s for s in SIGNALS if s in v]  # canonical order
