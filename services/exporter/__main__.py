"""``flowwatch exporter``: wire settings -> store, bus -> ExporterService, and run until SIGTERM."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from services.exporter.service import ExporterService
from shared.runner import run_service


def main(argv: Sequence[str] | None = None) -> int:
    return run_service(
        ExporterService, argv, "Write alert.txt / server.txt for the embedded device, mirror them on MQTT, archive daily.",
        hints={OSError: "cannot write its files (check exporter.out_dir / exporter.archive_dir)"},
    )


if __name__ == "__main__":
    sys.exit(main())
