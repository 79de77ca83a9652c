"""Run every benchmark and write docs/benchmarks.md.

    python -m bench.run_all [--quick] [--only import,pipeline,...] [--no-write]

Each benchmark is a module in bench/ that prints a Markdown table; this runs them one after the
other (never in parallel: they would measure each other) and records their output with the machine
and the date. With --only, the named sections of docs/benchmarks.md are replaced and the others kept.
"""

from __future__ import annotations

import argparse
import ast
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from bench.common import machine

ROOT = Path(__file__).resolve().parents[1]
BENCHES = [
    ("import", "Import: flowwatch import against a plain pandas + SQLite script"),
    ("pipeline", "Live pipeline: collector → Mosquitto → detector → store, QoS 1, persistence on"),
    ("scaling", "Many meters on one box: 10, 100, 1,000 meters at 1 reading/min"),
    ("latency", "Reading → anomaly event latency at 10 readings/s"),
    ("forecast", "Hourly forecast job and forecaster memory"),
    ("train", "Training on one year of minute data, both signals"),
    ("services", "Memory of each service at steady state, cold start to ready"),
    ("health", "Health check: CPU per probe"),
    ("central", "Central tier: sites into one central broker and store"),
]

HEADER = """# Benchmarks

Targets are the brief's (§12). Every figure below was produced by `python -m bench.run_all` on the
machine named, one benchmark at a time; each benchmark states how it measures (median of several
runs; ratios are measured in the same run against the raw tool on the same broker or disk).
Re-run after any change that touches a hot path: `python -m bench.run_all` rewrites this file.
A single benchmark: `python -m bench.<name>` (`--quick` for a smoke run).
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--only", default="", help="comma-separated benchmark names")
    ap.add_argument("--no-write", action="store_true", help="print only")
    args = ap.parse_args()
    only = {s for s in args.only.split(",") if s}
    sections = [HEADER, f"Machine: {machine()}. Run: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC{' (quick mode: NOT representative)' if args.quick else ''}.\n"]
    failed = 0
    for name, title in BENCHES:
        if only and name not in only:
            continue
        if not (ROOT / "bench" / f"{name}.py").exists():
            sections.append(f"## {title}\n\nNot available: `bench/{name}.py` is missing.\n")
            continue
        cmd = [sys.executable, "-m", f"bench.{name}"] + (["--quick"] if args.quick else [])
        print(f"== {name}: {' '.join(cmd[1:])}", flush=True)
        t = time.perf_counter()
        r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        dt = time.perf_counter() - t
        print(r.stdout, end="")
        if r.returncode != 0:
            failed += 1
            print(r.stderr[-3000:], file=sys.stderr)
            sections.append(f"## {title}\n\n`python -m bench.{name}` FAILED (exit {r.returncode}):\n\n```\n{r.stderr[-1500:]}\n```\n")
            continue
        doc = ast.get_docstring(ast.parse((ROOT / "bench" / f"{name}.py").read_text())) or ""
        how = "\n".join(doc.strip().splitlines()[1:]).strip("\n")  # keep the usage line's indent (a code block)
        out = r.stdout.strip()
        if not any(line.startswith("|") for line in out.splitlines()):  # aligned plain text: keep it so
            out = f"```text\n{out}\n```"
        sections.append(f"## {title}\n\n{how}\n\n{out}\n\n(`python -m bench.{name}`, {dt:.0f} s, run {datetime.now(UTC):%Y-%m-%d %H:%M} UTC)\n")
    if not args.no_write:
        doc = ROOT / "docs" / "benchmarks.md"
        if only and doc.exists():
            text = _merge(doc.read_text(), sections[2:])
        else:
            text = "\n".join(sections)
        doc.write_text(text)
        print("wrote docs/benchmarks.md")
    return 1 if failed else 0


def _merge(old: str, new_sections: list[str]) -> str:
    """Replace the ``## title`` sections of ``old`` that ``new_sections`` bring; keep the rest."""
    parts = old.split("\n## ")
    by_title = {sec.split("\n", 1)[0][3:]: sec for sec in new_sections}
    out = [parts[0]]
    for part in parts[1:]:
        title = part.split("\n", 1)[0]
        out.append(by_title.pop(title)[3:].rstrip("\n") + "\n" if title in by_title else part)
    out += [sec[3:] for sec in by_title.values()]
    return "\n## ".join(out)


if __name__ == "__main__":
    sys.exit(main())
