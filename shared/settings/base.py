"""What every settings section shares: strict models, the environment prefix, secret handling."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, SecretStr

ENV_PREFIX = "FLOWWATCH_"
PLACEHOLDER_SECRETS = {"", "changeme", "change-me", "password", "secret", "admin", "flowwatch", "token"}


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def check_secret(value: SecretStr | None, name: str) -> SecretStr | None:
    if value is not None and value.get_secret_value().strip().lower() in PLACEHOLDER_SECRETS:
        raise ValueError(
            f"{name} is a placeholder; leave it unset so flowwatch generates one on first start, "
            "or set a real secret"
        )
    return value


def read_secret(value: SecretStr | None, file: Path | None) -> str | None:
    """A secret given directly, or read from a file (Docker secrets), or None."""
    if value is not None:
        return value.get_secret_value()
    if file is not None:
        try:
            return file.read_text().strip()
        except OSError as exc:
            raise RuntimeError(f"cannot read secret file {file}: {exc}") from exc
    return None
