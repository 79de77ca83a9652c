"""``flowwatch import FILE.csv...``: bulk-load historical readings into the configured store.

Files of up to ``SMALL_FILE_BYTES`` in all are read row by row with the standard library when they
are clean (:mod:`shared.readings_csv_rows`: pandas is then not even loaded, a quarter of a second of
a small file's import); larger ones, and any file with a bad row, with pandas' reader
(:mod:`shared.readings_csv`). The rows stored are the same either way.

Bad rows are reported with their line numbers and reasons and written to a rejects file; good rows
are imported. Several files in one run (``--meter-from-name``: one meter per file, named by the
file) pay the process start once. Files for pandas' reader are parsed in a second process, a chunk
ahead, while this one writes (:class:`_Files`: SQLite takes one writer; parsing is about a third of
an import). Each file's values are flagged against its meter's ranges (``Settings.limits_of``:
meters[].limits over limits). Exit code: 0 all imported, 1 some rows rejected (the rest imported), 2 a file (or all)
could not be done (bad file, bad config); the other files are imported.
"""

from __future__ import annotations

import csv
import os
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING

from shared.readings_csv_rows import CsvFormatError, NotPlain, read_rows, small_enough
from shared.runner import add_naive_tz, base_parser, naive_tz_or_note, settings_from_args
from shared.store import StoreError, open_store
from shared.store.base import WriteResult

if TYPE_CHECKING:
    from multiprocessing.connection import Connection

    from shared.readings_csv import ParsedChunk
    from shared.readings_csv_rows import RowChunk
    from shared.settings import RangeLimits

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
    p.add_argument("files", type=Path, nargs="+", metavar="file", help="CSV file(s) with header timestamp,flow_rate,pressure")
    p.add_argument("--site", default=None, help="site id (default: the configured site)")
    p.add_argument("--meter", default=None, help="meter id (default: the configured meter)")
    p.add_argument("--meter-from-name", action="store_true",
                   help="each file's meter id is its name without .csv (several meters in one run: meters/m12.csv -> m12)")
    add_naive_tz(p)
    p.add_argument("--rejects", type=Path, default=None, help="where to write rejected rows (default FILE.rejects.csv; one file only)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    if args.meter_from_name and args.meter:
        p.error("--meter and --meter-from-name exclude each other")
    if args.rejects and len(args.files) > 1:
        p.error("--rejects names the rejects file of one input file; with several, each has its own FILE.rejects.csv")
    # --site / --meter go through the settings: the same id rule as the config file and every message.
    # --meter is taken as given: with a `meters` list, settings.meter is the first configured meter.
    settings = settings_from_args(args, **{k: v for k, v in (("site", args.site), ("meter", args.meter)) if v})
    meters = [args.meter or settings.meter] * len(args.files)
    if args.meter_from_name:
        meters = [f.stem for f in args.files]
        bad = [m for m in meters if not _valid_id(m)]
        if bad:
            print(f"flowwatch import: {', '.join(map(repr, bad))} cannot be a meter id (--meter-from-name: letters, digits, "
                  "'_' and '-', at most 64); rename the file or import it with --meter", file=sys.stderr)
            return 2
    missing = [str(f) for f in args.files if not f.is_file()]
    if missing:
        print(f"flowwatch import: no such file: {', '.join(missing)}", file=sys.stderr)
        return 2
    small = small_enough(args.files)  # pandas would cost more than it saves (see the module docstring)
    naive_tz = naive_tz_or_note("import", args.naive_tz, args.files, settings.timezone)
    files = _Files(args.files, [settings.limits_of(m) for m in meters], naive_tz, small)  # before the store opens (fork)
    try:
        try:
            store = open_store(settings)
        except StoreError as exc:
            print(f"flowwatch import: {exc}", file=sys.stderr)
            return 2
        try:  # several files in one process: the start (settings, pandas) is paid once
            return max(_import_file(store, settings, f, m, args, lambda i=i: files.chunks(i, store.parse_ahead))
                       for i, (f, m) in enumerate(zip(args.files, meters, strict=True)))
        except KeyboardInterrupt:  # a chunk's write is one transaction: the one under way was rolled back
            print("flowwatch import: interrupted; what was written before stays. Run the same command again to finish: "
                  "readings already stored are counted as identical, not written twice", file=sys.stderr)
            return 130
        finally:
            store.close()
    finally:
        files.close()


def _valid_id(text: str) -> bool:
    from pydantic import TypeAdapter, ValidationError

    from shared.messages import Ident

    try:
        TypeAdapter(Ident).validate_python(text)
    except ValidationError:
        return False
    return True


def _chunks(path: Path, limits, naive_tz: str, small: bool, parse_ahead: bool):  # noqa: ANN001, ANN202 - RangeLimits; chunks
    """The file's parsed chunks: row by row when it is small and clean, by pandas otherwise."""
    if small:
        try:
            return read_rows(path, limits, naive_tz)
        except NotPlain:
            pass  # a bad or unusual row: pandas' reader says what is wrong with each
    from shared.readings_csv import import_chunks

    return import_chunks(path, limits, naive_tz, parse_ahead=parse_ahead)


def _parse_in_worker(paths: Sequence[Path], limits: Sequence[RangeLimits], naive_tz: str, out: Connection) -> None:
    """The worker process of :class:`_Files`: every file's chunks by pandas' reader, in order, as plain
    lists; then ``(i, None)`` at the end of file ``i``, or ``(i, error)`` where it failed."""
    import pickle
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the importing process's to handle: it stops this one
    for i, (path, lim) in enumerate(zip(paths, limits, strict=True)):
        end: Exception | None = None
        try:
            for chunk in _chunks(path, lim, naive_tz, small=False, parse_ahead=False):
                out.send((i, chunk.columns()))
        except Exception as exc:  # noqa: BLE001 - the file's error, raised in the importing process at its turn
            try:
                pickle.loads(pickle.dumps(exc))
                end = exc
            except Exception:  # noqa: BLE001 - an error that cannot cross: its text does
                end = RuntimeError(f"{type(exc).__name__}: {exc}")
        out.send((i, end))
    out.close()


def _can_fork() -> bool:
    import multiprocessing

    return "fork" in multiprocessing.get_all_start_methods()


class _Files:
    """The parsed chunks of each file in turn. Files for pandas' reader are parsed, on a machine of two
    cores or more, by a worker process a chunk ahead while this process writes (SQLite takes one
    writer; parsing is about a third of an import, and this process then never loads pandas).

    The worker is forked when this is built: before the store is opened (it holds no connection) and
    only from a process with one thread (a fork copies no lock another thread holds). Its chunks come
    through a pipe whose other end only the worker holds, so a worker that dies (killed, out of memory)
    is seen at once, never waited for: the file it was on is read on here from the chunk it had
    reached, and the files after it too. A bad file's error comes when its turn does, as without the
    worker. Small files (read row by row, without pandas) have no worker.
    """

    def __init__(self, paths: Sequence[Path], limits: Sequence[RangeLimits], naive_tz: str, small: bool) -> None:
        self.paths, self.limits, self.naive_tz, self.small = list(paths), list(limits), naive_tz, small
        self.worker = self.conn = None
        if not small and (os.cpu_count() or 1) > 1 and threading.active_count() == 1 and _can_fork():
            import multiprocessing

            ctx = multiprocessing.get_context("fork")
            self.conn, out = ctx.Pipe(duplex=False)
            self.worker = ctx.Process(target=_parse_in_worker, args=(self.paths, self.limits, naive_tz, out), daemon=True,
                                      name="flowwatch-import-parser")
            self.worker.start()
            out.close()  # the worker's end is the worker's alone: its death is an end of file here

    def chunks(self, i: int, parse_ahead: bool) -> Iterator[ParsedChunk | RowChunk]:
        """File ``i``'s chunks (a file's errors are raised while iterating)."""
        if self.conn is None:
            yield from _chunks(self.paths[i], self.limits[i], self.naive_tz, self.small, parse_ahead)
            return
        done = 0
        while True:
            try:
                at, item = self.conn.recv()
            except (EOFError, OSError):  # the worker died: this file on from where it was, here
                self.close()
                yield from islice(_chunks(self.paths[i], self.limits[i], self.naive_tz, self.small, parse_ahead), done, None)
                return
            if at < i:  # the rest of a file whose import stopped (a store error): dropped
                continue
            if item is None:
                return
            if isinstance(item, Exception):
                raise item
            done += 1
            yield item

    def close(self) -> None:
        if self.worker is not None:
            self.conn.close()
            if self.worker.is_alive():
                self.worker.terminate()
            self.worker.join()
            self.worker = self.conn = None


def _import_file(store, settings, path: Path, meter: str, args,  # noqa: ANN001 - the open store, Settings, argparse
                 parsed: Callable[[], Iterable[ParsedChunk | RowChunk]]) -> int:
    """Import one file for ``meter`` (``parsed``: its chunks); the exit code of this file (0, 1 some
    rows rejected, 2 failed)."""
    site = settings.site
    rejects_path = args.rejects or path.with_suffix(".rejects.csv")
    rejected = 0
    result = WriteResult()
    t0 = time.perf_counter()
    rej_file = None
    try:
        with _progress(path, args.quiet) as bar:
            for chunk in parsed():
                result = result + chunk.write(store, site, meter)
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
        print(f"flowwatch import: {path}: store error after {result.total} rows ({result.inserted} inserted): {exc}", file=sys.stderr)
        return 2
    finally:
        if rej_file is not None:
            rej_file.close()
    dt = time.perf_counter() - t0
    imported = result.total
    print(f"imported {imported} rows into {store.name} for {site}/{meter} in {dt:.2f}s ({imported / max(dt, 1e-9):,.0f} rows/s): "
          f"{result.inserted} inserted, {result.identical} identical to the stored ones, "
          f"{result.conflicting} conflicting (the stored value kept, the new one in reading_conflicts), {rejected} rejected",
          flush=True)  # a file's line when it is done, also into a pipe or a log
    if rejected:
        more = f" (first {SHOW_REJECTS} shown)" if rejected > SHOW_REJECTS else ""
        print(f"rejected {rejected} rows{more}; all listed in {rejects_path}", file=sys.stderr)
        return 1
    return 0
