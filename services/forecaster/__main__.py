"""``flowwatch forecaster``: the hourly forecast service (LiteRT; no TensorFlow)."""

from __future__ import annotations

from collections.abc import Sequence

from shared.cli import base_parser, settings_from_args


def main(argv: Sequence[str] | None = None) -> int:
    p = base_parser("forecaster", "Run the forecaster service (next hour of flow and pressure, every hour).")
    args = p.parse_args(argv)
    settings = settings_from_args(args)
    from services.forecaster.service import ForecasterService
    from shared.service import setup_logging

    setup_logging(settings.log_level)
    svc = ForecasterService(settings)
    svc.install_signal_handlers()
    svc.start()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
