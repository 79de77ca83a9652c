"""How a service process starts: command line -> settings -> logging -> service -> exit code.

Each ``services/*/__main__.py`` is one call to :func:`run_service`. The commands of the application
layer (``app/``) build their parsers with :func:`base_parser` too, so ``--config`` and ``--data-dir``
mean the same in every command. Part of the kernel: imports nothing from ``services/`` or ``app/``.
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

if TYPE_CHECKING:
    from shared.service import Service
    from shared.settings import Settings

logger = logging.getLogger(__name__)


def base_parser(prog: str, description: str) -> argparse.ArgumentParser:
    """A parser with the options every command shares (``--config``, ``--data-dir``)."""
    p = argparse.ArgumentParser(prog=f"flowwatch {prog}", description=description)
    p.add_argument(
        "-c", "--config", metavar="FILE", default=None,
        help="YAML config file (default: $FLOWWATCH_CONFIG, else built-in defaults); FLOWWATCH_* variables override it",
    )
    p.add_argument(
        "--data-dir", metavar="DIR", type=Path, default=None,
        help="data folder: store, spool, models, exports, secrets, logs (default: data_dir of the config, ./var)",
    )
    return p


def add_naive_tz(p: argparse.ArgumentParser) -> None:
    """``--naive-tz ZONE``: the zone of a readings file's timestamps that carry no UTC offset (None:
    not given, read as UTC; :func:`naive_tz_or_note` says so when the file has such timestamps)."""
    p.add_argument("--naive-tz", type=_zone, default=None, metavar="ZONE",
                   help="zone of timestamps that carry no UTC offset, e.g. Asia/Seoul for a logger's local time (default UTC)")


def _zone(text: str) -> str:
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        ZoneInfo(text)
    except (ZoneInfoNotFoundError, ValueError):
        raise argparse.ArgumentTypeError(f"{text!r} is not a time zone; use an IANA name such as 'Asia/Seoul' or 'UTC'") from None
    return text


def naive_tz_or_note(prog: str, naive_tz: str | None, paths: Sequence[Path], timezone: str) -> str:
    """The zone to read offset-less timestamps in: ``naive_tz``, else UTC, and then a note on stderr
    for each file whose timestamps carry no offset (local wall time read as UTC would move every
    night window and hour of day), naming the option and the configured ``timezone``."""
    if naive_tz is not None:
        return naive_tz
    from shared.readings_csv_rows import naive_timestamps

    for path in paths:
        if naive_timestamps(path):
            print(f"flowwatch {prog}: {path}: timestamps without a UTC offset are read as UTC; if they are the meter's "
                  f"local time, pass --naive-tz {timezone} (the configured timezone) or the zone they were logged in",
                  file=sys.stderr)
    return "UTC"


_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([mhdw])$")


def parse_duration(text: str, option: str = "--since") -> timedelta:
    """A span given on the command line: ``90m``, ``24h``, ``1.5d``, ``2w``; the error names ``option``."""
    m = _DURATION.match(text.strip())
    if not m:
        raise ValueError(f"{option} {text!r}: use a number and a unit m, h, d or w (e.g. 30m, 2h, 1d)")
    n, unit = float(m.group(1)), m.group(2)
    return timedelta(**{{"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}[unit]: n})


def settings_from_args(args: argparse.Namespace, **overrides: object) -> Settings:
    """Settings for a command parsed by ``base_parser``: its ``--config`` and ``--data-dir``."""
    if getattr(args, "data_dir", None) is not None:
        overrides.setdefault("data_dir", args.data_dir)
    return settings_or_exit(args.config, **overrides)


def settings_or_exit(path: str | None, **overrides: object) -> Settings:
    """Load settings; on error print each problem as a key path and exit 2."""
    from shared.settings import ConfigFileError, load_settings

    try:
        return load_settings(path, **overrides)
    except (ConfigFileError, ValueError) as exc:
        _exit_invalid(path, exc)


def _exit_invalid(path: str | None, exc: Exception) -> NoReturn:
    from shared.settings import format_errors

    print(f"flowwatch: invalid configuration{f' in {path}' if path else ''}:", file=sys.stderr)
    for line in format_errors(exc):
        print(f"  {line}", file=sys.stderr)
    raise SystemExit(2) from None


def run_service(
    service_cls: type[Service],
    argv: Sequence[str] | None,
    description: str,
    *,
    options: Callable[[argparse.ArgumentParser], None] | None = None,
    overrides: Callable[[argparse.Namespace], dict[str, Any]] | None = None,
    hints: Mapping[type[Exception], str] | None = None,
) -> int:
    """Run one service in this process until it stops; returns the process exit code.

    ``options(parser)`` adds a service's own flags to ``base_parser``; ``overrides(args)`` turns
    them into settings overrides (it may raise ``ConfigFileError``). ``hints`` map more exceptions
    that stop the service to what its log line says, e.g. ``{OSError: "cannot write its files"}``;
    a ``StoreError`` always stops it with "cannot use the store (check the store.* settings)".

    Exit codes: 0 stopped (signal or end of its source), 1 failed (store, ``hints``), 2 bad command
    line or configuration.
    """
    from shared.service import setup_logging
    from shared.settings import ConfigFileError
    from shared.store import StoreError

    name = service_cls.name
    p = base_parser(name, description)
    if options:
        options(p)
    args = p.parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        extra = overrides(args) if overrides else {}
    except ConfigFileError as exc:
        _exit_invalid(args.config, exc)
    settings = settings_from_args(args, **extra)
    setup_logging(settings.log_level)
    fatal: dict[type[Exception], str] = {StoreError: "cannot use the store (check the store.* settings)", **(hints or {})}
    service = service_cls(settings)
    service.install_signal_handlers()
    try:
        service.start()
    except tuple(fatal) as exc:
        what = next(text for kind, text in fatal.items() if isinstance(exc, kind))
        logger.error("%s %s: %s", name, what, exc)
        return 1
    return 0
