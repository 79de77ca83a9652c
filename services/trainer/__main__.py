"""``flowwatch trainer``: retrains the forecasting models in event time and on command."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from services.trainer.service import TrainerService
from shared.runner import run_service


def main(argv: Sequence[str] | None = None) -> int:
    return run_service(TrainerService, argv, "Run the trainer service (first, periodic and on-demand training).")


if __name__ == "__main__":
    sys.exit(main())
