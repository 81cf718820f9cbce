"""A grid's wall time on a local Ray runtime vs the serial runner, same grid, same machine.

    python benchmarks/bench_grid.py [--base smollm2] [--steps 3] [--limit 8] [--repeats 1]

The grid is a small Table 2 (GET and all-module LoRA over two seeds, a
gate_proj transfer from all-module, the base as reference: 7 cells in two
waves: 4 adapter-training cells, then 3 that read adapters). Each run is the
real CLI in its own subprocess into a fresh dir: ``--executor serial`` (one
process, the thread policy's torch threads) and ``--executor ray`` (a local
Ray runtime on every core, one core per cell; its start-up is included, as a
user pays it). Runs alternate; medians are reported, with the ratio and the
1-minute load average (on a shared 2-core machine Ray can only overlap two
cells, and each worker imports torch and loads the base once). The grid.csv
of both runs is compared without its timing columns: they must be identical.
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from affectlens.grid import TIMING_COLUMNS


def grid(base: str, steps: int, limit: int) -> dict:
    return {
        "name": "bench-grid",
        "base": base,
        "data": "emotion_train",
        "tasks": ["emotion", "control"],
        "eval": {"limit": limit, "batch_size": 8},
        "budget": {"steps": steps, "rank": 4, "alpha": 8, "lr": 1e-3, "batch_size": 4, "max_length": 64,
                   "seeds": [0, 1]},
        "variants": [
            {"name": "base", "kind": "reference", "model": "base"},
            {"name": "all-module", "kind": "reference", "modules": "all"},
            {"name": "GET", "kind": "tune", "modules": "gate_proj"},
            {"name": "inherit gate", "kind": "transfer", "donor": "all-module", "modules": "gate_proj"},
        ],
    }


def run(cfg: Path, out: Path, executor: str) -> float:
    cmd = [sys.executable, "-m", "affectlens", "grid", str(cfg), "--out", str(out), "--executor", executor]
    env = {**os.environ, "AFFECTLENS_NO_PROGRESS": "1"}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t0
    if proc.returncode:
        sys.exit(f"{executor} run failed:\n{proc.stderr[-2000:]}")
    return wall


def rows(out: Path) -> list[dict[str, str]]:
    got = list(csv.DictReader(io.StringIO((out / "grid.csv").read_text())))
    return [{k: v for k, v in r.items() if k not in TIMING_COLUMNS} for r in got]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", default="smollm2", help="base model of the grid (default: %(default)s)")
    ap.add_argument("--steps", type=int, default=3, help="LoRA steps per adapter (default: %(default)s)")
    ap.add_argument("--limit", type=int, default=8, help="examples per task per cell (default: %(default)s)")
    ap.add_argument("--repeats", type=int, default=1, help="runs per executor (default: %(default)s)")
    args = ap.parse_args()
    walls: dict[str, list[float]] = {"serial": [], "ray": []}
    with tempfile.TemporaryDirectory(prefix="bench-grid-") as tmp:
        cfg = Path(tmp) / "grid.yaml"
        cfg.write_text(yaml.safe_dump(grid(args.base, args.steps, args.limit), sort_keys=False))
        for i in range(args.repeats):
            for ex in ("serial", "ray") if i % 2 == 0 else ("ray", "serial"):
                walls[ex].append(run(cfg, Path(tmp) / f"{ex}{i}", ex))
                print(f"  {ex:6s} run {i + 1}: {walls[ex][-1]:.1f} s (load {os.getloadavg()[0]:.1f})", flush=True)
        same = all(rows(Path(tmp) / f"ray{i}") == rows(Path(tmp) / f"serial{i}") for i in range(args.repeats))
    s, r = statistics.median(walls["serial"]), statistics.median(walls["ray"])
    print(f"grid of 7 cells on {args.base} ({os.cpu_count()} cores): serial {s:.1f} s, ray {r:.1f} s "
          f"(serial/ray = {s / r:.2f}x); grid.csv identical: {same}")
    if not same:
        sys.exit("the Ray grid.csv differs from the serial one")


if __name__ == "__main__":
    main()
