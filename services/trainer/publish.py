"""Turning a training result into the ``model`` message (retained when promoted)."""

from __future__ import annotations

import math

from shared.bus import Bus
from shared.messages import ModelInfo
from shared.modelstore import is_baseline
from shared.settings import Settings


def model_info(settings: Settings, r: dict) -> ModelInfo:
    return ModelInfo(
        site=settings.site, meter=r.get("meter") or settings.meter, signal=r["signal"], version=r["version"],
        created_at=r["created_at"], promoted=r["promoted"], reason=r["reason"][:500],
        metrics={k: float(v) for k, v in r["metrics"].items() if isinstance(v, int | float) and math.isfinite(v)},
    )


def publish_result(bus: Bus, settings: Settings, r: dict):
    """Promoted versions are published retained (the forecaster hot-reloads on them); a version that
    was kept but not promoted is published too, not retained, so it never replaces the served one."""
    info = model_info(settings, r)
    topic = bus.topics.model(info.site, info.meter, info.signal)
    if not info.promoted and is_baseline(r.get("served")):
        # the new version lost to a baseline, which is served now: say so retained (the forecaster
        # swaps to it), after the version's own message
        bus.publish(topic, info, qos=1, retain=False)
        info = info.model_copy(update={"version": r["served"], "promoted": True})
    return bus.publish(topic, info, qos=1, retain=info.promoted)
