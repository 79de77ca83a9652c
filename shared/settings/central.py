"""``central``: the bridge from this box's broker to the central broker (off by default)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr, field_validator, model_validator

from shared.settings.base import Section, check_secret, read_secret
from shared.topics import METER_KINDS

# What a box sends to the central tier by default: its data, not its internal receipts or commands.
DEFAULT_KINDS = ["reading", "anomaly", "forecast", "thresholds/+"]


class CentralSettings(Section):
    enabled: bool = Field(default=False, description="Bridge this box's topics to the central broker.")
    host: str | None = Field(default=None, description="Central broker host name (must be in its certificate).")
    port: int = Field(default=8883, ge=1, le=65535, description="Central broker TLS port.")
    ca_file: Path | None = Field(
        default=None, description="CA certificate of the central broker (ca.crt from `flowwatch central init`)."
    )
    username: str | None = Field(
        default=None, description="This site's user on the central broker; the site id when unset (it may publish only under it)."
    )
    password: SecretStr | None = Field(default=None, description="This site's central password (prefer password_file).")
    password_file: Path | None = Field(
        default=None, description="File holding this site's central password (sites/<site>.password from `flowwatch central init`)."
    )
    kinds: list[str] = Field(
        default_factory=lambda: list(DEFAULT_KINDS),
        description="Per-meter topic kinds sent to the central broker (under flowwatch/v1/<site>/<meter>/); "
        "the bridge sends, never receives.",
    )

    _v_pw = field_validator("password")(lambda cls, v: check_secret(v, "central.password"))

    @field_validator("kinds")
    @classmethod
    def _known_kinds(cls, v: list[str]) -> list[str]:
        known = {"thresholds/+", "model/+", "export/#", *METER_KINDS}
        bad = [k for k in v if k not in known]
        if bad:
            raise ValueError(f"unknown topic kind {bad[0]!r}; known: {', '.join(sorted(known))}")
        return v

    @model_validator(mode="after")
    def _complete(self) -> CentralSettings:
        if self.enabled:
            missing = [k for k in ("host", "ca_file") if getattr(self, k) is None]
            if self.password is None and self.password_file is None:
                missing.append("password_file")
            if missing:
                raise ValueError(f"central.enabled needs {', '.join('central.' + m for m in missing)} "
                                 "(from `flowwatch central init` on the central server)")
        return self

    def secret(self) -> str | None:
        return read_secret(self.password, self.password_file)
