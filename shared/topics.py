"""Every MQTT topic string of flowwatch is built here, and nowhere else.

Layout (``{prefix}`` defaults to ``flowwatch/v1``)::

    {prefix}/{site}/{meter}/reading
    {prefix}/{site}/{meter}/anomaly
    {prefix}/{site}/{meter}/forecast
    {prefix}/{site}/{meter}/thresholds/{signal}   (retained; one per signal)
    {prefix}/{site}/{meter}/model/{signal}        (retained; one per signal)
    {prefix}/{site}/{meter}/command
    {prefix}/{site}/{meter}/stored            (the detector's receipt to the collector)
    {prefix}/{site}/{meter}/export/alert      (retained)
    {prefix}/{site}/{meter}/export/server     (retained)
    {prefix}/{site}/{meter}/export/forecast   (retained)
    {prefix}/service/{name}/status            (retained, last will "offline")
    {prefix}/deadletter/{service}
    {prefix}/notifier/command             (acknowledgements and silences: AlertAction)
    {prefix}/notifier/state               (retained: the acknowledgements and silences in force)
"""

from __future__ import annotations

import re
from dataclasses import dataclass

DEFAULT_PREFIX = "flowwatch/v1"

SIGNAL_KINDS = ("thresholds", "model")  # retained per signal: one level more
SIGNALS = ("flow_rate", "pressure")
METER_KINDS = (
    "reading",
    "anomaly",
    "forecast",
    *(f"{k}/{s}" for k in SIGNAL_KINDS for s in SIGNALS),
    "command",
    "stored",
    "export/alert",
    "export/server",
    "export/forecast",
)

# One topic level flowwatch builds (a site or meter id, a service name, a prefix part): the one
# definition. shared.messages.Ident (payloads) and the site / meter settings are built from it, so an
# id that passes `config check` is one every message and topic accepts.
LEVEL_PATTERN = r"^[A-Za-z0-9_.-]+$"
LEVEL_MAX_LENGTH = 64
_LEVEL = re.compile(LEVEL_PATTERN)


class TopicError(ValueError):
    pass


def _level(name: str, value: str) -> str:
    if not isinstance(value, str) or not _LEVEL.fullmatch(value) or len(value) > LEVEL_MAX_LENGTH:  # fullmatch: "$" passes a trailing "\n"
        raise TopicError(
            f"{name}={value!r} is not a valid topic level: 1 to {LEVEL_MAX_LENGTH} letters, digits, '_', '.', '-' "
            "(no '/', '+', '#' or spaces)"
        )
    return value


def check_publish_topic(topic: str) -> str:
    """Refuse wildcards and empty levels in a topic we publish to."""
    if not topic or "+" in topic or "#" in topic or "\x00" in topic:
        raise TopicError(f"cannot publish to {topic!r}: wildcards and NUL are not allowed in publish topics")
    if any(part == "" for part in topic.split("/")):
        raise TopicError(f"cannot publish to {topic!r}: empty topic level")
    return topic


@dataclass(frozen=True)
class Topics:
    """Topic builder bound to a prefix (``flowwatch/v1`` unless configured)."""

    prefix: str = DEFAULT_PREFIX

    def __post_init__(self) -> None:
        for part in self.prefix.split("/"):
            _level("topic prefix", part)

    def meter(self, site: str, meter: str, kind: str) -> str:
        if kind not in METER_KINDS:
            raise TopicError(f"unknown topic kind {kind!r}; known: {', '.join(METER_KINDS)}")
        return f"{self.prefix}/{_level('site', site)}/{_level('meter', meter)}/{kind}"

    def reading(self, site: str, meter: str) -> str:
        return self.meter(site, meter, "reading")

    def anomaly(self, site: str, meter: str) -> str:
        return self.meter(site, meter, "anomaly")

    def forecast(self, site: str, meter: str) -> str:
        return self.meter(site, meter, "forecast")

    def thresholds(self, site: str, meter: str, signal: str) -> str:
        return self.meter(site, meter, f"thresholds/{signal}")

    def model(self, site: str, meter: str, signal: str) -> str:
        return self.meter(site, meter, f"model/{signal}")

    def command(self, site: str, meter: str) -> str:
        return self.meter(site, meter, "command")

    def stored(self, site: str, meter: str) -> str:
        return self.meter(site, meter, "stored")

    def export(self, site: str, meter: str, file: str) -> str:
        return self.meter(site, meter, f"export/{file}")

    def status(self, service: str) -> str:
        return f"{self.prefix}/service/{_level('service', service)}/status"

    def deadletter(self, service: str) -> str:
        return f"{self.prefix}/deadletter/{_level('service', service)}"

    def notifier_command(self) -> str:
        return f"{self.prefix}/notifier/command"

    def notifier_state(self) -> str:
        return f"{self.prefix}/notifier/state"

    # --- subscription filters (wildcards allowed here only) ---
    def all_meters(self, kind: str) -> str:
        """Filter for one kind across every site and meter, e.g. ``flowwatch/v1/+/+/reading``
        (``thresholds`` and ``model`` cover both signals: ``.../model/+``)."""
        if kind in SIGNAL_KINDS:
            return f"{self.prefix}/+/+/{kind}/+"
        if kind not in METER_KINDS:
            raise TopicError(f"unknown topic kind {kind!r}")
        return f"{self.prefix}/+/+/{kind}"

    def signal_filter(self, site: str, meter: str, kind: str) -> str:
        """``thresholds`` or ``model`` of one meter, both signals: ``.../{site}/{meter}/model/+``."""
        if kind not in SIGNAL_KINDS:
            raise TopicError(f"{kind!r} has no signal level; one of {', '.join(SIGNAL_KINDS)}")
        return f"{self.prefix}/{_level('site', site)}/{_level('meter', meter)}/{kind}/+"

    def all_status(self) -> str:
        return f"{self.prefix}/service/+/status"

    def all_deadletter(self) -> str:
        return f"{self.prefix}/deadletter/#"

    def parse_meter(self, topic: str) -> tuple[str, str, str] | None:
        """``(site, meter, kind)`` of a meter topic, or None if it is not one."""
        if not topic.startswith(self.prefix + "/"):
            return None
        rest = topic[len(self.prefix) + 1 :].split("/")
        if len(rest) < 3 or rest[0] in ("service", "deadletter"):
            return None
        kind = "/".join(rest[2:])
        if kind not in METER_KINDS:
            return None
        return rest[0], rest[1], kind
