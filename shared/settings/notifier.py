"""``notifier``: who hears about an alert, by which channel, and when (docs/operating.md, "Alert routing").

Secrets never live here: an SMTP password comes from ``password_file``, apprise URLs (which carry
their tokens) from ``urls_file``, a webhook's bearer token from ``token_file``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, model_validator

from shared.messages import Severity
from shared.settings.base import Section

_HHMM = re.compile(r"^([01]\d|2[0-3]):[0-5]\d$")


class EmailChannel(Section):
    type: Literal["email"] = Field(description="E-mail through an SMTP server (STARTTLS unless starttls: false).")
    host: str = Field(min_length=1, description="SMTP server host.")
    port: int = Field(default=587, ge=1, le=65535, description="SMTP port (587: submission with STARTTLS).")
    starttls: bool = Field(default=True, description="Upgrade the connection with STARTTLS before logging in (refused if the server cannot).")
    ca_file: Path | None = Field(default=None, description="CA certificate the server's STARTTLS certificate is checked against; system CAs when unset.")
    username: str | None = Field(default=None, description="SMTP login; none: send without logging in.")
    password_file: Path | None = Field(default=None, description="File holding the SMTP password (never in this file).")
    sender: str = Field(min_length=3, description="From address.")
    to: list[str] = Field(min_length=1, description="Recipient addresses.")
    timeout_s: float = Field(default=20.0, gt=0, le=300, description="Connect/send timeout.")

    @model_validator(mode="after")
    def _login(self) -> EmailChannel:
        if self.username and self.password_file is None:
            raise ValueError("an SMTP username needs password_file (the password is never written in the config)")
        return self


class WebhookChannel(Section):
    type: Literal["webhook"] = Field(description="POST the alert as JSON to a URL.")
    url: str = Field(pattern=r"^https?://", description="Receiver URL (http:// or https://).")
    token_file: Path | None = Field(default=None, description="File holding a bearer token sent as 'Authorization: Bearer ...'.")
    timeout_s: float = Field(default=10.0, gt=0, le=300, description="Request timeout.")


class AppriseChannel(Section):
    type: Literal["apprise"] = Field(description="Chat/SMS/push gateways through apprise URLs (e.g. tgram://, msteams://, twilio://).")
    urls_file: Path = Field(description="File with one apprise URL per line (they carry tokens: never in this file).")


Channel = Annotated[EmailChannel | WebhookChannel | AppriseChannel, Field(discriminator="type")]


class RouteSettings(Section):
    """One routing rule: an alert matching every given filter goes to ``channels``. Empty filter: any."""

    channels: list[str] = Field(min_length=1, description="Names of channels (keys of notifier.channels).")
    severities: list[Severity] = Field(default_factory=list, description="Severities matched; empty: all.")
    kinds: list[str] = Field(default_factory=list, description="Anomaly kinds matched (burst, night_flow, silent, ...); empty: all.")
    sites: list[str] = Field(default_factory=list, description="Sites matched; empty: all.")
    meters: list[str] = Field(default_factory=list, description="Meters matched; empty: all.")
    transitions: list[Literal["open", "escalate", "close"]] = Field(
        default_factory=lambda: ["open", "escalate", "close"], description="Transitions sent on this route.")


class QuietHours(Section):
    start: str = Field(default="22:00", description="Local time (HH:MM) quiet hours begin.")
    end: str = Field(default="07:00", description="Local time (HH:MM) they end; held notifications go out then.")
    hold: list[Literal["info", "warning"]] = Field(
        default_factory=lambda: ["info", "warning"], description="Severities held during quiet hours (critical is never held).")

    @model_validator(mode="after")
    def _times(self) -> QuietHours:
        for name in ("start", "end"):
            if not _HHMM.match(getattr(self, name)):
                raise ValueError(f"quiet_hours.{name} must be HH:MM (24 h), e.g. 22:00")
        return self


class NotifierSettings(Section):
    enabled: bool = Field(default=True, description="Run the notifier in `flowwatch up` (it sends nothing until a route names a channel).")
    channels: dict[str, Channel] = Field(default_factory=dict, description="Named channels: email, webhook or apprise.")
    routes: list[RouteSettings] = Field(default_factory=list, description="Routing rules; an alert goes to the union of the channels of every matching route.")
    min_severity: Severity = Field(default="warning", description="Alerts below this severity are never sent.")
    grafana_url: str = Field(default="http://localhost:3000", description="Grafana base URL used for the dashboard link in every message.")
    dashboard_uid: str = Field(default="flowwatch-overview", description="Dashboard the link opens (uid).")
    outbox: Path = Field(default=Path("notifier/outbox.sqlite"), description="The durable outbox (SQLite); relative to data_dir.")
    escalate_after_minutes: float = Field(
        default=30, ge=0, description="An open critical alert not acknowledged after this is sent again as 'escalate'; 0: never.")
    escalate_max: int = Field(
        default=3, ge=0, description="At most this many time-based escalations per alert (an alert whose close never came stops).")
    keep_days: float = Field(default=30, gt=0, description="Sent, dropped and silenced notifications and closed alerts are kept this long in the outbox.")
    retry_min_s: float = Field(default=30.0, gt=0, description="First retry delay of a notification that could not be sent.")
    retry_max_s: float = Field(default=900.0, gt=0, description="Longest retry delay (the delay doubles up to this).")
    give_up_after_hours: float = Field(default=72, gt=0, description="A notification still unsent after this is dropped (counted, logged).")
    flap_window_minutes: float = Field(default=60, gt=0, description="Window of the flapping rate limit.")
    flap_max: int = Field(
        default=4, ge=1, description="Notifications per alert kind and meter and channel in the window; more are summarised in one at its end.")
    quiet_hours: QuietHours | None = Field(default=None, description="Hold info/warning notifications during these local hours (never critical).")
    command_poll_s: float = Field(default=5.0, gt=0, le=300, description="How often acknowledgements and silences are re-read from the store.")

    @model_validator(mode="after")
    def _routes_name_channels(self) -> NotifierSettings:
        for i, r in enumerate(self.routes):
            for c in r.channels:
                if c not in self.channels:
                    known = ", ".join(sorted(self.channels)) or "none configured"
                    raise ValueError(f"routes[{i}].channels: unknown channel {c!r} (notifier.channels: {known})")
        if self.retry_max_s < self.retry_min_s:
            raise ValueError("retry_max_s must be at least retry_min_s")
        return self
