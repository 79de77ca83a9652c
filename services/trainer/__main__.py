"""``flowwatch trainer``: retrains the forecasting models in event time and on command."""

from __future__ import annotations

from collections.abc import Sequence

from shared.cli import base_parser, settings_from_args


def main(argv: Sequence[str] | None = None) -> int:
    p = base_parser("trainer", "Run the trainer service (first, periodic and on-demand training).")
    args = p.parse_args(argv)
    settings = settings_from_args(args)
    from services.trainer.service import TrainerService
    from shared.service import setup_logging

    setup_logging(settings.log_level)
    svc = TrainerService(settings)
    svc.install_signal_handlers()
    svc.start()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
