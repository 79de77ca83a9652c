"""``flowwatch detector``: store every reading, raise anomalies (see service.py)."""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence

from shared.cli import base_parser, settings_from_args
from shared.service import setup_logging
from shared.store import StoreError

logger = logging.getLogger(__name__)


def main(argv: Sequence[str] | None = None) -> int:
    p = base_parser("detector", "Store every reading, run the detection rules, store and publish anomalies.")
    args = p.parse_args(list(sys.argv[1:] if argv is None else argv))
    settings = settings_from_args(args)
    setup_logging(settings.log_level)
    from services.detector.service import DetectorService

    svc = DetectorService(settings)
    svc.install_signal_handlers()
    try:
        svc.start()
    except StoreError as exc:
        logger.error("detector cannot use the store: %s", exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
