"""``flowwatch health SERVICE``: exit 0 when the service's heartbeat is fresh and online (Docker)."""

from __future__ import annotations

from collections.abc import Sequence

from shared.runner import base_parser, settings_from_args
from shared.service import HEALTH_STALE_S, check_health


def main(argv: Sequence[str]) -> int:
    p = base_parser("health", "Health check of one service, from its heartbeat file.")
    p.add_argument("service", choices=["collector", "detector", "forecaster", "exporter", "trainer"])
    p.add_argument("--stale-s", type=float, default=HEALTH_STALE_S, help="heartbeat older than this is unhealthy")
    args = p.parse_args(argv)
    ok, text = check_health(settings_from_args(args), args.service, args.stale_s)
    print(text)
    return 0 if ok else 1
