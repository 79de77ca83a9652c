"""``flowwatch exporter``: wire settings -> store, bus -> ExporterService, and run until SIGTERM."""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence

from shared.cli import base_parser, settings_from_args
from shared.service import setup_logging
from shared.store import StoreError

logger = logging.getLogger(__name__)


def main(argv: Sequence[str] | None = None) -> int:
    p = base_parser("exporter", "Write alert.txt / server.txt for the embedded device, mirror them on MQTT, archive daily.")
    args = p.parse_args(list(argv) if argv is not None else None)
    settings = settings_from_args(args)
    setup_logging(settings.log_level)
    from services.exporter.service import ExporterService

    svc = ExporterService(settings)
    svc.install_signal_handlers()
    try:
        svc.start()
    except StoreError as exc:
        logger.error("exporter cannot use the store: %s (check the store.* settings)", exc)
        return 1
    except OSError as exc:
        logger.error("exporter cannot write its files: %s (check exporter.out_dir / exporter.archive_dir)", exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
