"""``flowwatch config check [FILE]``: validate a config file.

Prints each error as ``key.path: reason`` and exits 2; prints the effective configuration (secrets
masked) as YAML and exits 0 when valid.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import yaml

from shared.cli import base_parser, settings_or_exit


def main(argv: Sequence[str]) -> int:
    p = base_parser("config", "Configuration tools.")
    sub = p.add_subparsers(dest="action", required=True)
    chk = sub.add_parser("check", help="validate a config file and print the effective config")
    chk.add_argument("file", nargs="?", default=None, help="config file (default: --config / $FLOWWATCH_CONFIG)")
    args = p.parse_args(argv)
    path = args.file or args.config
    settings = settings_or_exit(path)
    sys.stdout.write(f"# {path or 'built-in defaults'}: valid (environment overrides applied, secrets masked)\n")
    sys.stdout.write(yaml.safe_dump(settings.masked(), sort_keys=False))
    return 0
