"""``flowwatch recorder``: wire settings -> store, bus -> RecorderService, and run until SIGTERM."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from services.recorder.service import RecorderService
from shared.runner import run_service


def main(argv: Sequence[str] | None = None) -> int:
    return run_service(RecorderService, argv, "The central tier's recorder: store what every site sends.")


if __name__ == "__main__":
    sys.exit(main())
