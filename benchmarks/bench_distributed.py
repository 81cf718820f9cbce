"""Multi-process training throughput: ``accelerate launch`` with 2 CPU processes vs 1 process.

    python benchmarks/bench_distributed.py [--model smollm2] [--steps 8] [--batch-size 8] [--repeats 1]

Both sides train the same all-module LoRA on ``emotion_train`` with the same
effective batch (1 process x ``--batch-size``; 2 processes x half of it,
gloo on the CPU) and the same cores: the single process gets all
``--cores`` threads, each of the two processes half of them. Reported: the
training loop's tokens/s (from ``affectlens_tune.json``; all processes'
tokens over the loop's wall time) and the whole command's wall time
(process start, model load, process-group set-up included), and their
2-process / 1-process ratios. On a 2-core machine data parallelism has no
idle hardware to add, so the ratio says what the split costs (communication,
smaller matmuls), not a speed-up; on GPUs each process brings its own device.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run(processes: int, args: argparse.Namespace, threads: int, out: Path) -> tuple[float, float]:
    """(training tokens/s, command wall seconds) of one ``tune`` run."""
    tune = ["tune", args.model, "--data", "emotion_train", "--modules", "all", "--steps", str(args.steps),
            "--batch-size", str(args.batch_size // processes), "--max-length", str(args.max_length),
            "--dropout", "0", "--precision", "fp32", "--device", "cpu", "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "AFFECTLENS_THREADS": str(threads),
           "AFFECTLENS_NO_PROGRESS": "1", "PYTHONPATH": str(ROOT / "src")}
    if processes == 1:
        cmd = [sys.executable, "-m", "affectlens", *tune]
    else:
        env["ACCELERATE_USE_CPU"] = "true"
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "--main_process_port", str(_port()), "-m", "affectlens", *tune]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t0
    if proc.returncode:
        sys.exit(f"{processes}-process run failed:\n{proc.stderr[-2000:]}")
    info = json.loads((out / "affectlens_tune.json").read_text())
    assert info["layout"]["processes"] == processes and info["layout"]["effective_batch"] == args.batch_size
    return float(info["tokens_per_second"]), wall


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=8, help="effective batch (even)")
    ap.add_argument("--max-length", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--cores", type=int, default=os.cpu_count() or 2, help="threads shared by the processes")
    args = ap.parse_args()
    if args.batch_size % 2:
        ap.error("--batch-size must be even (it is split over 2 processes)")
    results: dict[int, list[tuple[float, float]]] = {1: [], 2: []}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            for n in (1, 2):  # alternate, so machine load drifts affect both sides
                results[n].append(run(n, args, max(1, args.cores // n), Path(tmp) / f"run{r}-{n}"))
    tps = {n: statistics.median(t for t, _ in v) for n, v in results.items()}
    wall = {n: statistics.median(w for _, w in v) for n, v in results.items()}
    print(f"model {args.model}, {args.steps} steps, effective batch {args.batch_size}, max length "
          f"{args.max_length}, {args.cores} thread(s) split over the processes (at least 1 each), "
          f"median of {args.repeats}")
    for n in (1, 2):
        print(f"  {n} process(es) x {max(1, args.cores // n)} thread(s): {tps[n]:8.0f} tokens/s in the loop, "
              f"{wall[n]:6.1f} s per command")
    print(f"2-process / 1-process: throughput x{tps[2] / tps[1]:.2f}, wall time x{wall[2] / wall[1]:.2f} "
          f"({'faster' if tps[2] > tps[1] else 'no speed-up'} on this machine)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
