"""Run the benchmarks (`make bench`) and end with one table: each performance goal, measured.

    python benchmarks/run_all.py [--quick] [--only NAME ...] [--skip NAME ...]

Every ``bench_*.py`` in this folder runs in its own subprocess, one after
another (their output is passed through). A script reports its results by
printing one line per row, anywhere in its stdout::

    BENCH {"row": "locate default", "unit": "s", "ours": 4.1, "baseline": 15.2,
           "ratio": 3.7, "goal": ">=3x", "met": true, "peak_mib": 380,
           "baseline_peak_mib": 3900, "note": "2.1x the floor (read+upcast+sum)"}

- ``row`` (required): the row's name; the rows of issue 13 are listed in ``ROWS``.
- ``unit``: of ``ours``/``baseline`` ("s": lower is better; "tok/s": higher).
- ``ours``, ``baseline``: the two numbers measured in the same run (medians of
  paired runs); ``baseline`` may be null when the goal is absolute.
- ``ratio``: how many times better ours is (>1: better), as the script
  computed it; ``goal`` a short text ("<1 s", ">=2x"); ``met``: true/false/null.
- ``peak_mib`` / ``baseline_peak_mib``: peak RSS of each side; when absent,
  the table shows the whole script's peak (``wait4``'s ``ru_maxrss``, the
  largest process of the script's tree).
- ``note``: anything else worth one short phrase (load, floor, first run).

A script that prints no BENCH line still runs; its rows show as "not
reported". With ``--quick`` each script gets the smaller arguments of
``QUICK_ARGS`` and ``AFFECTLENS_BENCH_QUICK=1`` in its environment (a script
not listed there can read that to shrink itself). Exit status: 1 if a script
failed, else 0 (a goal not met is a table entry, not a failure).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
# Quick ones first, so a regression there shows before the heavy runs.
FIRST = ("bench_cli.py",)
# The rows of issue 13, in its order; a row no script reported is shown as such.
ROWS = ("locate default", "locate --no-distribution", "locate default vs floor", "locate pass vs floor",
        "locate default vs floor, large", "transfer, cold cache", "transfer, warm cache",
        "layer sweep", "affectlens --help", "training tok/s fp32", "training tok/s bf16", "demo first run",
        "study standard vs separate commands")
FULL_ARGS: dict[str, list[str]] = {
    "bench_circuits.py": ["--sweep-only"],  # the table's row; the full circuits run is its own job
    "bench_locate.py": ["--gb-large", "4"],  # the figures' fixed cost, amortised
    "bench_study.py": ["--dtype", "bfloat16"],  # as the standard profile's reference run
}
QUICK_ARGS: dict[str, list[str]] = {
    "bench_cli.py": ["--repeat", "3"],
    "bench_locate.py": ["--gb", "0.3", "--repeats", "2", "--layers-lora", "2"],
    "bench_transfer.py": ["--layers", "4", "--repeats", "1"],
    "bench_tune.py": ["--steps", "3", "--repeats", "1"],
    "bench_circuits.py": ["--sweep-only", "--sweep-repeats", "1"],
    "bench_study.py": ["--limit", "20", "--steps", "2", "--full-steps", "2"],
}


def run_script(script: Path, args: list[str], quick: bool) -> tuple[int, list[dict[str, Any]], float, float]:
    """(exit status, BENCH rows, wall seconds, peak RSS MiB of the script's largest process)."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if quick:
        env["AFFECTLENS_BENCH_QUICK"] = "1"
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, str(script), *args], stdout=subprocess.PIPE, text=True, env=env)
    rows: list[dict[str, Any]] = []
    assert proc.stdout is not None
    for line in proc.stdout:
        sys.stdout.write(line)
        sys.stdout.flush()
        if line.startswith("BENCH "):
            try:
                row = json.loads(line[6:])
            except ValueError:
                print(f"run_all: unreadable BENCH line from {script.name}: {line.strip()}", file=sys.stderr)
                continue
            if isinstance(row, dict) and "row" in row:
                rows.append(row)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, rows, time.perf_counter() - t0, usage.ru_maxrss / 1024


def tune_rows(path: Path) -> list[dict[str, Any]]:
    """bench_tune.py's ``--json`` as BENCH rows (it writes a JSON file instead of BENCH lines)."""
    try:
        d = json.loads(path.read_text())
    except (OSError, ValueError):
        return []
    tps, mem = d["tokens_per_s"], d["vmhwm_mib"]
    rows: list[dict[str, Any]] = []
    for p in ("fp32", "bf16"):
        ours, plain = tps.get(f"ours/{p}"), tps.get(f"plain/{p}")
        if ours and plain:
            cpu = d["tokens_per_cpu_s"]
            rows.append({"row": f"training tok/s {p}", "unit": "tok/s", "ours": ours, "baseline": plain,
                         "ratio": ours / plain, "goal": ">=1x", "met": ours >= plain,
                         "peak_mib": mem.get(f"ours/{p}"), "baseline_peak_mib": mem.get(f"plain/{p}"),
                         "note": f"per CPU-s {cpu[f'ours/{p}'] / cpu[f'plain/{p}']:.2f}x; vs plain PEFT loop"})
    idle = d.get("projected_demo_idle_s")
    if idle is not None:
        rows.append({"row": "demo first run", "unit": "s", "ours": idle, "baseline": None, "ratio": None,
                     "goal": "<=8 min", "met": idle <= 480,
                     "note": f"projected on idle cores from CPU-s; {d['projected_demo_s'] / 60:.1f} min at this "
                             "run's wall speed"})
    return rows


def fmt(v: Any, unit: str = "") -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.3g}" if unit != "tok/s" else f"{v:.0f}"
    return str(v)


def table(rows: list[dict[str, Any]], peaks: dict[str, float], load: tuple[float, float]) -> str:
    """The closing table: issue rows first (in order), then any other reported rows."""
    by_name: dict[str, dict[str, Any]] = {}
    for r in rows:
        by_name.setdefault(r["row"], r)
    names = [*ROWS, *(n for n in by_name if n not in ROWS)]
    head = (f"{'row':<32}{'unit':>6}{'affectlens':>11}{'baseline':>10}{'ratio':>8}{'goal':>12}{'met':>6}"
            f"{'peak MiB':>10}{'base MiB':>10}  note")
    out = [head, "-" * len(head)]
    for n in names:
        r = by_name.get(n)
        if r is None:
            out.append(f"{n:<32}{'':>6}{'not reported':>11}")
            continue
        unit = r.get("unit", "s")
        ratio = r.get("ratio")
        met = r.get("met")
        peak = r.get("peak_mib", peaks.get(r.get("_script", "")))
        out.append(f"{n:<32}{unit:>6}{fmt(r.get('ours'), unit):>11}{fmt(r.get('baseline'), unit):>10}"
                   f"{(f'{ratio:.2f}x' if isinstance(ratio, (int, float)) else '-'):>8}{str(r.get('goal', '-')):>12}"
                   f"{('yes' if met else 'NO' if met is not None else '-'):>6}{fmt(peak):>10}"
                   f"{fmt(r.get('baseline_peak_mib')):>10}  {r.get('note', '')}")
    out.append(f"ratios are medians of paired runs measured in the same run; load average at start/end: "
               f"{load[0]:.1f}/{load[1]:.1f} on {os.cpu_count()} CPUs (a shared machine: compare ratios, "
               "not seconds)")
    return "\n".join(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smaller sizes and fewer repeats (a few minutes)")
    ap.add_argument("--only", nargs="*", default=None, help="run only these scripts (bench_x.py or x)")
    ap.add_argument("--skip", nargs="*", default=[], help="skip these scripts")
    args = ap.parse_args()

    def key(s: str) -> str:
        return s if s.startswith("bench_") else f"bench_{s.removesuffix('.py')}.py"

    only = {key(s) for s in args.only} if args.only is not None else None
    skip = {key(s) for s in args.skip}
    scripts = sorted(HERE.glob("bench_*.py"), key=lambda p: (p.name not in FIRST, p.name))
    scripts = [s for s in scripts if (only is None or s.name in only) and s.name not in skip]
    load0 = os.getloadavg()[0]
    failed: list[str] = []
    rows: list[dict[str, Any]] = []
    peaks: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="affectlens-bench-") as tmp:
        for script in scripts:
            extra = list((QUICK_ARGS if args.quick else FULL_ARGS).get(script.name, []))
            tune_json = Path(tmp) / "tune.json"
            if script.name == "bench_tune.py":
                extra += ["--json", str(tune_json)]
            print(f"== {script.name} {' '.join(extra)} ==", flush=True)
            rc, got, wall, peak = run_script(script, extra, args.quick)
            if script.name == "bench_tune.py":
                got += tune_rows(tune_json)
            for r in got:
                r["_script"] = script.name
            rows += got
            peaks[script.name] = peak
            print(f"== {script.name}: exit {rc}, {wall:.0f} s, {len(got)} BENCH row(s), peak {peak:.0f} MiB ==",
                  flush=True)
            if rc:
                failed.append(script.name)
    print()
    print(table(rows, peaks, (load0, os.getloadavg()[0])))
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
