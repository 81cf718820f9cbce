"""Instant CLI: `affectlens --help`, `tune --help` and `params` vs `python -c "import torch"`.

    python benchmarks/bench_cli.py [--repeat 5] [--model DIR]

Each command runs in a fresh subprocess (imports are what is measured), REPEAT
times, alternating with the baseline so machine load hits both alike; the
median wall time is reported. The baseline is the import a torch-based CLI pays
before it can print anything. Goal (issue 13): every row < 1 s. The ratio is
baseline / ours (> 1: faster than importing torch alone). The interpreter's own
start-up (`python -c pass`) is shown as the floor.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TINYSTORIES = ROOT.parent / "shared" / "models" / "tinystories-656k"
GOAL_S = 1.0


def wall(argv: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=5, help="runs per command (median)")
    ap.add_argument("--model", default=str(TINYSTORIES) if TINYSTORIES.is_dir() else "smollm2",
                    help="model (dir or config.json) for the params row")
    args = ap.parse_args()

    py = sys.executable
    cli = [py, "-m", "affectlens"]
    rows = {
        "affectlens --help": cli + ["--help"],
        "affectlens tune --help": cli + ["tune", "--help"],
        f"affectlens params {Path(args.model).name} --modules all": cli + ["params", args.model, "--modules", "all"],
    }
    baseline = [py, "-c", "import torch"]
    floor = [py, "-c", "pass"]
    times: dict[str, list[float]] = {name: [] for name in [*rows, "baseline", "floor"]}
    for _ in range(args.repeat):
        for name, argv in rows.items():
            times[name].append(wall(argv))
            times["baseline"].append(wall(baseline))
        times["floor"].append(wall(floor))
    base = statistics.median(times["baseline"])
    print(f"{'path':<52} {'median s':>9} {'import torch s':>15} {'ratio':>7}  goal")
    failed = False
    for name in rows:
        t = statistics.median(times[name])
        ok = t < GOAL_S
        failed |= not ok
        print(f"{name:<52} {t:9.3f} {base:15.3f} {base / t:6.1f}x  < {GOAL_S:g} s {'ok' if ok else 'MISSED'}")
    print(f"{'(python -c pass: interpreter start-up)':<52} {statistics.median(times['floor']):9.3f}")
    import json
    import os

    worst = max(statistics.median(times[name]) for name in rows)
    print("BENCH " + json.dumps({
        "row": "affectlens --help", "unit": "s", "ours": worst, "baseline": base, "ratio": base / worst,
        "goal": f"<{GOAL_S:g} s", "met": worst < GOAL_S,
        "note": f"slowest of {len(rows)} (--help, tune --help, params) vs `import torch`; "
                f"python start-up {statistics.median(times['floor']):.2f} s; load {os.getloadavg()[0]:.1f}"}))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
