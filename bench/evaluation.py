"""The public evaluation suite: simulate every scenario of bench/scenarios.yaml, evaluate, score vs goals.

    python -m bench.evaluation [--quick] [--no-train] [--only NAME ...] [--out DIR]

Per scenario: ``flowwatch simulate --scenario bench/scenarios.yaml:NAME`` then ``flowwatch evaluate
--train-days 14`` (each a subprocess: the production code, as a user runs it). Results are pooled
over the scenarios and compared with the goals of issue 8 (docs/evaluation.md). ``--quick``: two
scenarios, no training. ``--no-train``: the forecaster serves seasonal naive (no TensorFlow).
Generated data and per-scenario outputs stay in ``--out`` (default a temp folder); nothing is committed.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

from bench.common import machine, table

ROOT = Path(__file__).resolve().parent.parent
SUITE = ROOT / "bench" / "scenarios.yaml"

# goal: (title, which labels, detected within (minutes, None = any overlap), recall target, max median delay (min))
GOALS = [
    ("bursts ≥ 20 %: recall ≥ 95 %, median delay ≤ 5 min", lambda k, s: k == "burst" and s >= 20, None, 0.95, 5.0),
    ("medium leaks 5–15 %: recall ≥ 90 % within 24 h", lambda k, s: k in ("burst", "leak") and 5 <= s < 20, 24 * 60, 0.90, None),
    ("small incipient 2–5 %: recall ≥ 70 % within 7 days", lambda k, s: k == "leak" and s < 5, 7 * 24 * 60, 0.70, None),
    ("sensor faults: recall (no goal set)", lambda k, s: k == "sensor_fault", 60, None, None),
]


def run_scenario(name: str, out: Path, train_days: float | None, suite: Path = SUITE) -> dict:
    d = out / name
    cmd = [sys.executable, "-m", "app.cli", "simulate", "--scenario", f"{suite}:{name}", "--out", str(d)]
    subprocess.run(cmd, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    cmd = [sys.executable, "-m", "app.cli", "evaluate", "--readings", str(d / "readings.csv"), "--labels", str(d / "labels.csv"),
           "--out", str(d / "eval"), "--quiet", "--score-from-day", "14"]
    if train_days:
        cmd += ["--train-days", str(train_days)]
    t = time.perf_counter()
    with (d / "evaluate.log").open("w") as log:  # TensorFlow is chatty on stderr
        rc = subprocess.run(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT).returncode
    if rc:
        sys.exit(f"evaluate failed on {name} (exit {rc}); see {d / 'evaluate.log'}")
    m = json.loads((d / "eval" / "metrics.json").read_text())
    m["wall_s"] = time.perf_counter() - t
    return m


def pooled(results: dict[str, dict]) -> tuple[list[list[str]], list[list[str]]]:
    labels = [lab for m in results.values() for lab in m["labels"]]
    rows = []
    for title, pick, within, target, max_delay in GOALS:
        group = [lab for lab in labels if pick(lab["kind"], lab["size_pct"] if lab["size_pct"] is not None else float("nan"))]
        if not group:
            rows.append([title, "0", "-", "-", "-", "no events"])
            continue
        delays = [lab["delay_min"] for lab in group if lab["detected"]]
        hit = [lab for lab in group if lab["detected"] and (within is None or lab["delay_min"] <= within)]
        recall = len(hit) / len(group)
        med = float(np.median(delays)) if delays else None
        ok = target is None or (recall >= target and (max_delay is None or (med is not None and med <= max_delay)))
        rows.append([title, str(len(group)), f"{recall:.0%}", "-" if med is None else f"{med:.0f} min",
                     "-" if not delays else f"{np.percentile(delays, 90):.0f} min", "-" if target is None else ("met" if ok else "NOT met")])
    false = sum(m["alarms"]["false_alarms"] for m in results.values())
    days = sum(m["alarms"]["scored_days"] for m in results.values())
    alerts = sum(m["alarms"]["alerts"] for m in results.values())
    fa30 = false / days * 30 if days else float("nan")
    rows.append(["false alarms ≤ 1 per 30 days", f"{days:.0f} days", f"{fa30:.1f} / 30 d",
                 f"{false} of {alerts} alerts", "-", "met" if fa30 <= 1 else "NOT met"])
    frows = []
    for s in ("flow_rate", "pressure"):
        err = ysum = perr = serr = n = 0.0
        models: dict[str, int] = {}
        for m in results.values():
            f = m["forecast"].get(s, {})
            if not f.get("targets"):
                continue
            k = f["targets"]
            e, pe, se = f["forecast"]["mae"] * k, f["persistence"]["mae"] * k, f["seasonal_naive"]["mae"] * k
            err, perr, serr, n = err + e, perr + pe, serr + se, n + k
            ysum += e / f["forecast"]["wape"] if f["forecast"]["wape"] else 0
            for mk, c in f["targets_by_model"].items():
                models[mk.split("-")[0] if mk != "seasonal-naive" else mk] = models.get(mk, 0) + c
        if not n or not ysum:
            frows.append([s, "0", "-", "-", "-", "-", "-"])
            continue
        w, pw, sw = err / ysum, perr / ysum, serr / ysum
        skill = 1 - w / sw
        ok = skill >= 0.30 and w < pw
        frows.append([s, f"{n:.0f}", f"{w:.4f}", f"{pw:.4f}", f"{sw:.4f}", f"{skill:+.0%}", "met" if ok else "NOT met"])
    return rows, frows


def by_group(results: dict[str, dict]) -> list[list[str]]:
    """False alarms per scenario group (the name without its last part: network and noise level)."""
    groups: dict[str, list[dict]] = {}
    for name, m in results.items():
        groups.setdefault(name.rsplit("-", 1)[0] if name.count("-") >= 2 else name, []).append(m["alarms"])
    rows = []
    for g, al in groups.items():
        days = sum(a["scored_days"] for a in al)
        false = sum(a["false_alarms"] for a in al)
        kinds: dict[str, int] = {}
        for a in al:
            for k, v in a["false_alarms_by_kind"].items():
                kinds[k] = kinds.get(k, 0) + v
        rows.append([g, f"{days:.0f}", str(false), f"{false / days * 30:.2f}" if days else "-", str(kinds or "")])
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="two scenarios, no training")
    ap.add_argument("--no-train", action="store_true", help="no training: forecasts are seasonal naive")
    ap.add_argument("--only", nargs="*", default=None, help="scenario names")
    ap.add_argument("--out", type=Path, default=None, help="keep the generated data and outputs here")
    ap.add_argument("--suite", type=Path, default=SUITE, help="suite file (default bench/scenarios.yaml; held out: bench/heldout.yaml)")
    args = ap.parse_args()
    suite = yaml.safe_load(args.suite.read_text())
    names = [s["name"] for s in suite["scenarios"]]
    if args.quick:
        names = ["bursts-a", "sensor-faults"]
    if args.only:
        unknown = set(args.only) - set(names)
        if unknown:
            sys.exit(f"unknown scenario(s) {', '.join(sorted(unknown))}; known: {', '.join(names)}")
        names = [n for n in names if n in args.only]
    train = None if (args.quick or args.no_train) else suite.get("train_days", 14)
    out = args.out or Path(tempfile.mkdtemp(prefix="fw-eval-suite-"))
    results = {}
    for n in names:
        print(f"scenario {n} ...", flush=True)
        results[n] = run_scenario(n, out, train, args.suite)
        a = results[n]["alarms"]
        print(f"  {a['alerts']} alerts, {a['false_alarms']} false {a['false_alarms_by_kind']} in {a['scored_days']:.0f} days; "
              f"{results[n]['wall_s']:.0f} s", flush=True)
    rows, frows = pooled(results)
    print(f"\nflowwatch evaluation suite: {len(names)} scenario(s) ({', '.join(names)}); "
          f"training: {f'first {train} days' if train else 'none (seasonal naive)'}; {machine()}")
    print(table(["goal", "events", "recall / rate", "median delay", "p90 delay", "status"], rows))
    bursts = [[n, lab["start"][:16], f"{lab['size_pct']:g} %", "-" if lab.get("inflow_pct") is None else f"{lab['inflow_pct']:.1f} %",
               "no" if not lab["detected"] else f"{lab['delay_min']:.0f} min"]
              for n, m in results.items() for lab in m["labels"] if lab["kind"] == "burst"]
    if bursts:
        print("\nEach burst: its own size, and the inflow it added at the meter over its first hour (inflow_pct: less where "
              "the network\ncould not hold pressure and customers lost supply instead), detected after:")
        print(table(["scenario", "start (UTC)", "size", "at the meter", "detected"], bursts))
    print()
    print(table(["next-hour forecast", "targets", "WAPE", "persistence", "seasonal naive", "skill vs s. naive", "goal (≥ 30 %, < persistence)"], frows))
    print()
    print(table(["false alarms by group", "scored days", "false alarms", "per 30 days", "by kind"], by_group(results)))
    print(f"\noutputs in {out}")


if __name__ == "__main__":
    main()
