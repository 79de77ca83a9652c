"""``flowwatch detector``: store every reading, raise anomalies (see service.py)."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from services.detector.service import DetectorService
from shared.runner import run_service


def main(argv: Sequence[str] | None = None) -> int:
    return run_service(DetectorService, argv, "Store every reading, run the detection rules, store and publish anomalies.")


if __name__ == "__main__":
    sys.exit(main())
