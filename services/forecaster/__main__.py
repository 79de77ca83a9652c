"""``flowwatch forecaster``: the hourly forecast service (LiteRT; no TensorFlow)."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from services.forecaster.service import ForecasterService
from shared.runner import run_service


def main(argv: Sequence[str] | None = None) -> int:
    return run_service(ForecasterService, argv, "Run the forecaster service (next hour of flow and pressure, every hour).")


if __name__ == "__main__":
    sys.exit(main())
