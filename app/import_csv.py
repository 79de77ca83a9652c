"""``flowwatch import FILE.csv``: bulk-load historical readings into the configured store.

Bad rows are reported with their line numbers and reasons and written to a rejects file; good rows
are imported. Exit code: 0 all imported, 1 some rows rejected (the rest imported), 2 nothing could
be done (bad file, bad config).
"""

from __future__ import annotations

import csv
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from shared.readings_csv import CsvFormatError, import_chunks
from shared.runner import base_parser, settings_from_args
from shared.store import StoreError, open_store
from shared.store.base import WriteResult

SHOW_REJECTS = 20


def _count_lines(path: Path) -> int:
    with path.open("rb") as f:
        return max(sum(buf.count(b"\n") for buf in iter(lambda: f.read(1 << 20), b"")) - 1, 0)


class _Quiet:
    """No progress bar (``--quiet``): tqdm is not even imported (a tenth of a small file's import time)."""

    def __enter__(self) -> _Quiet:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def update(self, n: int) -> None:
        pass

    @staticmethod
    def write(text: str, file=sys.stderr) -> None:  # noqa: ANN001 - tqdm.write's signature
        print(text, file=file)


def _progress(path: Path, quiet: bool):  # noqa: ANN202 - a tqdm bar or _Quiet
    if quiet:
        return _Quiet()
    from tqdm import tqdm

    return tqdm(total=_count_lines(path), unit="rows", desc=f"import {path.name}")


def main(argv: Sequence[str]) -> int:
    p = base_parser("import", "Bulk-load historical readings (timestamp,flow_rate,pressure; ISO 8601) into the store.")
    p.add_argument("file", type=Path, help="CSV file with header timestamp,flow_rate,pressure")
    p.add_argument("--site", default=None, help="site id (default: the configured site)")
    p.add_argument("--meter", default=None, help="meter id (default: the configured meter)")
    p.add_argument("--naive-tz", default="UTC", help="zone of timestamps that carry no offset (default UTC)")
    p.add_argument("--rejects", type=Path, default=None, help="where to write rejected rows (default FILE.rejects.csv)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    # --site / --meter go through the settings: the same id rule as the config file and every message
    settings = settings_from_args(args, **{k: v for k, v in (("site", args.site), ("meter", args.meter)) if v})
    site, meter = settings.site, settings.meter
    if not args.file.is_file():
        print(f"flowwatch import: no such file: {args.file}", file=sys.stderr)
        return 2
    rejects_path = args.rejects or args.file.with_suffix(".rejects.csv")
    rejected = 0
    result = WriteResult()
    t0 = time.perf_counter()
    try:
        store = open_store(settings)
    except StoreError as exc:
        print(f"flowwatch import: {exc}", file=sys.stderr)
        return 2
    rej_file = None
    try:
        with _progress(args.file, args.quiet) as bar:
            for chunk in import_chunks(args.file, settings.limits, args.naive_tz, parse_ahead=store.parse_ahead):
                result = result + store.write_reading_frame(site, meter, chunk.frame)
                if chunk.rejects:
                    if rej_file is None:
                        rej_file = rejects_path.open("w", newline="")
                        w = csv.writer(rej_file)
                        w.writerow(["line", "reason", "row"])
                    for r in chunk.rejects:
                        if rejected < SHOW_REJECTS:
                            bar.write(f"line {r.line}: {r.reason}", file=sys.stderr)
                        w.writerow([r.line, r.reason, r.raw])
                        rejected += 1
                bar.update(chunk.rows)
    except CsvFormatError as exc:
        done = f" ({result.total} rows before it were written: {result.inserted} inserted)" if result.total else ""
        print(f"flowwatch import: {exc}{done}", file=sys.stderr)
        return 2
    except StoreError as exc:
        print(f"flowwatch import: store error after {result.total} rows ({result.inserted} inserted): {exc}", file=sys.stderr)
        return 2
    finally:
        store.close()
        if rej_file is not None:
            rej_file.close()
    dt = time.perf_counter() - t0
    imported = result.total
    print(f"imported {imported} rows into {store.name} for {site}/{meter} in {dt:.2f}s ({imported / max(dt, 1e-9):,.0f} rows/s): "
          f"{result.inserted} inserted, {result.identical} identical to the stored ones, "
          f"{result.conflicting} conflicting (the stored value kept, the new one in reading_conflicts), {rejected} rejected")
    if rejected:
        more = f" (first {SHOW_REJECTS} shown)" if rejected > SHOW_REJECTS else ""
        print(f"rejected {rejected} rows{more}; all listed in {rejects_path}", file=sys.stderr)
        return 1
    return 0
