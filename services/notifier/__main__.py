"""``flowwatch notifier``: wire settings -> store, outbox, bus -> NotifierService, and run until SIGTERM."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from services.notifier.service import NotifierService
from shared.runner import run_service


def main(argv: Sequence[str] | None = None) -> int:
    return run_service(
        NotifierService, argv, "Send alerts to people (e-mail, webhook, apprise) through a durable outbox; acknowledgements and silences.",
        hints={OSError: "cannot write its outbox (check notifier.outbox and data_dir)"},
    )


if __name__ == "__main__":
    sys.exit(main())
