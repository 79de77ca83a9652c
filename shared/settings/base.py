"""What every settings section shares: strict models, the environment prefix, secret handling."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, SecretStr, model_validator
from pydantic_core import PydanticCustomError

ENV_PREFIX = "FLOWWATCH_"
PLACEHOLDER_SECRETS = {"", "changeme", "change-me", "password", "secret", "admin", "flowwatch", "token"}


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    #: Keys that moved to another section (old key -> new key path). Setting one is an error that
    #: names the new key, instead of extra="forbid"'s bare "unknown key".
    moved_keys: ClassVar[dict[str, str]] = {}

    @model_validator(mode="before")
    @classmethod
    def _refuse_moved_keys(cls, data: Any) -> Any:
        if cls.moved_keys and isinstance(data, dict):
            moved = [(old, new) for old, new in cls.moved_keys.items() if old in data]
            if moved:
                raise PydanticCustomError(
                    "moved_key",
                    "{moves}; rename the key (see docs/configuration.md)",
                    {"moves": "; ".join(f"{old} moved to {new} ({env_name(new)} in the environment)" for old, new in moved)},
                )
        return data


def env_name(key: str) -> str:
    """The environment variable of a dotted key: ``models.dir`` -> ``FLOWWATCH_MODELS__DIR``."""
    return ENV_PREFIX + key.upper().replace(".", "__")


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
